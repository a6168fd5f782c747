"""Expansion of a checked devices.yaml into a FleetConfig: counted groups, name patterns,
sites, gossip domains, appliance params, faults and outages, serial sensors and the world.

``expand(source, raw, lines)`` collects every problem before raising one ConfigError. A
problem shared by the instances of a counted group (a wrong site pattern in a group of 300) is
reported once for the group (``300 devices of group 'fridge-{i:03d}' (devices[0] i=1..300):
field 'site': ...``), not once per device. Name patterns are bounded (``MAX_PATTERN``
characters, widths and precisions up to ``MAX_NAME``), so no pattern can build a huge string.
The appliance kinds, their params, model names and outages all come from firmware_sim's one
registry (``firmware_sim.appliances.APPLIANCE_TYPES``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from agent.config.errors import ConfigError, clip
from agent.config.model import (
    MAX_NAME,
    NAME_RE,
    Device,
    FleetConfig,
    Replication,
    Site,
    serial_up_sensor,
)
from agent.config.schema import EPOCH, MAX_COUNT, RawDevice, RawFault, RawFleet
from agent.config.yamlload import Lines
from firmware_sim.appliances import APPLIANCE_TYPES, KINDS, build_params
from firmware_sim.fleet import (
    OUTAGE_METHODS,
    DeviceSpec,
    Outage,
    SerialSpec,
    SiteSpec,
    outage_kinds,
)
from firmware_sim.samples import SENSOR_RE
from firmware_sim.sensors.faults import FaultError, FaultSpec
from firmware_sim.serial.factory import DRIVERS as SERIAL_DRIVERS
from firmware_sim.world import (
    BloodRoute,
    BloodSpec,
    LaundrySpec,
    MealSpec,
    ShoppingSpec,
    WorldSpec,
)
from ledger.identity import is_device_id

MAX_PATTERN = 200  # characters of a name, id or owner pattern
_FIELD_PART = re.compile(r"[^.\[\]]+|\[(\d+)\]")


def expand(source: str, raw: RawFleet, lines: Lines | None = None) -> FleetConfig:
    """The FleetConfig of a schema-checked document, or ConfigError listing every problem."""
    return _Expander(source, raw, lines or Lines(None)).run()


def expand_pattern(pattern: str, i: int | None, *, unique: bool = False) -> str:
    """Format ``{i}`` / ``{i:03d}`` placeholders; nothing else is allowed in braces. A
    ``unique`` pattern (a name or id in a counted group) must contain ``{i}``. A pattern has at
    most MAX_PATTERN characters and no width or precision above MAX_NAME: ``{i:>999999999}``
    would build a gigabyte string before any name check could refuse it."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(
            f"expected at most {MAX_PATTERN} characters, found {len(pattern):,}: {clip(pattern)}"
        )
    try:
        fields = [(f, spec) for _, f, spec, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ValueError(f"bad pattern {pattern!r}: {exc}") from None
    if i is None:
        if fields:
            raise ValueError(f"{pattern!r} has a {{...}} placeholder but no 'count'")
        return pattern
    if any(f != "i" for f, _ in fields):
        raise ValueError(
            f"only the placeholder {{i}} (with an optional format like {{i:03d}}) "
            f"is allowed, found {pattern!r}"
        )
    if unique and not fields:
        raise ValueError(f"{pattern!r} needs an {{i}} placeholder to name each of 'count'")
    for _, spec in fields:
        if "{" in (spec or ""):
            raise ValueError(f"bad pattern {pattern!r}: no placeholder inside a format")
        for number in re.findall(r"\d+", spec or ""):
            if int(number) > MAX_NAME:
                raise ValueError(
                    f"bad pattern {pattern!r}: width or precision {int(number)} is above "
                    f"{MAX_NAME} (the longest name)"
                )
    try:
        return pattern.format(i=i)
    except (ValueError, KeyError, IndexError, OverflowError) as exc:
        raise ValueError(f"bad pattern {pattern!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Problem:
    line: int | None
    where: str  # "device 'fridge-1' (devices[0] i=1)", or "" for the document itself
    field: str | None
    msg: str
    group: tuple[str, int] | None  # ("devices", k): an instance of the counted group k
    i: int | None


class _Expander:
    """Turns the validated raw document into FleetConfig, collecting every problem."""

    def __init__(self, source: str, raw: RawFleet, lines: Lines) -> None:
        self.source = source
        self.raw = raw
        self.lines = lines
        self.problems: list[_Problem] = []
        # The entry being expanded: ("devices", k) and its instance i, set by the loops below.
        self.entry: tuple[str, int] | None = None
        self.i: int | None = None
        # The params of devices[k] and their problems: the same for every instance of a group.
        self._params_of: dict[int, tuple[Any, list[tuple[str | None, str]]]] = {}
        self._ids: dict[str, str] = {}  # device id -> where it was given (``id:``)

    def problem(self, where: str, field: str | None, msg: str) -> None:
        """Record a problem of the entry being expanded (or of the document, ``where == ""``)."""
        entry = self.entry if where else None
        loc: list[object] = list(entry or ())
        for m in _FIELD_PART.finditer(field or ""):
            loc.append(int(m.group(1)) if m.group(1) is not None else m.group(0))
        group = entry if entry is not None and self.i is not None else None
        self.problems.append(
            _Problem(self.lines.line(loc), where, field, msg, group, self.i if group else None)
        )

    def report(self) -> list[str]:
        """One line per problem, a group's instances sharing a field's problem as one line."""
        shared: dict[tuple[tuple[str, int], str | None], list[_Problem]] = {}
        for p in self.problems:
            if p.group is not None:
                shared.setdefault((p.group, p.field), []).append(p)
        out: list[str] = []
        for p in self.problems:
            same = shared.get((p.group, p.field)) if p.group is not None else None
            if same is None or len(same) == 1:
                out.append(self._line(p.line, p.where, p.field, p.msg))
            elif same[0] is p:
                out.append(self._line(p.line, self._group_label(same), p.field, p.msg))
        return out

    def _group_label(self, same: Sequence[_Problem]) -> str:
        kind, k = same[0].group or ("", 0)
        pattern = self.raw.devices[k].name if kind == "devices" else self.raw.sites[k].id
        first, last = same[0].i, same[-1].i
        what = "devices" if kind == "devices" else "sites"
        count = len({p.i for p in same})  # an instance may meet one field's problem twice
        return (
            f"{count} {what} of group {clip(pattern)} ({kind}[{k}] i={first}..{last}; "
            f"the first shown)"
        )

    def _line(self, line: int | None, where: str, field: str | None, msg: str) -> str:
        parts = [self.source if line is None else f"{self.source}: line {line}"]
        parts += ([where] if where else []) + ([f"field '{field}'"] if field else [])
        return ": ".join(parts) + f": {msg}"

    def run(self) -> FleetConfig:
        raw = self.raw
        if not NAME_RE.fullmatch(raw.fleet):
            self.problem("", "fleet", f"must match {NAME_RE.pattern}, found {clip(raw.fleet)}")
        start_ms = (raw.start - EPOCH) // timedelta(milliseconds=1)
        # Counted groups multiply what a line costs, as aliases do: bound the whole fleet
        # before building any of it (a thousand groups of 100,000 would be 10**8 devices).
        for what, entries in (("sites", raw.sites), ("devices", raw.devices)):
            total = sum(1 if e.count is None else e.count for e in entries)
            if total > MAX_COUNT:
                self.problem(
                    "", what, f"expected at most {MAX_COUNT:,} {what} in all, found {total:,}"
                )
        if self.problems:
            raise ConfigError(self.report())
        sites = self._sites()
        site_by_id = {s.id: s for s in sites}
        domains = self._domains(site_by_id)
        devices = self._devices(site_by_id, set(domains), start_ms)
        world = self._world(devices)
        if self.problems:
            raise ConfigError(self.report())
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
            self.entry = ("sites", k)
            for i in self._instances(rs.count, rs.first):
                self.i = i
                where_i = f"sites[{k}]" + ("" if i is None else f" i={i}")
                try:
                    sid = expand_pattern(rs.id, i, unique=True)
                except ValueError as exc:
                    self.i = None  # a problem of the pattern: the group's, said once
                    self.problem(f"site {clip(rs.id)} ({where_i})", "id", str(exc))
                    break
                where = f"site {clip(sid)} ({where_i})"
                try:
                    owner = expand_pattern(rs.owner, i) if rs.owner is not None else sid
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
                out.append(Site(SiteSpec(sid, rs.kind), rs.private, owner, where_i))
        self.entry = self.i = None
        return out

    def _domains(self, sites: Mapping[str, Site]) -> list[str]:
        out = list(sites)
        for k, d in enumerate(self.raw.gossip_domains):
            self.entry = ("gossip_domains", k)
            if not NAME_RE.fullmatch(d.id):
                self.problem(
                    f"gossip domain {clip(d.id)} (gossip_domains[{k}])",
                    "id",
                    f"must match {NAME_RE.pattern}",
                )
            elif d.id in out:
                if d.id not in sites:
                    self.problem(
                        f"gossip domain {clip(d.id)} (gossip_domains[{k}])", "id", "declared twice"
                    )
            else:
                out.append(d.id)
        self.entry = None
        return out

    def _devices(self, sites: Mapping[str, Site], domains: set[str], start_ms: int) -> list[Device]:
        out: list[Device] = []
        seen: dict[str, str] = {}
        for k, rd in enumerate(self.raw.devices):
            self.entry = ("devices", k)
            for i in self._instances(rd.count, rd.first):
                self.i = i
                where_i = f"devices[{k}]" + ("" if i is None else f" i={i}")
                label = f"device {clip(rd.name)} ({where_i})"
                try:
                    name = expand_pattern(rd.name, i, unique=True)
                except ValueError as exc:
                    self.i = None  # a problem of the pattern: the group's, said once
                    self.problem(label, "name", str(exc))
                    break
                where = f"device {clip(name)} ({where_i})"
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
        self.entry = self.i = None
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
                return expand_pattern(value, i)
            except ValueError as exc:
                self.problem(where, field, str(exc))
                return value

        site_id = expand("site", rd.site)
        site = sites.get(site_id)
        if site is None:
            known = sorted(sites)
            listed = ", ".join(repr(s) for s in known[:10]) + (", ..." if len(known) > 10 else "")
            self.problem(where, "site", f"no site {clip(site_id)}; sites are [{listed}]")
        dom = tuple(expand(f"domains[{j}]", d) for j, d in enumerate(rd.domains or [site_id]))
        for j, d in enumerate(dom if rd.domains else ()):
            if d not in domains:
                self.problem(
                    where,
                    f"domains[{j}]",
                    f"{clip(d)} is neither a site nor a declared gossip domain",
                )
        owner = (
            expand("owner", rd.owner) if rd.owner is not None else (site.owner if site else site_id)
        )
        params = self._params(rd, where)
        faults, outages = self._faults(rd, where, start_ms)
        serial = self._serial(rd, where)
        device_id = self._device_id(rd, i, where)
        if len(self.problems) > before or site is None:
            return None
        spec = DeviceSpec(name, rd.kind, site_id, params, faults, serial, outages)
        return Device(
            spec=spec,
            model=rd.model or APPLIANCE_TYPES[rd.kind].model_name,
            owner=owner,
            domains=dom,
            spare_storage_mb=rd.spare_storage_mb,
            where=where_i,
            device_id=device_id,
        )

    def _device_id(self, rd: RawDevice, i: int | None, where: str) -> str | None:
        if rd.id is None:
            return None
        if i is not None:
            self.problem(where, "id", "a device id names one device: not with `count`")
        elif not is_device_id(rd.id):
            self.problem(
                where,
                "id",
                "expected a device id (ef + 24 base32 letters, as `keys init-device` prints), "
                f"found {clip(rd.id)}",
            )
        elif rd.id in self._ids:
            self.problem(where, "id", f"{rd.id} is already the id of {self._ids[rd.id]}")
        else:
            self._ids[rd.id] = where
        return rd.id

    def _params(self, rd: RawDevice, where: str) -> Any:
        """The params of the entry being expanded, checked once per entry, not per instance."""
        k = self.entry[1] if self.entry is not None else -1
        cached = self._params_of.get(k)
        if cached is None:
            before = len(self.problems)
            value = self._check_params(rd, where)
            found = [(p.field, p.msg) for p in self.problems[before:]]
            self._params_of[k] = cached = (value, found)
            return value
        value, found = cached
        for field, msg in found:
            self.problem(where, field, msg)
        return value

    def _check_params(self, rd: RawDevice, where: str) -> Any:
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
                self.problem(
                    where, f"{field}.sensor", f"required for a {clip(f.kind)} sensor fault"
                )
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
        if f.kind not in outage_kinds(rd.kind):
            able = sorted(k for k in KINDS if f.kind in outage_kinds(k))
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

    def _serial(self, rd: RawDevice, where: str) -> tuple[SerialSpec, ...] | None:
        if rd.serial is None:
            return None
        specs = []
        seen: dict[str, int] = {}
        for i, s in enumerate(rd.serial):
            at = "serial" if rd.serial_one else f"serial[{i}]"
            if s.driver not in SERIAL_DRIVERS:
                self.problem(
                    where,
                    f"{at}.driver",
                    f"expected one of {list(SERIAL_DRIVERS)}, found {clip(s.driver)}",
                )
            for key in ("baud", "clock"):
                if key in s.options:
                    self.problem(
                        where,
                        f"{at}.options.{key}",
                        "set by edgefleet" if key == "clock" else f"use {at}.baud",
                    )
            spec = SerialSpec(s.driver, s.port, s.baud, dict(s.options), tuple(s.sensors))
            up = serial_up_sensor(spec)
            if spec.prefix and not SENSOR_RE.fullmatch(spec.prefix + ".x"):
                self.problem(
                    where,
                    f"{at}.options.prefix",
                    f"expected a sensor name prefix ({SENSOR_RE.pattern}), "
                    f"found {clip(spec.prefix)}",
                )
            elif not SENSOR_RE.fullmatch(up):
                self.problem(where, f"{at}.options.prefix", f"too long for the sensor {clip(up)}")
            elif up in seen:
                self.problem(
                    where,
                    f"{at}.options.prefix",
                    f"serial[{seen[up]}] has the same {'prefix' if spec.prefix else 'driver'}: "
                    "give each sensor of the device its own prefix",
                )
            seen.setdefault(up, i)
            specs.append(spec)
        return tuple(specs)

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
                        f"expected the name of a medical_freezer device, found {clip(name)}",
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
