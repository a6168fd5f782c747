"""One process per device: the run holds an exclusive lock on each of its devices' directories.

Two `edgefleet run` on one data dir (started twice by mistake, or `run --device fridge-1` beside
a run of the whole file) had each device signing in both processes: the second ran to the end
and said "gossip converged" while the first's devices failed on the store's unique sequence
numbers. The lock is ``flock`` on the device's directory (``DIR/devices/NAME``): no file is
added, shards of one data dir (disjoint devices) do not meet, and the kernel drops it when the
process ends, killed or not. Commands that only read a data dir (status, verify, trace, web)
take no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.errors import AgentError

__all__ = ["DeviceInUse", "lock_device"]


class DeviceInUse(AgentError, code="device-in-use"):
    """Another process runs this device (its directory is locked)."""


def lock_device(device_dir: Path) -> int:
    """Lock ``device_dir`` for this process; returns the descriptor to ``os.close`` when the
    device has stopped. Raises DeviceInUse when another process holds it."""
    fd = os.open(device_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DeviceInUse(
            f"{device_dir}: in use by another edgefleet run on this data dir (one process per "
            "device): stop that run first, or run other devices (--device NAME)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd
