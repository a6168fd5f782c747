"""What a device's statistics keep of its samples: the latest value of each sensor, the alarms
raised and not cleared, and its temperature probes, told apart by the sample's kind (the naming
convention of docs/TRACES.md), not by a list of names."""

from __future__ import annotations

import pytest

from agent.device.stats import DeviceStats, SampleKind, sample_kind
from firmware_sim.samples import Sample


@pytest.mark.parametrize(
    ("sensor", "kind"),
    [
        ("alarm.door_open", SampleKind.ALARM),
        ("alarm.temp_high", SampleKind.ALARM),
        ("fridge.temp_mc", SampleKind.TEMPERATURE),
        ("cabinet.temp_mc", SampleKind.TEMPERATURE),
        ("temp_mc", SampleKind.TEMPERATURE),  # a serial probe without a prefix
        ("garage.freezer.temp_mc", SampleKind.TEMPERATURE),  # a prefix of its own
        ("excursion.peak_mc", SampleKind.OTHER),  # milli-degrees, but not a probe
        ("water.temp_mc_avg", SampleKind.OTHER),
        ("door.open", SampleKind.OTHER),
        ("rfid.in", SampleKind.OTHER),
    ],
)
def test_a_sample_kind_follows_from_its_name(sensor: str, kind: SampleKind) -> None:
    assert sample_kind(sensor) is kind


def test_stats_keep_latest_values_active_alarms_and_probes_first_seen_first() -> None:
    stats = DeviceStats()
    stats.observe(
        [
            Sample(1, "fridge.temp_mc", 4_000),
            Sample(1, "freezer.temp_mc", -18_000),
            Sample(1, "alarm.door_open", 1, text="door open > 120 s"),
            Sample(1, "door.open", 1),
        ]
    )
    stats.observe(
        [
            Sample(2, "alarm.fridge_warm", 1),
            Sample(2, "alarm.door_open", 0, text="cleared"),
            Sample(2, "fridge.temp_mc", 8_500),
            Sample(2, "excursion.peak_mc", 9_000),
        ]
    )
    assert stats.alarms == {"alarm.fridge_warm"}
    assert stats.latest["door.open"] == 1
    assert stats.temperatures() == (("fridge.temp_mc", 8_500), ("freezer.temp_mc", -18_000))
