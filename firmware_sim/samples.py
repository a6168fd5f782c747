"""The Sample: what every source of sensor data (model, serial parser, replayer) yields.

A Sample is the boundary value between firmware_sim and the agent. It carries integer units only
(no floats) so it maps one-to-one onto a signed ledger reading. Sensor names and their units are
listed in docs/TRACES.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENSOR_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_TAG_LEN = 96
MAX_TEXT_LEN = 64


class SampleError(ValueError):
    """A sample violates the Sample contract (name, units, lengths)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation at one instant.

    time_ms: Unix time in milliseconds (simulated or real clock).
    sensor:  dotted name, ``[a-z0-9][a-z0-9_.-]{0,31}``, e.g. ``fridge.temp_mc``.
    value:   integer in the sensor's documented unit (milli-degrees C, grams, 0/1, ...).
    tag:     EPC pure-identity URI when the sample concerns a tagged item.
    text:    short categorical label (programme name, alarm kind, detergent type).
    """

    time_ms: int
    sensor: str
    value: int
    tag: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if type(self.time_ms) is not int or type(self.value) is not int:
            raise SampleError(
                f"{self.sensor!r}: time_ms and value must be int, found "
                f"{type(self.time_ms).__name__}/{type(self.value).__name__}"
            )
        if not SENSOR_RE.fullmatch(self.sensor):
            raise SampleError(f"sensor name {self.sensor!r} does not match {SENSOR_RE.pattern}")
        if self.tag is not None and not (0 < len(self.tag) <= MAX_TAG_LEN):
            raise SampleError(f"{self.sensor}: tag length {len(self.tag)} not in 1..{MAX_TAG_LEN}")
        if self.text is not None and len(self.text) > MAX_TEXT_LEN:
            raise SampleError(f"{self.sensor}: text length {len(self.text)} > {MAX_TEXT_LEN}")

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"t": self.time_ms, "sensor": self.sensor, "value": self.value}
        if self.tag is not None:
            d["tag"] = self.tag
        if self.text is not None:
            d["text"] = self.text
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Sample:
        tag = d.get("tag")
        text = d.get("text")
        t, sensor, value = d["t"], d["sensor"], d["value"]
        if not isinstance(t, int) or not isinstance(sensor, str) or not isinstance(value, int):
            raise SampleError(f"malformed sample object: {d!r}")
        if tag is not None and not isinstance(tag, str):
            raise SampleError(f"malformed tag in {d!r}")
        if text is not None and not isinstance(text, str):
            raise SampleError(f"malformed text in {d!r}")
        return cls(t, sensor, value, tag, text)
