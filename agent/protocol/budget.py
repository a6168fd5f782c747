"""What a peer may make this device send in answers: a byte budget per peer per interval.

Answers (RESPONSEs to REQUESTs, summary replies, audit proofs) go only to a proven requester
(``auth.open_envelope`` names it), so nobody can reflect them onto a victim; this budget bounds
what even a proven peer can draw: at most ``limit`` answer bytes per ``interval_ms``, counted
from the first answer of the interval (a fixed window; the bytes are the sealed payloads). An
answer that does not fit is not sent: the caller counts it, and the asker times out and asks
again later, as after any loss. Bounds: one window per peer named, at most ``max_peers`` (the
least recently active is forgotten first, which only ever grants it a fresh window).
"""

from __future__ import annotations

from collections import OrderedDict

from ledger.errors import UsageError


class AnswerBudget:
    __slots__ = ("_windows", "interval_ms", "limit", "max_peers")

    def __init__(self, limit: int, interval_ms: int, max_peers: int = 4_096) -> None:
        if limit < 1 or interval_ms < 1 or max_peers < 1:
            raise UsageError(
                f"an answer budget needs positive figures, found limit {limit}, "
                f"interval {interval_ms} ms, {max_peers} peers"
            )
        self.limit = limit
        self.interval_ms = interval_ms
        self.max_peers = max_peers
        self._windows: OrderedDict[str, tuple[int, int]] = OrderedDict()  # peer -> (start, used)

    def allow(self, peer: str, nbytes: int, now_ms: int) -> bool:
        """Spend ``nbytes`` of ``peer``'s budget if they fit; False (nothing spent) if not."""
        start, used = self._windows.get(peer, (now_ms, 0))
        if now_ms - start >= self.interval_ms:
            start, used = now_ms, 0
        if used + nbytes > self.limit:
            return False
        self._windows[peer] = (start, used + nbytes)
        self._windows.move_to_end(peer)
        while len(self._windows) > self.max_peers:
            self._windows.popitem(last=False)
        return True

    def used(self, peer: str, now_ms: int) -> int:
        """Bytes ``peer`` has drawn in its current window."""
        start, used = self._windows.get(peer, (now_ms, 0))
        return 0 if now_ms - start >= self.interval_ms else used
