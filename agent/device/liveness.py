"""Who is in service: presence is a hint, proven traffic decides (docs/PROTOCOL.md 13.3).

Presence proves nothing: anyone with a broker connection can publish a retained ``offline`` for
any device, and a hub's last-will speaks for every device on its connection. So a presence
``offline`` never takes a peer out of service by itself. It opens a **doubt**; the peer leaves
service (``PeerDown`` to both cores) only once it has been silent, with no proven message from
it (one its core authenticated) since the doubt or its last proven message, whichever is later,
for ``silence_ms`` *and* for ``silence_rounds`` of this device's own anti-entropy rounds (the
rounds make the silence mean the same on a coarse simulated clock, where a minute may pass in
one step with one round, as on a real one). ``online`` brings a peer into service at once and
clears the doubt, as before; a proven message from a peer out of service brings it back (in
doubt while its presence still says ``offline``, so a replayed message keeps a peer that is
really gone in service for one more silence at most). A pure state machine: the runtime feeds
it presence and the cores' record of proven traffic, and executes what it says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from agent.errors import UsageError

LastHeard = Callable[[str], "int | None"]


class Liveness:
    __slots__ = (
        "_doubt",
        "_in",
        "_left",
        "_online",
        "_peers",
        "drops",
        "silence_ms",
        "silence_rounds",
    )

    def __init__(self, peers: Iterable[str], silence_ms: int, silence_rounds: int = 0) -> None:
        if silence_ms < 1 or silence_rounds < 0:
            raise UsageError(
                f"liveness: silence must be positive, found {silence_ms} ms, "
                f"{silence_rounds} rounds"
            )
        self.silence_ms = silence_ms
        self.silence_rounds = silence_rounds
        self._peers = frozenset(peers)
        self._online: dict[str, bool] = {}  # the last presence hint
        self._in: set[str] = set()  # in service
        # In service while presence says offline: silent since (ms, own rounds then; None: the
        # rounds count from the next check).
        self._doubt: dict[str, tuple[int, int | None]] = {}
        self._left: dict[str, int] = {}  # out of service: since when
        self.drops: Counter[str] = Counter()  # times each peer was taken out of service

    def in_service(self, peer: str) -> bool:
        return peer in self._in

    def doubted(self, peer: str) -> bool:
        return peer in self._doubt

    def online(self, peer: str) -> bool:
        """Presence says ``peer`` is online. True: it enters service (feed ``PeerUp``)."""
        self._online[peer] = True
        self._doubt.pop(peer, None)
        if peer in self._in:
            return False
        self._in.add(peer)
        self._left.pop(peer, None)
        return True

    def offline(self, peer: str, now_ms: int) -> None:
        """Presence says ``peer`` is offline: a hint, which its silence must confirm."""
        self._online[peer] = False
        if peer in self._in and peer not in self._doubt:
            self._doubt[peer] = (now_ms, None)

    def heard(self, peer: str, heard_ms: int | None, now_ms: int) -> bool:
        """``heard_ms``: when the cores last proved a message from ``peer`` (None: never). True:
        that message brings it back into service (feed ``PeerUp``)."""
        if (
            peer not in self._peers
            or peer in self._in
            or heard_ms is None
            or heard_ms < self._left.get(peer, heard_ms)
        ):
            return False
        self._in.add(peer)
        self._left.pop(peer, None)
        if not self._online.get(peer, False):
            self._doubt[peer] = (now_ms, None)
        return True

    def due(self, now_ms: int, last_heard: LastHeard, rounds: int = 0) -> list[str]:
        """Doubted peers silent for ``silence_ms`` and ``silence_rounds`` (``rounds``: this
        device's anti-entropy rounds so far): out of service now (feed ``PeerDown``)."""
        out = []
        for peer, (since, at_round) in list(self._doubt.items()):
            heard = last_heard(peer)
            if heard is not None and heard > since:  # it spoke: its silence starts again
                since, at_round = heard, None
            if at_round is None:
                at_round = rounds
            self._doubt[peer] = (since, at_round)
            if now_ms >= since + self.silence_ms and rounds - at_round >= self.silence_rounds:
                del self._doubt[peer]
                self._in.discard(peer)
                self._left[peer] = now_ms
                self.drops[peer] += 1
                out.append(peer)
        return sorted(out)

    def deadline(self, now_ms: int, last_heard: LastHeard) -> int | None:
        """When the next doubt may be confirmed on the clock (None: no doubt, or only rounds
        are missing: the rounds wake the timer themselves)."""
        times = []
        for peer, (since, _) in self._doubt.items():
            heard = last_heard(peer)
            t = (since if heard is None else max(since, heard)) + self.silence_ms
            if t > now_ms:
                times.append(t)
        return min(times, default=None)

    @property
    def watching(self) -> bool:
        """True when some peer is out of service (the runtime then looks at who sent what)."""
        return len(self._in) < len(self._peers)
