"""Which private readings a trace may read: none, an owner's, or those a grant lists.

The only place the tracer touches ``ledger.private`` (docs/PRIVATE.md). ``Opening`` answers three
questions for ``gather``: may this device's readings be opened at all (the owner key is the one
its certificate names; a grant is for this device), does a block's time range fall inside what
may be opened (a grant's range), and what does one reading say (or why it stays sealed).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.certs import Certificate
from ledger.private import Grant, GrantOpener, Opener, OpenError, OwnerOpener, open_reading
from ledger.reading import Reading, SignedReading

NO_KEY = "no owner key or grant given"


@dataclass(frozen=True, slots=True)
class OpenResult:
    reading: Reading | None
    reason: str  # why it stays sealed ("" when opened)


class Opening:
    """Opens private readings with an owner's X25519 secret or a grant, or with nothing."""

    def __init__(
        self,
        opener: Opener | None,
        *,
        owner_public: bytes | None = None,
        grant: Grant | None = None,
    ) -> None:
        self._opener = opener
        self.owner_public = owner_public
        self.grant = grant

    @classmethod
    def owner(cls, secret: bytes) -> Opening:
        opener = OwnerOpener(secret)
        return cls(opener, owner_public=opener.public)

    @classmethod
    def granted(cls, grant: Grant) -> Opening:
        return cls(GrantOpener(grant), grant=grant)

    def may_open(self, device_id: str, cert: Certificate) -> bool:
        if self.grant is not None:
            return device_id == self.grant.device_id
        return self.owner_public is not None and cert.owner_x25519 == self.owner_public

    def covers(self, device_id: str, first_ms: int, last_ms: int) -> bool:
        """Some reading of a block with these first/last times may be opened."""
        g = self.grant
        if g is None:
            return True
        lo, hi = min(first_ms, last_ms), max(first_ms, last_ms)
        return device_id == g.device_id and lo <= g.to_ms and hi >= g.from_ms

    def open(self, sr: SignedReading) -> OpenResult:
        if not sr.private:
            r = sr.reading
            assert isinstance(r, Reading)
            return OpenResult(r, "")
        if self._opener is None:
            return OpenResult(None, NO_KEY)
        try:
            return OpenResult(open_reading(sr, self._opener), "")
        except OpenError as exc:
            return OpenResult(None, exc.reason)

    def why_not(self, device_id: str, cert: Certificate) -> str:
        """Why a private device's readings (or some of them) were not opened."""
        if self._opener is None:
            return NO_KEY
        if self.grant is not None:
            if device_id != self.grant.device_id:
                return "grant for another device"
            return "outside the grant's time range"
        if cert.owner_x25519 != self.owner_public:
            return "sealed to another owner"
        return "did not open with the owner key"
