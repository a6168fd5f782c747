"""Restore a wiped device from its peers: what `edgefleet restore` runs (docs/RESTORE.md).

The device keeps its identity (``devices/NAME/device.key`` and ``device.cert``) but its store
is gone or empty. ``restore_device`` starts the fleet runner with that device in restore mode
(``RunOptions.restore``): the device learns its published head from its peers' summaries,
fetches its chain (headers and bodies) from whichever peers serve them, verifies every byte
against its own certificate and the fleet root, and commits it; only then does it sign again,
after its published head in the same epoch, or (head out of reach) in a new epoch opened by a
signed epoch record. Nothing is signed before.

By default every device of the data dir runs (the peers serve from their own stores); with
``alone`` only the restored device runs and its peers must be running elsewhere on the same
broker (another ``edgefleet run`` process, or other hosts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

from agent.config.devices import FleetConfig
from agent.device.runtime import DeviceAgent, RestoreError
from agent.fleet.datadir import DataDir
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.gossip import actions as A

PROGRESS_PERIOD_S = 0.2


@dataclass(frozen=True)
class RestoreOutcome:
    name: str
    device_id: str
    result: A.RestoreFinished
    height: int | None  # the device's head when the run stopped
    epoch: int | None
    run: RunResult

    def describe(self) -> str:
        r = self.result
        if r.published_height < 0:
            return f"{self.name}: no peer holds anything of it: it starts a fresh chain"
        head = f"published head at height {r.published_height} (epoch {r.published_epoch})"
        if r.new_epoch:
            text = (
                f"{self.name}: restored heights 0..{r.height} of its {head}; the blocks above "
                f"were out of reach, so it opened epoch {r.epoch} with a signed epoch record: "
                f"its chain continues at height {r.height + 1} in epoch {r.epoch}"
            )
        else:
            text = (
                f"{self.name}: restored 100% of its chain, heights 0..{r.height} ({head}); it "
                f"continues at height {r.height + 1} in epoch {r.epoch}"
            )
        if self.height is not None and self.height > r.height:
            text += f"; now at height {self.height}"
        return text


def resolve_device(data: DataDir, cfg: FleetConfig, who: str) -> str:
    """A device name from a name or a device id; RestoreError if it is neither."""
    names = {d.name for d in cfg.devices}
    if who in names:
        return who
    path = data.root / "fleet.json"
    ids: dict[str, str] = json.loads(path.read_text()).get("devices", {}) if path.exists() else {}
    for name, dev_id in ids.items():
        if dev_id == who and name in names:
            return name
    raise RestoreError(f"{who!r} is neither a device name nor a device id of fleet {cfg.name}")


def check_restorable(data: DataDir, name: str) -> None:
    """The identity exists and the store is missing or empty."""
    ddir = data.device(name)
    if not (ddir / "device.key").exists() or not (ddir / "device.cert").exists():
        raise RestoreError(
            f"{name}: no identity in {ddir} (device.key, device.cert): a device with a new "
            "identity is a new device and starts a fresh chain"
        )


async def restore_device(
    cfg: FleetConfig,
    opts: RunOptions,
    name: str,
    *,
    alone: bool = False,
    progress: Callable[[str], None] | None = None,
    runner_ready: Callable[[FleetRunner], object] | None = None,
) -> RestoreOutcome:
    """Run the fleet with ``name`` restoring (and only ``name`` with ``alone``); report."""
    data = DataDir(opts.data)
    check_restorable(data, name)
    opts = dataclasses.replace(opts, restore=(name,), only=(name,) if alone else ())
    runner = FleetRunner(cfg, opts)
    if runner_ready is not None:
        runner_ready(runner)
    run = asyncio.create_task(runner.run())
    watcher = asyncio.create_task(_watch(runner, name, progress or (lambda _: None)))
    try:
        result = await run
    finally:
        watcher.cancel()
    agent = result.devices[name]
    outcome = agent.restore_result
    if not isinstance(outcome, A.RestoreFinished):
        raise RestoreError(f"{name}: the restore did not finish")
    head = agent.store.head()
    return RestoreOutcome(
        name,
        agent.device_id,
        outcome,
        None if head is None else head.header.height,
        None if head is None else head.header.epoch,
        result,
    )


async def _watch(runner: FleetRunner, name: str, say: Callable[[str], None]) -> None:
    """Print the restore's progress when it changes (blocks restored / published head)."""
    last = ""
    while True:
        agent = runner.agents.get(name)
        line = "" if agent is None else _progress(agent)
        if line and line != last:
            say(line)
            last = line
        await asyncio.sleep(PROGRESS_PERIOD_S)


def _progress(agent: DeviceAgent) -> str:
    state = agent.node.restore_state()
    if state is None:
        return ""
    if state.phase.value == "discover":
        return (
            f"{agent.name}: asking its peers for its published head ({len(state.claims)} answered)"
        )
    if state.phase.value == "fetch":
        return (
            f"{agent.name}: restored {state.committed_height + 1} of "
            f"{state.target_height + 1} blocks (published head: height {state.target_height})"
        )
    if state.phase.value == "signing":
        return f"{agent.name}: head out of reach: opening a new epoch"
    return ""
