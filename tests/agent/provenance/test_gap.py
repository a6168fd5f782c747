"""A bag left outside cold storage: loading the van takes 2 h (``fleets.SLOW_LOAD``)."""

from __future__ import annotations

from tests.agent.provenance.conftest import Run

MIN_MS = 60_000


def test_two_hours_between_station_and_van_is_reported_as_a_gap_over_the_plasma_limit(
    slow_load: Run,
) -> None:
    bags = sorted(
        {m.epc for m in slow_load.truth.movements if m.dst == "appliance:freezer-hospital"}
    )
    assert bags, "no bag reached the hospital"
    with slow_load.session() as s:
        for epc in bags:
            t = s.trace(epc)
            moves = slow_load.truth.moves(epc)
            left = next(m.time_ms for m in moves if m.src == "appliance:freezer-station")
            loaded = next(m.time_ms for m in moves if m.dst == "appliance:freezer-van")
            assert loaded - left == 120 * MIN_MS  # what the world did
            first, second = t.gaps
            assert (t.device_name(first.from_device), t.device_name(first.to_device)) == (
                "freezer-station",
                "freezer-van",
            )
            assert (first.left_ms, first.arrived_ms, first.duration_ms) == (
                left,
                loaded,
                120 * MIN_MS,
            )
            assert first.limit_ms == 30 * MIN_MS and first.over_limit
            assert second.duration_ms == 20 * MIN_MS and not second.over_limit
            assert t.verdict.custody == "continuous"  # recorded at every step, but too long out
            assert not t.verdict.ok and not t.excursions
            assert t.verdict.out_of_cold_ms == 140 * MIN_MS
            assert t.verdict.problems == (
                "out of cold storage 2h00m between freezer-station and freezer-van from "
                f"{_iso(left)} (limit 30m00s)",
            )


def _iso(ms: int) -> str:
    from agent.provenance.rules import iso

    return iso(ms)
