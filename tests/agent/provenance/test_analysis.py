"""The verdict rules on hand-made readings: exact boundaries of gaps, excursions and custody."""

from __future__ import annotations

import pytest

from agent.provenance import analysis, rules
from agent.provenance.evidence import DeviceInfo, Evidence, Withheld

EPC = "urn:epc:id:giai:9501101.1"
MIN = 60_000
A, B = "efaaaaaaaaaaaaaaaaaaaaaaaa", "efbbbbbbbbbbbbbbbbbbbbbbbb"
DEVICES = {
    A: DeviceInfo(A, "freezer-a", "medical_freezer", "station", "m", False),
    B: DeviceInfo(B, "freezer-b", "medical_freezer", "hospital", "m", False),
}


class Chain:
    """Readings of several devices, each placed after the previous one of its device."""

    def __init__(self) -> None:
        self.readings: list[Evidence] = []
        self.next: dict[str, int] = {}

    def add(
        self,
        dev: str,
        t: int,
        sensor: str,
        value: int = 0,
        tag: str | None = None,
        text: str | None = None,
    ) -> Evidence:
        n = self.next.get(dev, 0)
        self.next[dev] = n + 1
        e = Evidence(
            dev, n // 4, n % 4, 0, n, t, sensor, value, tag, text, False, bytes(32), "block"
        )
        self.readings.append(e)
        return e

    def move(self, dev: str, t: int, sensor: str) -> Evidence:
        return self.add(dev, t, sensor, 1, EPC, "plasma unit")

    def trace(self, **kw: object) -> analysis.Trace:
        return analysis.analyse(EPC, DEVICES, self.readings, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("gap_min", "over"), [(30, False), (31, True)])
def test_a_gap_is_over_the_limit_only_when_strictly_longer(gap_min: int, over: bool) -> None:
    c = Chain()
    c.move(A, 0, "rfid.in")
    c.move(A, 10 * MIN, "rfid.out")
    c.move(B, (10 + gap_min) * MIN, "rfid.in")
    t = c.trace()
    (g,) = t.gaps
    assert (g.duration_ms, g.limit_ms, g.over_limit) == (gap_min * MIN, 30 * MIN, over)
    assert t.verdict.ok is (not over)
    assert t.verdict.final == f"inside freezer-b since {rules.iso((10 + gap_min) * MIN)}"


def test_a_sampled_excursion_runs_from_the_first_reading_beyond_to_the_first_back() -> None:
    c = Chain()
    c.move(A, 0, "rfid.in")
    for i, v in enumerate([-30_000, -25_000, -24_990, -22_000, -24_000, -25_000, -31_000]):
        c.add(A, (i + 1) * MIN, "cabinet.temp_mc", v)
    c.move(A, 10 * MIN, "rfid.out")
    (x,) = c.trace().excursions
    assert (x.start_ms, x.end_ms, x.duration_ms, x.peak_mc) == (3 * MIN, 6 * MIN, 3 * MIN, -22_000)
    assert (x.basis, x.readings_beyond, x.ongoing, x.direction) == ("readings", 3, None, "above")


def test_an_excursion_still_going_when_the_item_leaves_ends_at_the_departure() -> None:
    c = Chain()
    c.move(A, 0, "rfid.in")
    c.add(A, MIN, "cabinet.temp_mc", -20_000)
    c.move(A, 5 * MIN, "rfid.out")
    c.add(A, 6 * MIN, "cabinet.temp_mc", -21_000)  # after the departure: not the item's
    (x,) = c.trace().excursions
    assert (x.start_ms, x.end_ms, x.duration_ms, x.ongoing, x.readings_beyond) == (
        MIN,
        5 * MIN,
        4 * MIN,
        "at departure",
        1,
    )


