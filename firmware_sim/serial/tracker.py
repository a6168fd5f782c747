"""Presence of RFID tags derived from repeated frames: "tag arrived" and "tag left".

A continuous reader (RDM6300) repeats a card's frame while the card is in the field; a reads-once
reader (ID-12LA) sends it once. The tracker is pure: callers pass ``now_ms``. A tag *arrives* when
``confirm`` frames of it were seen with no gap longer than ``timeout_ms`` (``confirm=2`` is the
"2 out of 2" selection industrial readers use against line noise: an XOR-8 checksum lets some
double bit errors through, and two identical corrupt frames in a row are vanishingly rare). A
present tag *leaves* once ``timeout_ms`` passes without a frame; the event is stamped with that
deadline (last frame + timeout), so the stamps do not depend on when the caller polls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TIMEOUT_MS = 500


@dataclass(frozen=True, slots=True)
class TagArrived:
    tag: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class TagLeft:
    tag: str
    time_ms: int


TagEvent = TagArrived | TagLeft


@dataclass(slots=True)
class _Seen:
    last_ms: int
    count: int = 1
    present: bool = False


@dataclass(slots=True)
class TrackerStats:
    unconfirmed: int = 0  # tags seen fewer than ``confirm`` times before their timeout


@dataclass(slots=True)
class TagPresenceTracker:
    """Feed ``seen(tag, now_ms)`` per valid frame and ``tick(now_ms)`` when idle."""

    timeout_ms: int = DEFAULT_TIMEOUT_MS
    confirm: int = 1
    stats: TrackerStats = field(default_factory=TrackerStats)
    _tags: dict[str, _Seen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, found {self.timeout_ms}")
        if self.confirm < 1:
            raise ValueError(f"confirm must be >= 1, found {self.confirm}")

    def seen(self, tag: str, now_ms: int) -> list[TagEvent]:
        """A valid frame for ``tag`` was read at ``now_ms``."""
        events = self.tick(now_ms)
        rec = self._tags.get(tag)
        if rec is None:
            rec = self._tags[tag] = _Seen(last_ms=now_ms)
        else:
            rec.last_ms = now_ms
            rec.count += 1
        if not rec.present and rec.count >= self.confirm:
            rec.present = True
            events.append(TagArrived(tag, now_ms))
        return events

    def tick(self, now_ms: int) -> list[TagEvent]:
        """Expire tags not seen for ``timeout_ms``; return their TagLeft events in time order."""
        expired = sorted(
            (rec.last_ms + self.timeout_ms, tag)
            for tag, rec in self._tags.items()
            if rec.last_ms + self.timeout_ms <= now_ms
        )
        events: list[TagEvent] = []
        for deadline, tag in expired:
            rec = self._tags.pop(tag)
            if rec.present:
                events.append(TagLeft(tag, deadline))
            else:
                self.stats.unconfirmed += 1
        return events

    def next_deadline(self) -> int | None:
        """When the next tag would expire, or None if no tag is being tracked."""
        if not self._tags:
            return None
        return min(rec.last_ms for rec in self._tags.values()) + self.timeout_ms

    def present(self) -> frozenset[str]:
        return frozenset(tag for tag, rec in self._tags.items() if rec.present)
