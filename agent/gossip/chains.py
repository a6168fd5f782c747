"""What the core remembers of each device's chain: the head, a window of recent headers, the
history tree's compact range (so the next header's ``history_root`` can be checked), and the
heights whose body is wanted but not yet held.

Memory per device is bounded: ``window`` headers (~300 bytes each), O(log n) history hashes, and
at most ``max_missing`` wanted heights (the lowest are kept; the highest are dropped and counted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from ledger.block import SignedHeader, decode_header
from ledger.epoch import SignedEpoch
from ledger.errors import ChainError, DecodeError, UsageError
from ledger.history import CompactRange
from ledger.verify import verify_link


class ChainState:
    __slots__ = ("_window", "history", "max_missing", "missing", "missing_dropped")

    def __init__(self, window: int, max_missing: int) -> None:
        self._window: deque[SignedHeader] = deque(maxlen=window)
        self.history = CompactRange()
        self.missing: dict[int, bytes] = {}  # height -> hash of the accepted header
        self.max_missing = max_missing
        self.missing_dropped = 0

    @property
    def head(self) -> SignedHeader | None:
        return self._window[-1] if self._window else None

    @property
    def base(self) -> int:
        """Lowest height held in memory (0 when empty)."""
        return self._window[0].header.height if self._window else 0

    def at(self, height: int) -> SignedHeader | None:
        if not self._window:
            return None
        i = height - self._window[0].header.height
        return self._window[i] if 0 <= i < len(self._window) else None

    def between(self, lo: int, hi: int) -> list[SignedHeader]:
        """Headers lo..hi held in memory (a prefix of the range may be missing: caller checks)."""
        out: list[SignedHeader] = []
        for h in range(max(lo, self.base), hi + 1):
            sh = self.at(h)
            if sh is None:
                break
            out.append(sh)
        return out

    def append(self, sh: SignedHeader) -> None:
        """Append a header the caller verified to extend the head."""
        self._window.append(sh)
        self.history.append(sh.hash)

    def want_body(self, height: int, header_hash: bytes) -> None:
        if len(self.missing) >= self.max_missing:
            highest = max(self.missing)
            if height >= highest:
                self.missing_dropped += 1
                return
            del self.missing[highest]
            self.missing_dropped += 1
        self.missing[height] = header_hash

    def missing_run(self, upto: int, limit: int) -> tuple[int, int] | None:
        """The lowest run of consecutive missing heights <= ``upto``, at most ``limit`` long."""
        candidates = sorted(h for h in self.missing if h <= upto)
        if not candidates:
            return None
        lo = hi = candidates[0]
        for h in candidates[1:]:
            if h != hi + 1 or h - lo + 1 > limit:
                break
            hi = h
        return lo, hi


def build_chain(
    dev: str,
    headers: Iterable[bytes],
    wanted: Iterable[int],
    epochs: Mapping[int, SignedEpoch],
    window: int,
    max_missing: int,
) -> ChainState:
    """A chain state from stored headers (trusted, but their links are checked); heights in
    ``wanted`` still want their body. Raises UsageError when the headers are not a chain."""
    chain = ChainState(window, max_missing)
    want = set(wanted)
    prev: SignedHeader | None = None
    for w in headers:
        try:
            sh = decode_header(w)
            if sh.header.device_id != dev:
                raise ChainError("stored header device", dev, sh.header.device_id)
            verify_link(prev, sh, epochs)
            if sh.header.history_root != chain.history.root():
                raise ChainError(
                    f"stored history_root at height {sh.header.height}",
                    chain.history.root(),
                    sh.header.history_root,
                )
        except (DecodeError, ChainError) as exc:
            raise UsageError(f"stored chain of {dev} is not a chain: {exc}") from None
        chain.append(sh)
        if sh.header.height in want:
            chain.want_body(sh.header.height, sh.hash)
        prev = sh
    return chain
