"""Domain-separation tags: every hash and signature input starts with one of these.

Append-only: a tag, once released, keeps its bytes and meaning forever. Each is ASCII ending in
NUL, so no tag is a prefix of another and none can be mistaken for MessagePack.
"""

from __future__ import annotations

READING = b"edgefleet/v1/reading\x00"
HEADER = b"edgefleet/v1/header\x00"
HEADER_HASH = b"edgefleet/v1/header-hash\x00"
CERTIFICATE = b"edgefleet/v1/certificate\x00"
ROTATION = b"edgefleet/v1/key-rotation\x00"
ROTATION_COUNTERSIGN = b"edgefleet/v1/key-rotation-countersign\x00"
REVOCATION = b"edgefleet/v1/revocation\x00"
DEVICE_ID = b"edgefleet/v1/device-id\x00"
KEY_ID = b"edgefleet/v1/key-id\x00"
STORAGE_RECEIPT = b"edgefleet/v1/storage-receipt\x00"
AUDIT = b"edgefleet/v1/audit\x00"
PLACEMENT = b"edgefleet/v1/placement\x00"
BUNDLE_DIGEST = b"edgefleet/v1/bundle-digest\x00"
SEAL_EPHEMERAL = b"edgefleet/v1/seal-ephemeral\x00"
EPOCH = b"edgefleet/v1/epoch\x00"
ENROLL_REQUEST = b"edgefleet/v1/enroll-request\x00"

ALL = (
    READING,
    HEADER,
    HEADER_HASH,
    CERTIFICATE,
    ROTATION,
    ROTATION_COUNTERSIGN,
    REVOCATION,
    DEVICE_ID,
    KEY_ID,
    STORAGE_RECEIPT,
    AUDIT,
    PLACEMENT,
    BUNDLE_DIGEST,
    SEAL_EPHEMERAL,
    EPOCH,
    ENROLL_REQUEST,
)
