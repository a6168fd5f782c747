"""The schema of devices.yaml: pydantic models of the raw document and the parsers of its values.

``RawFleet.model_validate(data)`` checks types, ranges and unknown keys; ``describe_errors``
turns pydantic's errors into one line per problem naming file, line, device or site, and field.
What needs the whole document (names, sites, patterns, params) is checked by ``expand``.
Defaults come from firmware_sim's specs, and the appliance kinds from its registry
(``firmware_sim.appliances.KINDS``): this schema repeats neither.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from agent.config.errors import clip
from agent.config.yamlload import Lines
from firmware_sim.appliances import KINDS
from firmware_sim.world import (
    DAY_MS,
    HOUR_MS,
    MIN_MS,
    SITE_KINDS,
    BloodSpec,
    LaundrySpec,
    MealSpec,
    ShoppingSpec,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday, so runs are reproducible
LAST_START = datetime(3000, 1, 1, tzinfo=UTC)  # exclusive; a start's time plus any duration fits
DEVICE_KINDS = KINDS
MAX_COUNT = 100_000
MAX_SERIAL = 8  # real sensors of one device
MAX_DURATION_MS = 100 * 365 * DAY_MS  # no simulation, fault or period is longer than a century
SEED_RANGE = (-(2**63), 2**63 - 1)  # a signed 64-bit seed: any encoding of it fits
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION_RE = re.compile(r"(\d{1,20})(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": MIN_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}


# --------------------------------------------------------------------------- value parsers


def parse_duration_ms(text: str) -> int:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"``, ``"250ms"`` or sums like ``"1h30m"``,
    at most ``MAX_DURATION_MS`` (a century)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a duration like '90s', '30m', '12h', '7d', found {clip(text)}")
    pos, total = 0, 0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(
            f"expected a duration like '90s', '30m', '12h', '7d' (units ms, s, m, "
            f"h, d, w), found {clip(text)}"
        )
    if total > MAX_DURATION_MS:
        raise ValueError(f"expected a duration of at most 100 years, found {clip(text)}")
    return total


def _time_of_day(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f"expected a quoted time of day like '17:30', found the number {value} "
            "(YAML reads an unquoted 17:30 as a base-60 number: quote it)"
        )
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value):
        raise ValueError(f"expected a time of day 'HH:MM' (UTC), found {clip(value)}")
    hh, mm = (int(x) for x in value.split(":"))
    if hh > 23 or mm > 59:
        raise ValueError(f"expected a time of day 00:00..23:59, found {clip(value)}")
    return hh * 60 + mm


def _span(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return value


def _check_span(value: tuple[int, int]) -> tuple[int, int]:
    lo, hi = value
    if not 0 <= lo <= hi:
        raise ValueError(f"expected [min, max] with 0 <= min <= max, found [{lo}, {hi}]")
    return value


def _positive_duration(ms: int) -> int:
    if ms <= 0:
        raise ValueError("expected a duration > 0")
    return ms


def _weekday(value: object) -> int:
    if not isinstance(value, str) or value.lower()[:3] not in WEEKDAYS:
        raise ValueError(f"expected a weekday {', '.join(WEEKDAYS)}, found {clip(value)}")
    return WEEKDAYS.index(value.lower()[:3])


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("expected a time with a time zone, e.g. 2025-01-06T00:00:00Z")
    if not EPOCH <= value < LAST_START:
        raise ValueError(f"expected a start from 1970 to 2999, found {value.isoformat()}")
    return value


Duration = Annotated[int, BeforeValidator(parse_duration_ms)]
PositiveDuration = Annotated[
    int, BeforeValidator(parse_duration_ms), AfterValidator(_positive_duration)
]
TimeOfDay = Annotated[int, BeforeValidator(_time_of_day)]
Span = Annotated[tuple[StrictInt, StrictInt], BeforeValidator(_span), AfterValidator(_check_span)]
Weekday = Annotated[int, BeforeValidator(_weekday)]
Count = Annotated[StrictInt, Field(ge=1, le=MAX_COUNT)]


_SHOP, _MEALS, _LAUNDRY, _BLOOD = ShoppingSpec(), MealSpec(), LaundrySpec(), BloodSpec()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- raw schema


class RawSite(_Strict):
    id: StrictStr
    kind: Literal[SITE_KINDS]  # type: ignore[valid-type]
    private: StrictBool = False
    owner: StrictStr | None = None
    count: Count | None = None
    first: StrictInt = 1


class RawDomain(_Strict):
    id: StrictStr
    description: StrictStr = ""


class RawSerial(_Strict):
    driver: StrictStr
    port: StrictStr
    baud: Annotated[StrictInt, Field(gt=0)] | None = None
    options: dict[StrictStr, StrictStr | StrictInt | StrictBool] = Field(default_factory=dict)
    sensors: list[StrictStr] = Field(default_factory=list)


class RawFault(_Strict):
    sensor: StrictStr | None = None
    kind: StrictStr
    start: Duration = 0
    end: Duration | None = None
    magnitude: StrictInt = 0
    probability: StrictInt = 0


class RawDevice(_Strict):
    name: StrictStr
    kind: Literal[KINDS]  # type: ignore[valid-type]
    site: StrictStr
    model: StrictStr | None = None
    owner: StrictStr | None = None
    domains: list[StrictStr] | None = None
    sampling_period: PositiveDuration | None = None
    spare_storage_mb: Annotated[StrictInt, Field(ge=0)] = 64
    params: dict[StrictStr, Any] = Field(default_factory=dict)
    faults: list[RawFault] = Field(default_factory=list)
    serial: Annotated[list[RawSerial], Field(min_length=1, max_length=MAX_SERIAL)] | None = None
    id: StrictStr | None = None
    count: Count | None = None
    first: StrictInt = 1
    # `serial:` written as one mapping rather than a list: problems name it `serial.<key>`.
    _serial_one: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _one_serial(cls, data: Any, handler: ModelWrapValidatorHandler[RawDevice]) -> RawDevice:
        """``serial:`` is one mapping or a list of them: one is validated as a list of one."""
        one = isinstance(data, dict) and isinstance(data.get("serial"), dict)
        if one:
            data = {**data, "serial": [data["serial"]]}
        device = handler(data)
        device._serial_one = one
        return device

    @property
    def serial_one(self) -> bool:
        return self._serial_one


class RawShopping(_Strict):
    enabled: StrictBool = True
    every: PositiveDuration = _SHOP.every_ms
    at: TimeOfDay = _SHOP.at_min
    jitter: Duration = _SHOP.jitter_ms
    items: Span = _SHOP.items


class RawMeals(_Strict):
    enabled: StrictBool = True
    at: list[TimeOfDay] = Field(default_factory=lambda: list(_MEALS.at_min))
    jitter: Duration = _MEALS.jitter_ms
    items: Span = _MEALS.items


class RawLaundry(_Strict):
    enabled: StrictBool = True
    days: list[Weekday] = Field(default_factory=lambda: list(_LAUNDRY.weekdays))
    at: TimeOfDay = _LAUNDRY.at_min
    jitter: Duration = _LAUNDRY.jitter_ms
    garments: Span = _LAUNDRY.garments
    wardrobe: Annotated[StrictInt, Field(ge=0, le=10_000)] = _LAUNDRY.wardrobe
    unload_after: Duration = _LAUNDRY.unload_ms


class RawRoute(_Strict):
    station: StrictStr
    transport: StrictStr
    hospital: StrictStr


class RawBlood(_Strict):
    enabled: StrictBool = True
    donations_every: PositiveDuration = _BLOOD.donation_every_ms
    donations_at: TimeOfDay = _BLOOD.donation_at_min
    bags: Span = _BLOOD.bags
    transport_every: PositiveDuration = _BLOOD.transport_every_ms
    transport_at: TimeOfDay = _BLOOD.transport_at_min
    load: PositiveDuration = _BLOOD.load_ms
    transit: PositiveDuration = _BLOOD.transit_ms
    unload: PositiveDuration = _BLOOD.unload_ms
    transfusions_every: PositiveDuration = _BLOOD.transfusion_every_ms
    transfusions: Span = _BLOOD.transfusions
    jitter: Duration = _BLOOD.jitter_ms
    routes: list[RawRoute] = Field(default_factory=list)


class RawWorld(_Strict):
    shopping: RawShopping = Field(default_factory=RawShopping)
    meals: RawMeals = Field(default_factory=RawMeals)
    laundry: RawLaundry = Field(default_factory=RawLaundry)
    blood: RawBlood = Field(default_factory=RawBlood)


class RawReplication(_Strict):
    copies: Annotated[StrictInt, Field(ge=0, le=16)] = 3
    audit_every: PositiveDuration = 600_000
    repair_after: Duration = 600_000


class RawFleet(_Strict):
    fleet: StrictStr
    seed: Annotated[StrictInt, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])] = 0
    start: Annotated[datetime, AfterValidator(_aware)] = DEFAULT_START
    sites: Annotated[list[RawSite], Field(min_length=1)]
    gossip_domains: list[RawDomain] = Field(default_factory=list)
    devices: Annotated[list[RawDevice], Field(min_length=1)]
    world: RawWorld = Field(default_factory=RawWorld)
    replication: RawReplication = Field(default_factory=RawReplication)


# --------------------------------------------------------------------------- errors


def describe_errors(
    source: str, data: Mapping[str, Any], errors: Sequence[Any], lines: Lines
) -> list[str]:
    """pydantic's errors as problems: ``<file>: line <n>: device '<name>' (devices[<i>]):
    field '<dotted.path>': <what was expected, what was found>``."""
    return [_describe(source, data, e, lines) for e in errors]


def _describe(source: str, data: Mapping[str, Any], err: Any, lines: Lines) -> str:
    loc: tuple[Any, ...] = _one_serial_loc(data, tuple(err["loc"]))
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        msg = f"unknown key; expected one of {sorted(allowed)}" if allowed else "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif "input" in err:
        msg = f"{msg}, found {clip(err['input'])}"
    line = lines.line(loc)
    at = source if line is None else f"{source}: line {line}"
    prefix = at
    rest = loc
    if len(loc) >= 2 and loc[0] in ("devices", "sites") and isinstance(loc[1], int):
        items = data.get(loc[0])
        entry = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        key = "name" if loc[0] == "devices" else "id"
        label = entry.get(key) if isinstance(entry, dict) else None
        what = "device" if loc[0] == "devices" else "site"
        prefix = f"{at}: {what} {clip(label)} ({loc[0]}[{loc[1]}])"
        rest = loc[2:]
    if not rest:
        return f"{prefix}: {msg}"
    return f"{prefix}: field '{_dotted(rest)}': {msg}"


def _one_serial_loc(data: Mapping[str, Any], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A device's ``serial:`` written as one mapping is validated as a list of one
    (``RawDevice._one_serial``): its problems name the mapping, without the ``[0]``."""
    if len(loc) < 4 or loc[0] != "devices" or loc[2] != "serial" or loc[3] != 0:
        return loc
    items = data.get("devices")
    i = loc[1]
    entry = items[i] if isinstance(items, list) and isinstance(i, int) and i < len(items) else None
    if isinstance(entry, dict) and isinstance(entry.get("serial"), dict):
        return loc[:3] + loc[4:]
    return loc


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_keys(loc: Sequence[Any]) -> list[str]:
    model: Any = RawFleet
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
