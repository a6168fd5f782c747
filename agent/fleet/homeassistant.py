"""The Home Assistant bridge of a running fleet (``edgefleet run --homeassistant``).

It owns one MQTT connection of its own (``agent.transport.mqtt.MqttClient``) and, for each
appliance the runner runs, publishes the retained device-discovery config and the JSON states
that ``agent.fleet.ha_discovery`` builds:

- readings from a tap on the fleet's sample source (``tap``): temperatures, door, alarms, the
  washer's programme, phase, fabric and care-label warnings, the freezer's mains power, RFID tag
  reads (Home Assistant ``tag`` scans, not retained);
- ledger health from the fleet's snapshot (``FleetSnapshot``, the live view's): chain height,
  pending readings, blocks at full copies, peers online.

Availability follows the devices' own retained presence (and the shared connection's, when the
presence names one) and the bridge's own last-will. Discovery is published again whenever Home
Assistant announces itself (``online`` on ``<prefix>/status``) and after every reconnect; a
retained config of this fleet whose device is no longer in devices.yaml is cleared (an empty
retained config makes Home Assistant remove the device).

Home Assistant stamps a state when it arrives, so a fleet faster than real time would compress
its history: at any speed other than real time, states are published at most every
``THROTTLED_PERIOD_S`` wall seconds per device (each carries its simulated time as ``sim_time``)
and the bridge says so. A private household's readings are published only if the bridge holds
the owner key its certificate names (docs/HOMEASSISTANT.md says what that means).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.devices import FleetConfig
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.fleet.ha_discovery import (
    HaDevice,
    HaTopics,
    Readings,
    discovery_config,
    health_state,
    object_id,
    readings_state,
)
from agent.fleet.sources import SampleSource
from agent.fleet.view import DeviceRow, FleetSnapshot
from agent.transport.endpoint import Endpoint
from agent.transport.errors import TransportError
from agent.transport.mqtt import MqttClient
from agent.transport.presence import PRESENCE_ONLINE, decode_presence
from firmware_sim.samples import Sample
from ledger.certs import Certificate, decode_certificate

log = logging.getLogger("edgefleet.homeassistant")

REALTIME_PERIOD_S = 1.0  # states of a real-time fleet: published within a second of a change
THROTTLED_PERIOD_S = 5.0  # at other speeds: at most one state per device this often
HA_ONLINE = b"online"
FINAL_PUBLISH_S = 3.0
PUBLISH_CONCURRENCY = 64  # devices whose publications are in flight at once

SourceFactory = Callable[[FleetConfig, int], SampleSource]


class _Tap:
    """A sample source that hands every step's samples to the bridge on their way."""

    def __init__(self, source: SampleSource, sink: Callable[[str, Sample], None]) -> None:
        self._source = source
        self._sink = sink

    @property
    def now_ms(self) -> int:
        return self._source.now_ms

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        self._source.now_ms = value

    def targets(self, until_ms: int) -> Iterator[int]:
        return self._source.targets(until_ms)

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        batch = self._source.step(until_ms)
        for name, sample in batch:
            self._sink(name, sample)
        return batch


def throttle_note(speed: float | None) -> str | None:
    """What the bridge says when the fleet does not run in real time (None: it does)."""
    if speed == 1.0:
        return None
    shown = "max" if speed is None else f"{speed:g}"
    return (
        f"Home Assistant: the fleet runs at --speed {shown}, not in real time; Home Assistant "
        f"stamps states on arrival, so the bridge publishes each device's state at most every "
        f"{THROTTLED_PERIOD_S:g} s (sim_time in each state is the simulated time)"
    )


@dataclass
class _Published:
    """What was last published per topic (states are sent again only when they change)."""

    payloads: dict[str, bytes] = field(default_factory=dict)

    def changed(self, topic: str, payload: bytes) -> bool:
        return self.payloads.get(topic) != payload

    def forget(self) -> None:
        self.payloads.clear()


