"""Who may sign what: the certificates, rotations and revocations a device knows, per device.

One ``TrustStore`` per device, made by whoever assembles the device and handed to every core it
runs (gossip and replication share it), so a credential is verified once per device whichever
core learns it first; a wire already held is answered ``KNOWN`` without verifying it again.
``version`` counts the changes, so a core that did not learn a credential itself still sees that
some device's keys or site changed.

Every credential is verified against the fleet roots before it counts: certificates (valid at
the time they are learned), rotations (countersigned by a root; applied in order of effective
height once the key they rotate from is in force), revocations (signed by a root). The result per
device is a ``ledger.certs.DeviceKeys`` that answers "which key signs height h".

Bounds: at most ``max_devices`` devices, ``max_pending`` rotations waiting per device (oldest
dropped), ``max_revocations`` per device (further ones refused and counted by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from ledger import domains
from ledger.certs import (
    DeviceKeys,
    FleetRoots,
    Revocation,
    decode_rotation,
    verify_certificate,
    verify_revocation,
)
from ledger.errors import VerificationError

CredentialKind = Literal["certificate", "rotation", "revocation"]


class Outcome(Enum):
    NEW = "new"
    KNOWN = "known"
    PENDING = "pending"  # a genuine rotation that does not apply yet (an earlier one is missing)
    INVALID = "invalid"
    FULL = "full"  # a bound was reached; dropped


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    device_id: str = ""
    revocation: Revocation | None = None
    reason: str = ""


class TrustStore:
    def __init__(
        self,
        roots: FleetRoots,
        *,
        max_devices: int = 4_096,
        max_pending: int = 8,
        max_revocations: int = 16,
    ) -> None:
        self.roots = roots
        self._max_devices = max_devices
        self._max_pending = max_pending
        self._max_revocations = max_revocations
        self._certs: dict[str, bytes] = {}
        self._rotations: dict[str, list[bytes]] = {}  # applied, in order
        self._pending: dict[str, list[bytes]] = {}  # countersigned, not applicable yet
        self._revocations: dict[str, list[bytes]] = {}
        self._keys: dict[str, DeviceKeys] = {}
        self._held: dict[bytes, str] = {}  # every credential wire held (verified) -> its device
        self.version = 0  # bumped by every NEW outcome

    def learn(self, kind: CredentialKind, wire: bytes, now_ms: int) -> Result:
        """Verify and remember one credential. Raises DecodeError when ``wire`` is not one."""
        dev = self._held.get(wire)
        if dev is not None:
            return Result(Outcome.KNOWN, dev)  # verified when it was first learned
        if kind == "certificate":
            result = self.add_certificate(wire, now_ms)
        elif kind == "rotation":
            result = self.add_rotation(wire)
        else:
            result = self.add_revocation(wire)
        if result.outcome is Outcome.NEW:
            self.version += 1
        return result

    def keys(self, device_id: str) -> DeviceKeys | None:
        return self._keys.get(device_id)

    def holder(self, wire: bytes) -> str | None:
        """The device a credential held (verified) belongs to; None when it is not held."""
        return self._held.get(wire)

    def bundle(
        self, device_id: str
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]:
        """(certificate or nothing, applied rotations, revocations) of one device."""
        cert = self._certs.get(device_id)
        return (
            (cert,) if cert is not None else (),
            tuple(self._rotations.get(device_id, ())),
            tuple(self._revocations.get(device_id, ())),
        )

    def revocations(self) -> list[bytes]:
        return [w for ws in self._revocations.values() for w in ws]

    def _room_for(self, device_id: str) -> bool:
        known = self._certs.keys() | self._pending.keys() | self._revocations.keys()
        return device_id in known or len(known) < self._max_devices

    def add_certificate(self, wire: bytes, now_ms: int) -> Result:
        """Raises DecodeError when ``wire`` is not a certificate at all."""
        try:
            cert = verify_certificate(wire, self.roots, now_ms)
        except VerificationError as exc:
            return Result(Outcome.INVALID, reason=str(exc))
        dev = cert.device_id
        if dev in self._certs:
            return Result(Outcome.KNOWN, dev)
        if not self._room_for(dev):
            return Result(Outcome.FULL, dev)
        self._certs[dev] = wire
        self._held[wire] = dev
        self._rebuild(dev)
        return Result(Outcome.NEW, dev)

    def add_rotation(self, wire: bytes) -> Result:
        """Raises DecodeError when ``wire`` is not a rotation at all."""
        rot = decode_rotation(wire)
        dev = rot.device_id
        try:
            self.roots.get(rot.authority_key_id, f"rotation of {dev}").verify(
                domains.ROTATION_COUNTERSIGN,
                rot.body + rot.old_sig,
                rot.authority_sig,
                f"rotation of {dev}",
            )
        except VerificationError as exc:
            return Result(Outcome.INVALID, dev, reason=str(exc))
        if wire in self._rotations.get(dev, ()) or wire in self._pending.get(dev, ()):
            return Result(Outcome.KNOWN, dev)
        if not self._room_for(dev):
            return Result(Outcome.FULL, dev)
        pending = self._pending.setdefault(dev, [])
        pending.append(wire)
        self._held[wire] = dev
        for dropped in pending[: -self._max_pending]:
            self._held.pop(dropped, None)
        del pending[: -self._max_pending]
        self._rebuild(dev)
        if wire in self._rotations.get(dev, ()):
            return Result(Outcome.NEW, dev)
        return Result(Outcome.PENDING, dev)

    def add_revocation(self, wire: bytes) -> Result:
        """Raises DecodeError when ``wire`` is not a revocation at all."""
        try:
            rev = verify_revocation(wire, self.roots)
        except VerificationError as exc:
            return Result(Outcome.INVALID, reason=str(exc))
        dev = rev.device_id
        held = self._revocations.get(dev, [])
        if wire in held:
            return Result(Outcome.KNOWN, dev)
        if len(held) >= self._max_revocations or not self._room_for(dev):
            return Result(Outcome.FULL, dev)
        self._revocations[dev] = [*held, wire]
        self._held[wire] = dev
        self._rebuild(dev)
        return Result(Outcome.NEW, dev, revocation=rev)

    def _rebuild(self, dev: str) -> None:
        cert = self._certs.get(dev)
        if cert is None:
            return
        applied = list(self._rotations.get(dev, ()))
        pending = sorted(
            self._pending.get(dev, ()), key=lambda w: decode_rotation(w).effective_height
        )
        progress = True
        while progress and pending:
            progress = False
            for r in list(pending):
                try:
                    DeviceKeys.build(cert, self.roots, now_ms=None, rotations=[*applied, r])
                except VerificationError:
                    continue
                applied.append(r)
                pending.remove(r)
                progress = True
        self._rotations[dev] = applied
        self._pending[dev] = pending
        self._keys[dev] = DeviceKeys.build(
            cert,
            self.roots,
            now_ms=None,
            rotations=applied,
            revocations=self._revocations.get(dev, ()),
        )
