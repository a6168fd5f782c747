"""devices.yaml: the one YAML reader, its pydantic schema, and the expanded fleet configuration.

``load_fleet(path)`` reads a file with ``yaml.safe_load``; ``parse_fleet(data, source)`` checks an
already-loaded mapping. Both return a ``FleetConfig`` of frozen values with counted groups
expanded, names checked, durations in milliseconds and appliance parameters turned into the
model's params dataclass, or raise ``ConfigError`` listing every problem as
``<file>: device '<name>' (devices[<i>]): field '<dotted.path>': <what was expected / found>``.
docs/DEVICES.md documents every key.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from agent.errors import AgentError
from firmware_sim.appliances import (
    PARAMS_TYPES,
    MedicalFreezer,
    Refrigerator,
    WashingMachine,
    build_params,
)
from firmware_sim.fleet import OUTAGE_METHODS, DeviceSpec, FleetSpec, Outage, SerialSpec, SiteSpec
from firmware_sim.sensors.faults import FaultError, FaultSpec
from firmware_sim.serial.factory import DRIVERS as SERIAL_DRIVERS
from firmware_sim.world import (
    DAY_MS,
    HOUR_MS,
    MIN_MS,
    BloodRoute,
    BloodSpec,
    LaundrySpec,
    MealSpec,
    ShoppingSpec,
    WorldSpec,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday, so runs are reproducible
DEVICE_KINDS = tuple(PARAMS_TYPES)
MAX_COUNT = 100_000
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": MIN_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}


class ConfigError(AgentError, ValueError, code="config"):
    """devices.yaml is unreadable or invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        shown = list(self.problems[:20])
        if len(self.problems) > 20:
            shown.append(f"... and {len(self.problems) - 20} more problems")
        super().__init__("\n".join(shown))


# --------------------------------------------------------------------------- value parsers


def parse_duration_ms(text: str) -> int:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"``, ``"250ms"`` or sums like ``"1h30m"``."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a duration like '90s', '30m', '12h', '7d', found {text!r}")
    pos, total = 0, 0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(
            f"expected a duration like '90s', '30m', '12h', '7d' (units ms, s, m, "
            f"h, d, w), found {text!r}"
        )
    return total


def _time_of_day(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f"expected a quoted time of day like '17:30', found the number {value} "
            "(YAML reads an unquoted 17:30 as a base-60 number: quote it)"
        )
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value):
        raise ValueError(f"expected a time of day 'HH:MM' (UTC), found {value!r}")
    hh, mm = (int(x) for x in value.split(":"))
    if hh > 23 or mm > 59:
        raise ValueError(f"expected a time of day 00:00..23:59, found {value!r}")
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
        raise ValueError(f"expected a weekday {', '.join(WEEKDAYS)}, found {value!r}")
    return WEEKDAYS.index(value.lower()[:3])


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("expected a time with a time zone, e.g. 2025-01-06T00:00:00Z")
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
    kind: Literal["household", "street", "blood_station", "transport", "hospital"]
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
    kind: Literal["refrigerator", "washing_machine", "medical_freezer"]
    site: StrictStr
    model: StrictStr | None = None
    owner: StrictStr | None = None
    domains: list[StrictStr] | None = None
    sampling_period: PositiveDuration | None = None
    spare_storage_mb: Annotated[StrictInt, Field(ge=0)] = 64
    params: dict[StrictStr, Any] = Field(default_factory=dict)
    faults: list[RawFault] = Field(default_factory=list)
    serial: RawSerial | None = None
    count: Count | None = None
    first: StrictInt = 1


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
    seed: StrictInt = 0
    start: Annotated[datetime, AfterValidator(_aware)] = DEFAULT_START
    sites: Annotated[list[RawSite], Field(min_length=1)]
    gossip_domains: list[RawDomain] = Field(default_factory=list)
    devices: Annotated[list[RawDevice], Field(min_length=1)]
    world: RawWorld = Field(default_factory=RawWorld)
    replication: RawReplication = Field(default_factory=RawReplication)


# --------------------------------------------------------------------------- expanded values


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    kind: str
    private: bool
    owner: str
    where: str  # "sites[0]" or "sites[0] i=3": where in the file it came from