class HomeAssistantBridge:
    """Publish a running fleet to Home Assistant; ``run`` until cancelled."""

    def __init__(
        self,
        cfg: FleetConfig,
        data: Path,
        *,
        topics: HaTopics,
        owner_keys: Iterable[bytes] = (),
        speed: float | None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.cfg = cfg
        self.data = DataDir(data)
        self.topics = topics
        self.owner_keys = frozenset(owner_keys)
        self.period_s = REALTIME_PERIOD_S if speed == 1.0 else THROTTLED_PERIOD_S
        self.note = throttle_note(speed)
        self.shard = shard
        self.devices: dict[str, HaDevice] = {}  # local devices, by name
        self.fleet_tag = ""
        self.readings: dict[str, Readings] = {}
        self.bridge_id = ""
        self._fleet_ids: frozenset[str] = frozenset()
        self._by_id: dict[str, HaDevice] = {}
        self._hubs: dict[str, str | None] = {}  # device id -> shared connection it is on
        # device id -> the shared connection its config last sent names (absent: none sent)
        self._configs: dict[str, str | None] = {}
        self._sent = _Published()
        self._wake = asyncio.Event()
        self._resend = False  # every config again (Home Assistant restarted, or we reconnected)
        self._stale: set[str] = set()  # object ids whose retained config must be cleared
        self._client: MqttClient | None = None
        self.published = 0
        self.failures = 0

    # --- the sample tap ------------------------------------------------------------------------

    def tap(self, make: SourceFactory) -> SourceFactory:
        """Wrap a sample source factory (``RunOptions.source``) so the bridge sees every sample."""

        def factory(cfg: FleetConfig, step_ms: int) -> SampleSource:
            return _Tap(make(cfg, step_ms), self._sample)

        return factory

    def _sample(self, name: str, sample: Sample) -> None:
        if self.devices and not self._readable(name):
            # Another shard's device, or a private household without its owner's key: nothing
            # kept, nothing shown. (Before the devices are known, everything is kept.)
            return
        r = self.readings.get(name)
        if r is None:
            r = self.readings[name] = Readings()
        r.add(sample)

    # --- devices -------------------------------------------------------------------------------

    def _certificate(self, name: str) -> Certificate:
        return decode_certificate((self.data.device(name) / keystore.DEVICE_CERT).read_bytes())

    def load_devices(self, names: Iterable[str]) -> None:
        """Read the certificates of the fleet (once the runner has provisioned it)."""
        certs = {d.name: self._certificate(d.name) for d in self.cfg.devices}
        self._fleet_ids = frozenset(c.device_id for c in certs.values())
        any_cert = next(iter(certs.values()))
        self.fleet_tag = any_cert.authority_key_id[:4].hex()
        index, count = self.shard
        self.bridge_id = f"efha-{self.fleet_tag}-{index}of{count}"
        for name in names:
            c = certs[name]
            private = c.owner_x25519 is not None
            self.devices[name] = HaDevice(
                name=name,
                device_id=c.device_id,
                kind=c.kind,
                model=c.model,
                site=c.site,
                fleet_tag=self.fleet_tag,
                private=private,
                readings=not private or c.owner_x25519 in self.owner_keys,
            )
        self._by_id = {d.device_id: d for d in self.devices.values()}
        owners = {c.owner_x25519 for c in certs.values()}
        for key in sorted(self.owner_keys - owners):
            log.warning("owner key %s opens no device of this fleet", key.hex())
        for name in [n for n in self.readings if not self._readable(n)]:
            del self.readings[name]  # kept while the devices were not known yet

    def _readable(self, name: str) -> bool:
        dev = self.devices.get(name)
        return dev is not None and dev.readings

    def config_payload(self, dev: HaDevice) -> bytes:
        cfg = discovery_config(
            dev, self.topics, bridge_id=self.bridge_id, hub_id=self._hubs.get(dev.device_id)
        )
        return json.dumps(cfg, ensure_ascii=False, sort_keys=True).encode()

    # --- MQTT ----------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        t = self.topics
        if topic == t.status():
            if payload == HA_ONLINE:
                self._resend = True
                self._wake.set()
            return
        parts = topic.split("/")
        if topic.endswith("/config") and len(parts) >= 3 and parts[-3] == "device":
            oid = parts[-2]
            mine = object_id(self.fleet_tag, "")
            if payload and oid.startswith(mine) and oid[len(mine) :] not in self._fleet_ids:
                self._stale.add(oid)
                self._wake.set()
            return
        if len(parts) >= 2 and parts[-1] == "presence":
            dev = self._by_id.get(parts[-2])
            state = decode_presence(payload)
            known = None if dev is None else self._hubs.get(dev.device_id)
            if dev is not None and state is not None and state.online and known != state.hub:
                self._hubs[dev.device_id] = state.hub  # the config changes with it
                self._wake.set()

    async def _on_connected(self) -> None:
        await self._publish(self.topics.bridge(self.bridge_id), PRESENCE_ONLINE, retain=True)
        self._resend = True  # the broker may have lost them (restart without persistence)
        self._wake.set()

    async def _publish(self, topic: str, payload: bytes, *, retain: bool) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, retain=retain)
        except TransportError as exc:  # the link reconnects by itself; on_connected resends
            self.failures += 1
            log.info("not published to %s: %s", topic, exc)
            return False
        self.published += 1
        return True

    async def run(
        self,
        endpoint: Callable[[], Endpoint | None],
        snapshot: Callable[[], FleetSnapshot | None],
    ) -> None:
        """Wait for the runner's broker and devices, then publish until cancelled."""
        if self.note is not None:
            log.warning("%s", self.note)
        snap = snapshot()
        ep = endpoint()
        while ep is None or snap is None or not snap.devices:
            await asyncio.sleep(0.1)  # the runner is still provisioning and connecting
            snap, ep = snapshot(), endpoint()
        self.load_devices(row.name for row in snap.devices)
        self._client = MqttClient(
            ep,
            self.bridge_id,
            will_topic=self.topics.bridge(self.bridge_id),
            on_message=self._on_message,
            on_connected=self._on_connected,
        )
        await self._client.start()
        try:
            await self._client.subscribe(
                [self.topics.status(), self.topics.config_filter()]
                + [self.topics.presence(d.device_id) for d in self.devices.values()]
            )
            while True:
                await self.publish_once(snapshot())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.period_s)
                self._wake.clear()
        finally:
            await self._final(snapshot())
            await self._client.close()

    async def _final(self, snap: FleetSnapshot | None) -> None:
        """Publish the last states before going offline (a short run ends between periods);
        bounded, as the broker may be going away with the fleet (the embedded one does)."""
        with contextlib.suppress(TimeoutError, TransportError):
            await asyncio.wait_for(self.publish_once(snap), FINAL_PUBLISH_S)

    async def publish_once(self, snap: FleetSnapshot | None) -> None:
        """One round: configs asked for again, departed devices cleared, states that changed."""
        if self._resend:
            self._resend = False
            self._configs.clear()
            self._sent.forget()  # Home Assistant subscribes anew: give it every state
        for oid in sorted(self._stale):
            if await self._publish(self.topics.config(oid), b"", retain=True):
                log.info("removed %s from Home Assistant (no longer in the fleet)", oid)
                self._stale.discard(oid)
        rows = {} if snap is None else {row.name: row for row in snap.devices}
        sem = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(dev: HaDevice) -> None:
            async with sem:
                await self._device_round(dev, rows.get(dev.name))

        await asyncio.gather(*(one(dev) for dev in self.devices.values()))

    async def _device_round(self, dev: HaDevice, row: DeviceRow | None) -> None:
        """A device's config if it is not on the broker as it should be, then its states."""
        hub = self._hubs.get(dev.device_id)
        if dev.device_id not in self._configs or self._configs[dev.device_id] != hub:
            topic = self.topics.config(dev.object_id)
            if not await self._publish(topic, self.config_payload(dev), retain=True):
                return
            self._configs[dev.device_id] = hub
            if not dev.readings:  # a state retained by an earlier run with the owner's key
                await self._publish(self.topics.state(dev.device_id), b"", retain=True)
        if row is None:
            return
        await self._state(self.topics.health(dev.device_id), health_state(row))
        r = self.readings.get(dev.name)
        if dev.readings and r is not None:
            await self._state(self.topics.state(dev.device_id), readings_state(dev, r))
            for event in r.take_tags():
                await self._publish(self.topics.tag(dev.device_id), _json(event), retain=False)

    async def _state(self, topic: str, state: dict[str, Any]) -> None:
        payload = _json(state)
        if self._sent.changed(topic, payload) and await self._publish(topic, payload, retain=True):
            self._sent.payloads[topic] = payload


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
