"""`edgefleet run --homeassistant [PREFIX] [--owner-key FILE ...]`: the options of the Home
Assistant bridge (agent/fleet/homeassistant.py), checked before anything starts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from agent.cli.errors import CliError
from agent.config.devices import FleetConfig
from agent.fleet import keystore
from agent.fleet.ha_discovery import DEFAULT_DISCOVERY_PREFIX, HaTopics
from agent.fleet.homeassistant import HomeAssistantBridge
from agent.fleet.runner import FleetRunner, RunOptions
from agent.fleet.sources import simulation
from agent.transport.errors import InvalidNameError
from ledger.sealbox import public_key_of


def add_homeassistant(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--homeassistant",
        nargs="?",
        const=DEFAULT_DISCOVERY_PREFIX,
        metavar="PREFIX",
        help="publish the appliances to Home Assistant by MQTT discovery under PREFIX "
        f"(default {DEFAULT_DISCOVERY_PREFIX}); see docs/HOMEASSISTANT.md",
    )
    p.add_argument(
        "--owner-key",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="with --homeassistant: publish the readings of the private households whose "
        "owner key this is (repeatable); without it they show ledger health only",
    )


def homeassistant_bridge(
    args: argparse.Namespace, cfg: FleetConfig, opts: RunOptions
) -> HomeAssistantBridge | None:
    """The bridge --homeassistant asks for (None without it); taps ``opts.source``."""
    if args.homeassistant is None:
        if args.owner_key:
            raise CliError("--owner-key goes with --homeassistant")
        return None
    if opts.broker == "memory":
        raise CliError("--homeassistant needs an MQTT broker, not --broker memory")
    if opts.broker == "mosquitto-tls":
        raise CliError(
            "--homeassistant with --broker mosquitto-tls: that broker admits only the fleet's "
            "device certificates; use --broker mosquitto or an mqtts:// URL"
        )
    try:
        topics = HaTopics(discovery_prefix=args.homeassistant)
    except InvalidNameError as exc:
        raise CliError(f"--homeassistant: {exc}") from None
    keys = []
    for path in args.owner_key:
        try:
            keys.append(public_key_of(keystore.read_owner_secret(path)))
        except keystore.KeystoreError as exc:
            raise CliError(f"--owner-key: {exc}") from None
    speed = 1.0 if opts.realtime else opts.speed
    bridge = HomeAssistantBridge(
        cfg, opts.data, topics=topics, owner_keys=keys, speed=speed, shard=opts.shard
    )
    opts.source = bridge.tap(opts.source or simulation)
    if bridge.note is not None:
        print(bridge.note, file=sys.stderr)
    return bridge


@contextlib.asynccontextmanager
async def bridge_running(
    bridge: HomeAssistantBridge | None, runner: FleetRunner
) -> AsyncIterator[None]:
    """Run the bridge beside the fleet; stop it (last states, then offline) when the run ends."""
    if bridge is None:
        yield
        return
    task = asyncio.create_task(
        bridge.run(lambda: runner.endpoint, lambda: runner.snapshot() if runner.ready else None),
        name="homeassistant",
    )

    def failed(t: asyncio.Task[None]) -> None:
        # The bridge is what the user asked for: a fleet without it stops, and says why.
        if not t.cancelled() and t.exception() is not None:
            print(f"Home Assistant bridge failed: {t.exception()}", file=sys.stderr)
            runner.request_stop()

    task.add_done_callback(failed)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a failure is raised here, after the fleet stopped cleanly