@dataclass(frozen=True, slots=True)
class SerialSensor:
    driver: str
    port: str
    baud: int | None  # None: the driver's default
    options: Mapping[str, str | int | bool]
    sensors: tuple[str, ...]  # simulated sensors replaced; empty: all of them


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    kind: str
    site: str
    model: str
    owner: str
    domains: tuple[str, ...]
    sample_period_ms: int
    spare_storage_mb: int
    params: Any  # the kind's params dataclass (firmware_sim.appliances.PARAMS_TYPES)
    faults: tuple[FaultSpec, ...]
    outages: tuple[Outage, ...]
    serial: SerialSensor | None
    where: str  # "devices[2]" or "devices[2] i=7"


@dataclass(frozen=True, slots=True)
class Replication:
    """Edge replication of block bodies (docs/REPLICATION.md): ``copies`` holders per block
    besides the owner (0: off), each audited every ``audit_every_ms``; a holder gone longer than
    ``repair_after_ms`` no longer counts and its blocks are placed again."""

    copies: int = 3
    audit_every_ms: int = 600_000
    repair_after_ms: int = 600_000


@dataclass(frozen=True, slots=True)
class FleetConfig:
    source: str
    name: str
    seed: int
    start_ms: int
    sites: tuple[Site, ...]
    domains: tuple[str, ...]  # every gossip domain: site ids and declared domains
    devices: tuple[Device, ...]
    world: WorldSpec
    replication: Replication = Replication()

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(f"no device named {name!r} in {self.source}")

    def site(self, site_id: str) -> Site:
        for s in self.sites:
            if s.id == site_id:
                return s
        raise KeyError(f"no site {site_id!r} in {self.source}")

    def fleet_spec(self) -> FleetSpec:
        """The firmware_sim view of this fleet (what ``firmware_sim.fleet.Fleet`` runs)."""
        return FleetSpec(
            name=self.name,
            seed=self.seed,
            start_ms=self.start_ms,
            sites=tuple(SiteSpec(s.id, s.kind) for s in self.sites),
            devices=tuple(
                DeviceSpec(
                    name=d.name,
                    kind=d.kind,
                    site=d.site,
                    params=d.params,
                    faults=d.faults,
                    outages=d.outages,
                    serial=None
                    if d.serial is None
                    else SerialSpec(
                        d.serial.driver,
                        d.serial.port,
                        d.serial.baud,
                        dict(d.serial.options),
                        d.serial.sensors,
                    ),
                )
                for d in self.devices
            ),
            world=self.world,
        )


APPLIANCE_CLASSES: dict[str, type[Any]] = {
    "refrigerator": Refrigerator,
    "washing_machine": WashingMachine,
    "medical_freezer": MedicalFreezer,
}

DEFAULT_MODELS = {
    "refrigerator": "edgefleet sim fridge-freezer",
    "washing_machine": "edgefleet sim washer",
    "medical_freezer": "edgefleet sim plasma freezer",
}


# --------------------------------------------------------------------------- loading


