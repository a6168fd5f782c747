"""The layout of a fleet data directory (``--data DIR``).

    DIR/authority/          fleet authority: authority.key, fleet-root.json, issued.json
    DIR/passphrase          0600, random: unlocks the simulated fleet's keys unattended
                            (real devices take their passphrase from a file or the environment)
    DIR/devices/NAME/       one per device: device.key, device.cert, store.sqlite

Everything a device knows lives in its own directory, so a device can be wiped (its directory
deleted) or moved on its own.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

AUTHORITY = "authority"
DEVICES = "devices"
PASSPHRASE = "passphrase"  # noqa: S105 - a file name, not a secret
STORE = "store.sqlite"


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def authority(self) -> Path:
        return self.root / AUTHORITY

    @property
    def devices(self) -> Path:
        return self.root / DEVICES

    def device(self, name: str) -> Path:
        return self.devices / name

    def store_path(self, name: str) -> Path:
        return self.device(name) / STORE

    def device_names(self) -> list[str]:
        if not self.devices.is_dir():
            return []
        return sorted(p.name for p in self.devices.iterdir() if (p / "device.cert").exists())

    def fleet_passphrase(self, create: bool = False) -> bytes | None:
        """The data dir's own passphrase file; created (0600, 32 random bytes) when asked."""
        path = self.root / PASSPHRASE
        if path.exists():
            return path.read_bytes().rstrip(b"\n")
        if not create:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            value = secrets.token_hex(32).encode()
            os.write(fd, value + b"\n")
        finally:
            os.close(fd)
        return value
