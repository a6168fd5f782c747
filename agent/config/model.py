"""The expanded fleet configuration: frozen values built from a checked devices.yaml.

Each value composes firmware_sim's own spec with what only the agent needs: a ``Device`` holds
the ``DeviceSpec`` that firmware_sim simulates (name, kind, site, params, faults, outages, serial
sensors) plus its model, owner, gossip domains and spare storage; a ``Site`` holds its
``SiteSpec`` plus privacy and owner. ``FleetConfig.fleet_spec()`` hands firmware_sim those specs
as they are, so no field is copied from one side to the other.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from firmware_sim.fleet import DeviceSpec, FleetSpec, Outage, SerialSpec, SiteSpec
from firmware_sim.sensors.faults import FaultSpec
from firmware_sim.world import WorldSpec

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_NAME = 63  # what NAME_RE allows: device, site and domain names

SerialSensor = SerialSpec  # a real sensor on a serial line (firmware_sim's spec, as it is)


def serial_up_sensor(spec: SerialSpec) -> str:
    """The sensor in which ``edgefleet run`` signs whether a real sensor is reading (1) or down
    (0): ``serial.<prefix>.up``, or ``serial.<driver>.up`` without a prefix (docs/TRACES.md)."""
    return f"serial.{spec.prefix or spec.driver}.up"


@dataclass(frozen=True, slots=True)
class Site:
    spec: SiteSpec  # what firmware_sim needs: id and kind
    private: bool
    owner: str
    where: str  # "sites[0]" or "sites[0] i=3": where in the file it came from

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind


@dataclass(frozen=True, slots=True)
class Device:
    spec: DeviceSpec  # what firmware_sim simulates; its params are never None here
    model: str
    owner: str
    domains: tuple[str, ...]
    spare_storage_mb: int
    where: str  # "devices[2]" or "devices[2] i=7"
    # The device id its certificate names (``id:``), for a device enrolled on another machine:
    # the machines that run its domain peers learn from it whom to expect and verify.
    device_id: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def site(self) -> str:
        return self.spec.site

    @property
    def params(self) -> Any:
        """The kind's params dataclass (firmware_sim.appliances.PARAMS_TYPES)."""
        return self.spec.params

    @property
    def sample_period_ms(self) -> int:
        period: int = self.spec.params.sample_period_ms
        return period

    @property
    def faults(self) -> tuple[FaultSpec, ...]:
        return self.spec.faults

    @property
    def outages(self) -> tuple[Outage, ...]:
        return self.spec.outages

    @property
    def serial(self) -> tuple[SerialSpec, ...] | None:
        """The device's real sensors (one or more), None when it has none."""
        return self.spec.serial


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

    def starting_at(self, start_ms: int) -> FleetConfig:
        """This fleet started at ``start_ms`` (a realtime run's origin): every device's faults
        and outages keep their offset from the start (``FleetSpec.starting_at``)."""
        delta = start_ms - self.start_ms
        devices = tuple(dataclasses.replace(d, spec=d.spec.moved(delta)) for d in self.devices)
        return dataclasses.replace(self, start_ms=start_ms, devices=devices)

    def fleet_spec(self) -> FleetSpec:
        """The firmware_sim view of this fleet (what ``firmware_sim.fleet.Fleet`` runs)."""
        return FleetSpec(
            name=self.name,
            seed=self.seed,
            start_ms=self.start_ms,
            sites=tuple(s.spec for s in self.sites),
            devices=tuple(d.spec for d in self.devices),
            world=self.world,
        )
