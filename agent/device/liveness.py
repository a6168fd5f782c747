"""Who is in service: presence is a hint, proven traffic decides (docs/PROTOCOL.md 13.3).

Presence proves nothing: anyone with a broker connection can publish a retained ``offline`` for
any device, and a hub's last-will speaks for every device on its connection. So a presence
``offline`` never takes a peer out of service by itself. It opens a **doubt**, and the watcher
**asks** the doubted peer: a probe (a SUMMARY that asks for a reply, sent by the gossip core) at
once and again every ``probe_ms`` while it stays silent. The peer leaves service (``PeerDown``
to both cores) once ``probes`` probes in a row went unanswered (no proven message from it, one
its core authenticated, since the doubt or its last proven message) and ``probe_ms`` passed
after the last, all over one unbroken link of the watcher's (a probe sent while the watcher's
own link was down, or before it reconnected, proves nothing about the peer). A peer that
answers stays in service and is asked again later and later (the interval doubles up to the
silence below), so a retained spoofed ``offline`` costs a few small exchanges, not a stream.

Peers that cannot be probed (not a gossip peer, muted) keep the plain silence rule: no proven
message for ``silence_ms`` *and* ``silence_rounds`` of this device's own anti-entropy rounds
(the rounds make the silence mean the same on a coarse simulated clock, where a minute may pass
in one step with one round, as on a real one); the silence rule also stands behind the probes.
``online`` brings a peer into service at once and clears the doubt, as before; a proven message
from a peer out of service brings it back (in doubt while its presence still says ``offline``,
so a replayed message keeps a peer that is really gone in service for a few more probes at
most). A pure state machine: the runtime feeds it presence, the cores' record of proven traffic
and the state of its link, sends the probes it names and executes what it says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from agent.errors import UsageError

LastHeard = Callable[[str], "int | None"]
CanProbe = Callable[[str], bool]

# Probes unanswered in a row that confirm a departure (with one more ``probe_ms`` of waiting):
# with 10% of messages lost each way a live peer misses one with probability about 0.19, three
# in a row about 0.007, and even then its next proven message brings it back.
PROBES = 3


class _Doubt:
    """A peer in service whose presence says offline: since when it is silent (ms, and this
    device's rounds then; None: from the next check), and the probes sent since."""

    __slots__ = (
        "asked",
        "at_round",
        "interval",
        "last_probe",
        "link",
        "next_probe",
        "probes",
        "since",
    )

    def __init__(self, since: int, interval: int, *, asked: bool) -> None:
        self.asked = asked  # probed: its presence said offline (not merely unknown)
        self.since = since
        self.at_round: int | None = None
        self.probes = 0  # sent since ``since``, all over the link ``link``
        self.link: int | None = None
        self.last_probe: int | None = None
        self.next_probe = since  # the first probe goes at once
        self.interval = interval


class Liveness:
    __slots__ = (
        "_doubt",
        "_in",
        "_left",
        "_online",
        "_peers",
        "_watched",
        "drops",
        "probe_ms",
        "probes",
        "probes_sent",
        "silence_ms",
        "silence_rounds",
    )

    def __init__(
        self,
        peers: Iterable[str],
        silence_ms: int,
        silence_rounds: int = 0,
        *,
        probe_ms: int | None = None,
        probes: int = PROBES,
    ) -> None:
        if silence_ms < 1 or silence_rounds < 0:
            raise UsageError(
                f"liveness: silence must be positive, found {silence_ms} ms, "
                f"{silence_rounds} rounds"
            )
        if (probe_ms is not None and probe_ms < 1) or probes < 1:
            raise UsageError(
                f"liveness: probes must be positive, found every {probe_ms} ms, {probes} in a row"
            )
        self.silence_ms = silence_ms
        self.silence_rounds = silence_rounds
        self.probe_ms = probe_ms  # None: no probes, the silence rule alone
        self.probes = probes
        self._peers = frozenset(peers)
        self._watched = self._peers  # whose presence this device follows (``watch``)
        self._online: dict[str, bool] = {}  # the last presence hint
        self._in: set[str] = set()  # in service
        self._doubt: dict[str, _Doubt] = {}  # in service while presence says offline
        self._left: dict[str, int] = {}  # out of service: since when
        self.drops: Counter[str] = Counter()  # times each peer was taken out of service
        self.probes_sent = 0

    def watch(self, peers: Iterable[str]) -> None:
        """The peers whose presence this device follows (its mesh and holders). A peer outside
        them never gets a presence here, so its proven traffic brings it into service without
        a doubt that nothing could ever clear (in a street of 300 with a mesh of 18, each
        device held about 280 such doubts and scanned them at every timer)."""
        self._watched = frozenset(peers) & self._peers
        for peer in [p for p in self._doubt if p not in self._watched]:
            if self._online.get(peer) is not False:
                del self._doubt[peer]

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
        if peer in self._in:
            d = self._doubt.get(peer)
            if d is None:
                self._doubt[peer] = self._new_doubt(now_ms, asked=True)
            elif not d.asked:  # in doubt for want of a presence, which now says offline
                d.asked, d.next_probe = True, now_ms

    def _new_doubt(self, now_ms: int, *, asked: bool) -> _Doubt:
        return _Doubt(now_ms, self.probe_ms or self.silence_ms, asked=asked)

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
        said = self._online.get(peer)
        if not said and (said is False or peer in self._watched):
            # In doubt while its presence says offline (asked: probed) or has not been seen
            # yet (at a start, traffic often comes before presence: the silence rule alone).
            self._doubt[peer] = self._new_doubt(now_ms, asked=said is False)
        return True

    def _refresh(self, d: _Doubt, heard: int | None) -> None:
        """A proven message since the silence began: the silence starts again from it, and the
        next probe waits twice as long as the last interval (up to the silence)."""
        if heard is not None and heard > d.since:
            d.since, d.at_round = heard, None
            if d.probes:
                d.interval = min(2 * d.interval, max(self.silence_ms, d.interval))
            d.probes, d.last_probe = 0, None
            d.next_probe = heard + d.interval

    def to_probe(
        self, now_ms: int, last_heard: LastHeard, link: int | None, can_probe: CanProbe
    ) -> list[str]:
        """The doubted peers to probe now (the runtime has the gossip core send each a SUMMARY
        that asks for a reply). ``link``: None while this device's own link is down (nothing is
        probed), else a number that changes at every reconnection (probes sent over an earlier
        link no longer count)."""
        if self.probe_ms is None or link is None:
            return []
        out = []
        for peer, d in self._doubt.items():
            self._refresh(d, last_heard(peer))
            if not d.asked or now_ms < d.next_probe:
                continue
            if not can_probe(peer):  # the silence rule alone, asked again later
                d.next_probe = now_ms + d.interval
                continue
            if d.link != link:
                d.link, d.probes = link, 0
            elif d.probes >= self.probes:
                continue  # all asked: ``due`` confirms the departure once the last is late
            d.probes += 1
            d.last_probe = now_ms
            d.next_probe = now_ms + self.probe_ms
            out.append(peer)
        self.probes_sent += len(out)
        return sorted(out)

    def _unanswered(self, d: _Doubt, now_ms: int, link: int | None) -> bool:
        return (
            self.probe_ms is not None
            and link is not None
            and d.link == link
            and d.probes >= self.probes
            and d.last_probe is not None
            and now_ms >= d.last_probe + self.probe_ms
        )

    def due(
        self, now_ms: int, last_heard: LastHeard, rounds: int = 0, link: int | None = None
    ) -> list[str]:
        """Doubted peers whose probes went unanswered (see ``to_probe``), or silent for
        ``silence_ms`` and ``silence_rounds`` (``rounds``: this device's anti-entropy rounds so
        far): out of service now (feed ``PeerDown``)."""
        out = []
        for peer, d in list(self._doubt.items()):
            self._refresh(d, last_heard(peer))
            if d.at_round is None:
                d.at_round = rounds
            silent = now_ms >= d.since + self.silence_ms and rounds - d.at_round >= (
                self.silence_rounds
            )
            if silent or self._unanswered(d, now_ms, link):
                del self._doubt[peer]
                self._in.discard(peer)
                self._left[peer] = now_ms
                self.drops[peer] += 1
                out.append(peer)
        return sorted(out)

    def deadline(self, now_ms: int, last_heard: LastHeard) -> int | None:
        """When the next probe or confirmation is due on the clock (None: no doubt, or only
        rounds are missing: the rounds wake the timer themselves)."""
        times = []
        for peer, d in self._doubt.items():
            heard = last_heard(peer)
            times.append((d.since if heard is None else max(d.since, heard)) + self.silence_ms)
            if self.probe_ms is not None:
                times.append(d.next_probe)
                if d.last_probe is not None and d.probes >= self.probes:
                    times.append(d.last_probe + self.probe_ms)
        return min((t for t in times if t > now_ms), default=None)

    @property
    def doubting(self) -> bool:
        """True when some peer in service is in doubt."""
        return bool(self._doubt)

    @property
    def watching(self) -> bool:
        """True when some peer is out of service (the runtime then looks at who sent what)."""
        return len(self._in) < len(self._peers)
