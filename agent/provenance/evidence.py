"""The verified inputs of a trace: devices, readings placed in their chains, what was withheld.

These values are what ``gather`` (from a data dir) and ``bundles`` (from an offline bundle)
produce and what ``analysis`` consumes, so a verdict is computed the same way from either. Every
``Evidence`` has been checked against a signed header of a verified chain before it is made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the enrollment certificate says about a device, plus its name in the data dir."""

    device_id: str
    name: str
    kind: str
    site: str
    model: str
    private: bool  # its certificate names an owner key: readings are sealed to the owner


@dataclass(frozen=True, slots=True)
class Evidence:
    """One reading, opened if it was private, at its place in its device's chain.

    ``proof`` says how it was checked: ``"inclusion"`` (its own signature and an RFC 9162
    inclusion proof against the block's signed header) or ``"block"`` (the whole block's Merkle
    root recomputed against the signed header, which covers the reading's signed bytes).
    ``key_id`` names the key its block header was checked with, so a ``KeyFlag`` (a forked,
    revoked or rotated-away key, ``ledger.bundle``) can say whether it covers the reading."""

    device_id: str
    height: int
    index: int
    epoch: int
    seq: int
    time_ms: int
    sensor: str
    value: int
    tag: str | None
    text: str | None
    private: bool
    leaf_hash: bytes
    proof: str
    key_id: bytes = b""  # the key that signed its block's header (what key flags match on)

    @property
    def position(self) -> tuple[int, int]:
        """Order within the device's chain (height, leaf index): never the clock."""
        return (self.height, self.index)


@dataclass(frozen=True, slots=True)
class Withheld:
    """Private readings that could not be opened with the key given.

    ``in_custody``: they fall inside a stay of the item at that device (the item was there and
    what happened to it then is unknown); otherwise they are readings of a private device whose
    tags are sealed, which may or may not mention the item."""

    device_id: str
    count: int
    first_ms: int | None
    last_ms: int | None
    in_custody: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Unverified:
    """A reading the tag index points at that could not be verified, and why."""

    device_id: str
    height: int
    index: int
    reason: str
