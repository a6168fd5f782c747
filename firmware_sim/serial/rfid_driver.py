"""RDM6300 and ID-12LA drivers: EM4100 frames to ``rfid.in`` / ``rfid.out`` samples.

``rfid.in`` (value 1) when a card arrives, ``rfid.out`` (value 0) when it left; the tag is the
card as ``em4100:<10 hex digits>``. Arrival needs ``confirm`` frames (2 for the continuous
RDM6300, 1 for the reads-once ID-12LA); departure is ``timeout_ms`` without a frame (see
``tracker``). ``read`` wakes up for the tracker's deadline, so "left" comes out without new bytes.
"""

from __future__ import annotations

from firmware_sim.samples import Sample
from firmware_sim.serial.driver import READ_CHUNK, Clock, ReadBudget, SerialSensor
from firmware_sim.serial.link import ByteLink
from firmware_sim.serial.rfid import RfidParser
from firmware_sim.serial.tracker import DEFAULT_TIMEOUT_MS, TagArrived, TagEvent, TagPresenceTracker


class RfidSensor(SerialSensor):
    def __init__(
        self,
        link: ByteLink,
        *,
        driver: str = "rdm6300",
        clock: Clock | None = None,
        prefix: str = "",
        tag_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        confirm: int = 1,
    ) -> None:
        super().__init__(clock=clock, prefix=prefix)
        self.driver = driver
        self._link = link
        self._parser = RfidParser()
        self._tracker = TagPresenceTracker(timeout_ms=tag_timeout_ms, confirm=confirm)
        self.stats.parser = self._parser.stats

    def read(self, timeout_s: float) -> list[Sample]:
        budget = ReadBudget(self._clock, timeout_s)
        while True:
            before = self._clock()
            chunk = self._link.read(READ_CHUNK, budget.wait_s(self._tracker.next_deadline()))
            now = self._clock()
            events: list[TagEvent] = []
            for frame in self._parser.feed(chunk):
                events += self._tracker.seen(frame.tag, now)
            events += self._tracker.tick(now)
            self.stats.unconfirmed = self._tracker.stats.unconfirmed
            if events:
                return [self._sample(e) for e in events]
            if budget.expired() or (not chunk and now == before):
                return []

    def _sample(self, event: TagEvent) -> Sample:
        if isinstance(event, TagArrived):
            return Sample(event.time_ms, self.sensor_name("rfid.in"), 1, tag=event.tag)
        return Sample(event.time_ms, self.sensor_name("rfid.out"), 0, tag=event.tag)

    def present(self) -> frozenset[str]:
        """Tags currently in the field."""
        return self._tracker.present()

    def close(self) -> None:
        self._link.close()
