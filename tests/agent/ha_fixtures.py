"""Fixed appliances for the Home Assistant golden payloads (tests/agent/golden/ha/*.json).

One device of each kind, plus a private household's fridge whose owner key the bridge lacks;
ids are fixed so the payloads are byte-stable. ``VERSION`` stands for edgefleet's version in the
golden files (it changes with releases, the payloads' shape does not).
"""

from __future__ import annotations

from agent.fleet.ha_discovery import HaDevice

GOLDEN_BRIDGE = "efha-0a1b2c3d-0of1"
GOLDEN_HUB = "hgoldenhub"
VERSION = "@VERSION@"
FLEET_TAG = "0a1b2c3d"


def _id(word: str) -> str:
    return "ef" + (word + "a" * 24)[:24]


GOLDEN_DEVICES = {
    "refrigerator": HaDevice(
        "fridge-1", _id("fridge"), "refrigerator", "ColdCo FR-300", "home-1", FLEET_TAG
    ),
    "washing_machine": HaDevice(
        "washer-1", _id("washer"), "washing_machine", "Spinwell WM-8", "home-1", FLEET_TAG
    ),
    "medical_freezer": HaDevice(
        "freezer-station",
        _id("freezer"),
        "medical_freezer",
        "Polar MF-80",
        "blood-station-north",
        FLEET_TAG,
    ),
    "refrigerator_private": HaDevice(
        "fridge-2",
        _id("private"),
        "refrigerator",
        "ColdCo FR-300",
        "home-2",
        FLEET_TAG,
        private=True,
        readings=False,
    ),
}