def test_the_devices_own_record_wins_when_its_limit_is_the_products() -> None:
    c = Chain()
    c.move(A, 0, "rfid.in")
    c.add(A, MIN, "cabinet.temp_mc", -26_000)
    c.add(A, 90_500, "excursion.start", -25_000, text="above -25.0 C")
    c.add(A, 2 * MIN, "cabinet.temp_mc", -24_000)
    c.add(A, 200_250, "excursion.end", 109_750, text="above")
    c.add(A, 200_250, "excursion.peak_mc", -23_812, text="above")
    c.add(A, 4 * MIN, "cabinet.temp_mc", -26_000)
    c.move(A, 5 * MIN, "rfid.out")
    (x,) = c.trace().excursions
    assert (x.start_ms, x.duration_ms, x.end_ms, x.peak_mc, x.basis) == (
        90_500,
        109_750,
        200_250,
        -23_812,
        "device",
    )
    # A red-cell bag in the same cabinet: the device's -25 C band is not its limit.
    red = c.trace(product="red-cells").excursions
    assert [(e.basis, e.direction, e.limit_mc) for e in red] == [("readings", "below", 2_000)]
    assert red[0].ongoing == "at departure" and red[0].readings_beyond == 3


@pytest.mark.parametrize(
    ("events", "custody", "problem"),
    [
        (
            [(A, 0, "rfid.in"), (B, MIN, "rfid.in")],
            "broken",
            "arrived at freezer-b while still recorded inside freezer-a",
        ),
        ([(A, 0, "rfid.out")], "broken", "left freezer-a without a recorded arrival"),
        (
            [(A, 0, "rfid.in"), (A, MIN, "rfid.out"), (A, 2 * MIN, "rfid.out")],
            "broken",
            "left freezer-a without a recorded arrival",
        ),
        ([], "unknown", "no reading in the data dir records this item's arrival or departure"),
    ],
)
def test_custody_breaks(events: list[tuple[str, int, str]], custody: str, problem: str) -> None:
    c = Chain()
    for dev, t, sensor in events:
        c.move(dev, t, sensor)
    v = c.trace().verdict
    assert v.custody == custody and not v.ok
    assert any(problem in p for p in v.problems), v.problems


def test_withheld_readings_during_a_stay_make_custody_incomplete() -> None:
    c = Chain()
    c.move(A, 0, "rfid.in")
    v = c.trace(
        withheld=[Withheld(A, 7, MIN, 9 * MIN, True, "outside the grant's time range")]
    ).verdict
    assert v.custody == "incomplete" and not v.ok
    assert v.problems == (
        "7 private reading(s) of freezer-a during the item's stay were withheld (outside the "
        "grant's time range): what happened there is unknown",
    )
    elsewhere = c.trace(withheld=[Withheld(B, 5, 0, MIN, False, "no key")]).verdict
    assert elsewhere.ok and elsewhere.custody == "continuous" and len(elsewhere.notes) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cotton-60 60 C > care 40 C", (True, 40)),
        ("cold-20 20 C > do not wash", (True, 0)),
        ("wool-30 30 C > unlabelled, 30 C", (True, 30)),
        ("wool garment in cotton-40", (False, None)),
        ("overload 9000 g > 8000 g", (False, None)),
        (None, (False, None)),
    ],
)
def test_care_label_conflicts(text: str | None, expected: tuple[bool, int | None]) -> None:
    assert rules.care_exceeded(text) == expected


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (250, "250ms"),
        (1_000, "1s"),
        (61_500, "1m01.500s"),
        (2_333_173, "38m53.173s"),
        (7_200_000, "2h00m"),
        (7_205_000, "2h00m05s"),
    ],
)
def test_durations_read_as_written(ms: int, text: str) -> None:
    assert rules.fmt_ms(ms) == text


def test_the_product_follows_the_first_appliance_and_the_item_name() -> None:
    assert rules.product_for("medical_freezer", "plasma unit").name == "plasma"
    assert rules.product_for("medical_freezer", "red cells").name == "red-cells"
    assert rules.product_for("refrigerator", "milk 1 l").name == "chilled-food"
    assert rules.product_for("washing_machine", "jeans").name == "garment"
    assert rules.product_for(None, None).name == "unknown"
