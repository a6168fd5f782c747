"""Microcontroller bridge driver: ``$T,...`` lines to ``temp_mc`` samples.

Each record becomes ``temp_mc`` (milli-degrees C) with ``text`` = the bridge's sensor id, so a
board relaying several probes yields one sample stream per probe. A record repeating the last
seq of its sensor is dropped (``duplicates``); missing seqs are counted (``seq_gaps``).

Plausibility bound on seq: a record is expected to advance its sensor's seq by 1..``SEQ_WINDOW``
(modulo the wrap). Any other step (backwards, or further ahead) is read as the board having
restarted (a watchdog or brown-out reset, the reset button or a DTR toggle starts its seq at 0
again): the record is still emitted, since its CRC-16 verified it and dropping it would lose
every reading after a reset, but the step is not counted in ``seq_gaps``, which keeps that
counter a measure of lines lost on the wire.
"""

from __future__ import annotations

from firmware_sim.samples import Sample
from firmware_sim.serial.bridge import MAX_SEQ, BridgeFrame, BridgeParser
from firmware_sim.serial.driver import READ_CHUNK, Clock, ReadBudget, SerialSensor
from firmware_sim.serial.link import ByteLink

#: the largest seq step still read as lines lost on the wire rather than a restarted board.
SEQ_WINDOW = 1024


class BridgeSensor(SerialSensor):
    driver = "bridge"

    def __init__(self, link: ByteLink, *, clock: Clock | None = None, prefix: str = "") -> None:
        super().__init__(clock=clock, prefix=prefix)
        self._link = link
        self._parser = BridgeParser()
        self._last_seq: dict[str, int] = {}
        self.stats.parser = self._parser.stats

    def read(self, timeout_s: float) -> list[Sample]:
        budget = ReadBudget(self._clock, timeout_s)
        while True:
            before = self._clock()
            chunk = self._link.read(READ_CHUNK, budget.wait_s())
            now = self._clock()
            samples = [self._sample(f, now) for f in self._parser.feed(chunk) if self._is_new(f)]
            if samples:
                return samples
            if budget.expired() or (not chunk and now == before):
                return []

    def _is_new(self, frame: BridgeFrame) -> bool:
        last = self._last_seq.get(frame.sensor_id)
        self._last_seq[frame.sensor_id] = frame.seq
        if last is None:
            return True
        if frame.seq == last:
            self.stats.duplicates += 1
            return False
        step = (frame.seq - last) % (MAX_SEQ + 1)
        if step <= SEQ_WINDOW:
            self.stats.seq_gaps += step - 1
        return True

    def _sample(self, frame: BridgeFrame, now: int) -> Sample:
        return Sample(now, self.sensor_name("temp_mc"), frame.temp_mc, text=frame.sensor_id)

    def close(self) -> None:
        self._link.close()