def load_fleet(path: str | Path) -> FleetConfig:
    """Read and validate a devices.yaml file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}".replace("\n", " ")]) from None
    return parse_fleet(data, source)


def parse_fleet(data: object, source: str = "devices.yaml") -> FleetConfig:
    """Validate an already-loaded devices.yaml document."""
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: expected a mapping at the top level, found {type(data).__name__}"]
        )
    try:
        raw = RawFleet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(source, data, e) for e in exc.errors()]) from None
    return _Expander(source, raw).run()


def _describe(source: str, data: Mapping[str, Any], err: Any) -> str:
    loc: tuple[Any, ...] = tuple(err["loc"])
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        msg = f"unknown key; expected one of {sorted(allowed)}" if allowed else "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif "input" in err:
        found = repr(err["input"])
        msg = f"{msg}, found {found if len(found) <= 80 else found[:77] + '...'}"
    prefix = source
    rest = loc
    if len(loc) >= 2 and loc[0] in ("devices", "sites") and isinstance(loc[1], int):
        items = data.get(loc[0])
        entry = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        key = "name" if loc[0] == "devices" else "id"
        label = entry.get(key) if isinstance(entry, dict) else None
        what = "device" if loc[0] == "devices" else "site"
        prefix = f"{source}: {what} {label!r} ({loc[0]}[{loc[1]}])"
        rest = loc[2:]
    if not rest:
        return f"{prefix}: {msg}"
    return f"{prefix}: field '{_dotted(rest)}': {msg}"


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


def _expand_pattern(pattern: str, i: int | None, *, unique: bool = False) -> str:
    """Format ``{i}`` / ``{i:03d}`` placeholders; nothing else is allowed in braces. A
    ``unique`` pattern (a name or id in a counted group) must contain ``{i}``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ValueError(f"bad pattern {pattern!r}: {exc}") from None
    if i is None:
        if fields:
            raise ValueError(f"{pattern!r} has a {{...}} placeholder but no 'count'")
        return pattern
    if any(f != "i" for f in fields):
        raise ValueError(
            f"only the placeholder {{i}} (with an optional format like {{i:03d}}) "
            f"is allowed, found {pattern!r}"
        )
    if unique and not fields:
        raise ValueError(f"{pattern!r} needs an {{i}} placeholder to name each of 'count'")
    try:
        return pattern.format(i=i)
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"bad pattern {pattern!r}: {exc}") from None


