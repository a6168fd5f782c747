"""What the live view and the tests read about one device: its counters, and the latest value of
each of its sensors, observed by the sample's kind.

A sample's kind follows from its name, by the convention docs/TRACES.md documents for every
source (models, serial drivers with their ``prefix``, traces): ``alarm.*`` sensors are alarms (1
raised, 0 cleared), and a name whose last part is ``temp_mc`` is a temperature probe in m°C
(``fridge.temp_mc``, a serial ``temp_mc`` with or without a prefix). Other ``_mc`` values, such as
``excursion.peak_mc``, are not probes. No list of sensor names is kept here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from firmware_sim.samples import Sample


class SampleKind(Enum):
    ALARM = "alarm"
    TEMPERATURE = "temperature"
    OTHER = "other"


def sample_kind(sensor: str) -> SampleKind:
    if sensor.startswith("alarm."):
        return SampleKind.ALARM
    if sensor.rpartition(".")[2] == "temp_mc":
        return SampleKind.TEMPERATURE
    return SampleKind.OTHER


@dataclass
class DeviceStats:
    """Counters of one device's run, and what its samples said last (``observe``)."""

    readings: int = 0
    blocks: int = 0
    latest: dict[str, int] = field(default_factory=dict)  # sensor -> last value
    alarms: set[str] = field(default_factory=set)  # active alarm sensors
    sent: int = 0
    received: int = 0
    send_failures: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    # Peers this device mutes now (gossip: peer id -> the offence) and holders it excludes now
    # (replication: holder id -> its score), for the live view and the run-status file.
    muted: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    # Device id -> name of the fleet's devices (set by the runner), for the lines that name a
    # peer; a peer not in it is named by its id.
    names: Mapping[str, str] = field(default_factory=dict)
    _warned: set[tuple[str, str]] = field(default_factory=set, repr=False)
    # Kinds of the sensors seen so far (a device has a handful: classified once each), in the
    # order they were first seen: the live view shows a device's first probe first.
    _kinds: dict[str, SampleKind] = field(default_factory=dict, repr=False)

    def observe(self, samples: Iterable[Sample]) -> None:
        """Note a batch of samples handed to the device (before it signs them)."""
        kinds, latest = self._kinds, self.latest
        for s in samples:
            kind = kinds.get(s.sensor)
            if kind is None:
                kind = kinds[s.sensor] = sample_kind(s.sensor)
            if kind is SampleKind.ALARM:
                (self.alarms.add if s.value else self.alarms.discard)(s.sensor)
            latest[s.sensor] = s.value

    def peer_name(self, peer_id: str) -> str:
        """``fridge-2`` for a device of the fleet, else its id."""
        return self.names.get(peer_id, peer_id)

    def first(self, what: str, peer_id: str) -> bool:
        """True the first time ``what`` (``muted``, ``excluded``) happens to ``peer_id``: the log
        warns once per peer, later ones are logged at info."""
        key = (what, peer_id)
        if key in self._warned:
            return False
        self._warned.add(key)
        return True

    def temperatures(self) -> tuple[tuple[str, int], ...]:
        """(sensor, latest value in m°C) of each temperature probe, first seen first."""
        return tuple(
            (s, self.latest[s]) for s, k in self._kinds.items() if k is SampleKind.TEMPERATURE
        )