class _Expander:
    """Turns the validated raw document into FleetConfig, collecting every problem."""

    def __init__(self, source: str, raw: RawFleet) -> None:
        self.source = source
        self.raw = raw
        self.problems: list[str] = []

    def problem(self, where: str, field: str | None, msg: str) -> None:
        parts = [self.source] + ([where] if where else []) + ([f"field '{field}'"] if field else [])
        self.problems.append(": ".join(parts) + f": {msg}")

    def run(self) -> FleetConfig:
        raw = self.raw
        if not NAME_RE.fullmatch(raw.fleet):
            self.problem("", "fleet", f"must match {NAME_RE.pattern}, found {raw.fleet!r}")
        start_ms = (raw.start - EPOCH) // timedelta(milliseconds=1)
        sites = self._sites()
        site_by_id = {s.id: s for s in sites}
        domains = self._domains(site_by_id)
        devices = self._devices(site_by_id, set(domains), start_ms)
        world = self._world(devices)
        if self.problems:
            raise ConfigError(self.problems)
        return FleetConfig(
            self.source,
            raw.fleet,
            raw.seed,
            start_ms,
            tuple(sites),
            tuple(domains),
            tuple(devices),
            world,
            Replication(
                raw.replication.copies,
                raw.replication.audit_every,
                raw.replication.repair_after,
            ),
        )

    def _instances(self, count: int | None, first: int) -> list[int | None]:
        return [None] if count is None else list(range(first, first + count))

    def _sites(self) -> list[Site]:
        out: list[Site] = []
        seen: dict[str, str] = {}
        for k, rs in enumerate(self.raw.sites):
            for i in self._instances(rs.count, rs.first):
                where_i = f"sites[{k}]" + ("" if i is None else f" i={i}")
                try:
                    sid = _expand_pattern(rs.id, i, unique=True)
                except ValueError as exc:
                    self.problem(f"site {rs.id!r} ({where_i})", "id", str(exc))
                    break
                where = f"site {sid!r} ({where_i})"
                try:
                    owner = _expand_pattern(rs.owner, i) if rs.owner is not None else sid
                except ValueError as exc:
                    self.problem(where, "owner", str(exc))
                    break
                if not NAME_RE.fullmatch(sid):
                    self.problem(where, "id", f"must match {NAME_RE.pattern}")
                    continue
                if sid in seen:
                    self.problem(where, "id", f"{sid!r} is already used by {seen[sid]}")
                    continue
                seen[sid] = where
                out.append(Site(sid, rs.kind, rs.private, owner, where_i))
        return out

    def _domains(self, sites: Mapping[str, Site]) -> list[str]:
        out = list(sites)
        for k, d in enumerate(self.raw.gossip_domains):
            if not NAME_RE.fullmatch(d.id):
                self.problem(
                    f"gossip domain {d.id!r} (gossip_domains[{k}])",
                    "id",
                    f"must match {NAME_RE.pattern}",
                )
            elif d.id in out:
                if d.id not in sites:
                    self.problem(
                        f"gossip domain {d.id!r} (gossip_domains[{k}])", "id", "declared twice"
                    )
            else:
                out.append(d.id)
        return out

    def _devices(self, sites: Mapping[str, Site], domains: set[str], start_ms: int) -> list[Device]:
        out: list[Device] = []
        seen: dict[str, str] = {}
        for k, rd in enumerate(self.raw.devices):
            for i in self._instances(rd.count, rd.first):
                where_i = f"devices[{k}]" + ("" if i is None else f" i={i}")
                label = f"device {rd.name!r} ({where_i})"
                try:
                    name = _expand_pattern(rd.name, i, unique=True)
                except ValueError as exc:
                    self.problem(label, "name", str(exc))
                    break
                where = f"device {name!r} ({where_i})"
                if not NAME_RE.fullmatch(name):
                    self.problem(where, "name", f"must match {NAME_RE.pattern}")
                    continue
                if name in seen:
                    self.problem(where, "name", f"{name!r} is already used by {seen[name]}")
                    continue
                seen[name] = where
                dev = self._device(rd, i, name, where, where_i, sites, domains, start_ms)
                if dev is not None:
                    out.append(dev)
        return out

    def _device(
        self,
        rd: RawDevice,
        i: int | None,
        name: str,
        where: str,
        where_i: str,
        sites: Mapping[str, Site],
        domains: set[str],
        start_ms: int,
    ) -> Device | None:
        before = len(self.problems)

        def expand(field: str, value: str) -> str:
            try:
                return _expand_pattern(value, i)
            except ValueError as exc:
                self.problem(where, field, str(exc))
                return value

        site_id = expand("site", rd.site)
        site = sites.get(site_id)
        if site is None:
            self.problem(where, "site", f"no site {site_id!r}; sites are {sorted(sites)[:10]}")
        dom = tuple(expand(f"domains[{j}]", d) for j, d in enumerate(rd.domains or [site_id]))
        for j, d in enumerate(dom if rd.domains else ()):
            if d not in domains:
                self.problem(
                    where, f"domains[{j}]", f"{d!r} is neither a site nor a declared gossip domain"
                )
        owner = (
            expand("owner", rd.owner) if rd.owner is not None else (site.owner if site else site_id)
        )
        params = self._params(rd, where)
        faults, outages = self._faults(rd, where, start_ms)
        serial = self._serial(rd, where)
        if len(self.problems) > before or site is None:
            return None
        return Device(
            name=name,
            kind=rd.kind,
            site=site_id,
            model=rd.model or DEFAULT_MODELS[rd.kind],
            owner=owner,
            domains=dom,
            sample_period_ms=params.sample_period_ms,
            spare_storage_mb=rd.spare_storage_mb,
            params=params,
            faults=faults,
            outages=outages,
            serial=serial,
            where=where_i,
        )

    def _params(self, rd: RawDevice, where: str) -> Any:
        overrides = dict(rd.params)
        if rd.sampling_period is not None:
            if "sample_period_ms" in overrides:
                self.problem(
                    where,
                    "params.sample_period_ms",
                    "conflicts with 'sampling_period'; give only one of them",
                )
            overrides["sample_period_ms"] = rd.sampling_period
        ok = True
        for key, value in overrides.items():
            try:
                build_params(rd.kind, {key: value})
            except ValueError as exc:
                field = (
                    "sampling_period"
                    if key == "sample_period_ms" and rd.sampling_period is not None
                    else f"params.{key}"
                )
                self.problem(where, field, _strip_kind(str(exc), rd.kind))
                ok = False
        if not ok:
            return None
        try:
            return build_params(rd.kind, overrides)
        except ValueError as exc:
            self.problem(where, "params", _strip_kind(str(exc), rd.kind))
            return None

    def _faults(
        self, rd: RawDevice, where: str, start_ms: int
    ) -> tuple[tuple[FaultSpec, ...], tuple[Outage, ...]]:
        faults: list[FaultSpec] = []
        outages: list[Outage] = []
        for j, f in enumerate(rd.faults):
            field = f"faults[{j}]"
            if f.kind in OUTAGE_METHODS:
                self._outage(rd, f, field, where, start_ms, outages)
                continue
            if f.sensor is None:
                self.problem(where, f"{field}.sensor", f"required for a {f.kind!r} sensor fault")
                continue
            try:
                faults.append(
                    FaultSpec(
                        sensor=f.sensor,
                        kind=f.kind,
                        start_ms=start_ms + f.start,
                        end_ms=None if f.end is None else start_ms + f.end,
                        magnitude=f.magnitude,
                        probability=f.probability,
                    )
                )
            except FaultError as exc:
                self.problem(where, field, f"{exc} (outage kinds: {sorted(OUTAGE_METHODS)})")
        return tuple(faults), tuple(outages)

    def _outage(
        self,
        rd: RawDevice,
        f: RawFault,
        field: str,
        where: str,
        start_ms: int,
        outages: list[Outage],
    ) -> None:
        method = OUTAGE_METHODS[f.kind]
        if not hasattr(APPLIANCE_CLASSES[rd.kind], method):
            able = sorted(k for k, c in APPLIANCE_CLASSES.items() if hasattr(c, method))
            self.problem(
                where, f"{field}.kind", f"a {rd.kind} has no {f.kind!r} outage; only {able} do"
            )
            return
        for key in ("sensor", "magnitude", "probability"):
            if key in f.model_fields_set:
                self.problem(where, f"{field}.{key}", f"not used by a {f.kind!r} outage")
                return
        if f.end is None or f.end <= f.start:
            self.problem(
                where,
                f"{field}.end",
                f"a {f.kind!r} outage needs an end after its start ({f.start} ms), found {f.end!r}",
            )
            return
        outages.append(Outage(f.kind, start_ms + f.start, f.end - f.start))

    def _serial(self, rd: RawDevice, where: str) -> SerialSensor | None:
        s = rd.serial
        if s is None:
            return None
        if s.driver not in SERIAL_DRIVERS:
            self.problem(
                where,
                "serial.driver",
                f"expected one of {list(SERIAL_DRIVERS)}, found {s.driver!r}",
            )
        for key in ("baud", "clock"):
            if key in s.options:
                self.problem(
                    where,
                    f"serial.options.{key}",
                    "set by edgefleet" if key == "clock" else "use serial.baud",
                )
        return SerialSensor(s.driver, s.port, s.baud, dict(s.options), tuple(s.sensors))

    def _world(self, devices: Sequence[Device]) -> WorldSpec:
        w = self.raw.world
        routes = []
        by_name = {d.name: d for d in devices}
        for k, r in enumerate(w.blood.routes):
            for role in ("station", "transport", "hospital"):
                name = getattr(r, role)
                dev = by_name.get(name)
                if dev is None or dev.kind != "medical_freezer":
                    self.problem(
                        "",
                        f"world.blood.routes[{k}].{role}",
                        f"expected the name of a medical_freezer device, found {name!r}",
                    )
            routes.append(BloodRoute(r.station, r.transport, r.hospital))
        b = w.blood
        return WorldSpec(
            shopping=ShoppingSpec(
                w.shopping.enabled,
                w.shopping.every,
                w.shopping.at,
                w.shopping.jitter,
                w.shopping.items,
            ),
            meals=MealSpec(w.meals.enabled, tuple(w.meals.at), w.meals.jitter, w.meals.items),
            laundry=LaundrySpec(
                w.laundry.enabled,
                tuple(w.laundry.days),
                w.laundry.at,
                w.laundry.jitter,
                w.laundry.garments,
                w.laundry.wardrobe,
                w.laundry.unload_after,
            ),
            blood=BloodSpec(
                b.enabled,
                b.donations_every,
                b.donations_at,
                b.bags,
                b.transport_every,
                b.transport_at,
                b.load,
                b.transit,
                b.unload,
                b.transfusions_every,
                b.transfusions,
                b.jitter,
                tuple(routes),
            ),
        )


def _strip_kind(msg: str, kind: str) -> str:
    return msg.removeprefix(f"{kind}: ")


def param_fields(kind: str) -> list[tuple[str, object]]:
    """(name, default) of every parameter of ``kind``, for documentation and listings."""
    return [(f.name, f.default) for f in dataclasses.fields(PARAMS_TYPES[kind])]
