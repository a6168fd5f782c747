"""agent/web/verify.html, the zero-install verifier, against ledger/bundle.py in headless Chromium.

The page must reach ``verify_bundle``'s verdict on every bundle: the same result, the same failure
code and the same message (what `edgefleet verify-bundle` prints), the same subject, devices and
readings. Bundles come from tests/ledger/test_bundle.py's realistic fleet (three devices, a key
rotation, a revocation), its document vector and a bundle of private readings; tampered ones are
named mutations (a bit of a reading, of a signature, of a proof hash, the digest, a wrong or
swapped fleet root, trailing garbage...) and a sweep of single-bit flips across the whole file.
Sections the page does not know (a newer format) fail closed with a message naming the CLI.

The browser tests are marked ``browser``: without Chromium they skip locally and fail under CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.provenance.analysis import WORDS
from ledger import sealbox
from ledger.bundle import (
    FORKED,
    MAX_BLOCK_ENTRY,
    MAX_BLOCKS,
    MAX_BUNDLE_BYTES,
    MAX_CREDENTIAL,
    MAX_DEVICES,
    MAX_FORK_EVIDENCE,
    MAX_FORKS,
    MAX_HISTORY_PROOF,
    MAX_READING_PROOF,
    MAX_REVOCATIONS,
    MAX_ROTATIONS,
    MAX_SUBJECT,
    MAX_TOTAL_READINGS,
    REVOKED,
    BundleBuilder,
    BundleError,
    verify_bundle,
)
from ledger.certs import FleetRoots, sign_revocation
from ledger.chain import ChainWriter
from ledger.evidence import make_evidence
from ledger.identity import PublicKey, key_id_for
from ledger.store import Store
from tests.ledger.conftest import NOW_MS, sample_readings, seal_chain_impl
from tests.ledger.test_bundle import (
    CREATED_MS,
    DIGEST_DOMAIN,
    SUBJECT,
    Fleet,
    build_vector,
    certify,
    data,  # noqa: F401 (a fixture)
    dec,
    enc,
    explode,
    fleet,  # noqa: F401 (a fixture)
    forge,
    fork_wire,  # noqa: F401 (a fixture)
    forked,  # noqa: F401 (a fixture)
    implode,
    key,
)

from . import chromium
from .chromium import Chromium, Page, b64, require_chromium

PAGE = Path(__file__).resolve().parents[2] / "agent" / "web" / "verify.html"
L25519 = 2**252 + 27742317777372353535851937790883648493  # the order of Ed25519's base point
UNKNOWN = re.compile(
    r"^this bundle has sections this page does not know \(.+\): use edgefleet verify-bundle$"
)
# JavaScript helpers evaluated in the page; base64 in, plain JSON out.
UNB64 = "(s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0))"
VERIFY_ALL = f"""async (items) => {{
  const unb64 = {UNB64};
  const out = [];
  for (const [bundle, roots] of items) {{
    out.push(await edgefleet.verifyBundle(unb64(bundle), roots === null ? null : roots.map(unb64)));
  }}
  return out;
}}"""
FLIP_ALL = f"""async (bundle, flips) => {{
  const unb64 = {UNB64};
  const out = [];
  for (const [pos, mask] of flips) {{
    const d = unb64(bundle);
    d[pos] ^= mask;
    const r = await edgefleet.verifyBundle(d, null);
    out.push({{ok: r.ok, error: r.error, code: r.code}});
  }}
  return out;
}}"""


# --- the reference verdict, in the page's shape ------------------------------------------------


def python_verdict(bundle: bytes, roots: list[bytes] | None = None) -> dict[str, Any]:
    trusted = None if roots is None else FleetRoots.of(*(PublicKey(r) for r in roots))
    try:
        vb = verify_bundle(bundle, roots=trusted)
    except BundleError as exc:
        return {"ok": False, "error": str(exc), "code": exc.cause}
    per_device: dict[str, int] = {}
    readings = []
    for r in vb.readings:
        per_device[r.device_id] = per_device.get(r.device_id, 0) + 1
        rd = r.reading.reading
        private = r.reading.private
        readings.append(
            {
                "device_id": r.device_id,
                "height": str(r.height),
                "index": str(r.index),
                "seq": str(rd.seq),
                "time_ms": str(rd.time_ms),
                "private": private,
                "sensor": None if private else rd.sensor,
                "value": None if private else str(rd.value),
                "tag": rd.tag,
                "text": None if private else rd.text,
                "flags": [f.describe() for f in vb.flags_of(r)],
            }
        )
    flagged = Counter(f for r in vb.readings for f in vb.flags_of(r))
    carried = Counter(f.kind for d in vb.devices.values() for f in d.flags)
    return {
        "ok": True,
        "error": None,
        "code": None,
        "subject": vb.subject,
        "created_ms": str(vb.created_ms),
        "root_key_id": vb.root_key_id.hex(),
        "root_public": vb.root_public.hex(),
        "root_pinned": roots is not None,
        "devices": [
            {
                "device_id": dev_id,
                "kind": d.certificate.kind,
                "model": d.certificate.model,
                "site": d.certificate.site,
                "head_height": str(d.head.header.height),
                "head_hash": d.head.hash.hex(),
                "readings": per_device[dev_id],
            }
            for dev_id, d in vb.devices.items()
        ],
        "readings": readings,
        # what `edgefleet verify-bundle --json` says of flags (agent/cli/bundle.py), ints as text
        "format": vb.format,
        "verdict": WORDS[vb.flags[0].kind] if vb.flags else "OK",
        "flags": [
            {
                "word": WORDS[f.kind],
                "kind": f.kind,
                "device_id": f.device_id,
                "key_id": None if f.key_id is None else f.key_id.hex(),
                "height": str(f.height),
                "header_hashes": [h.hex() for h in f.hashes],
                "reason": f.reason if f.kind == REVOKED else None,
                "text": f.describe(),
                "readings": flagged[f],
            }
            for f in vb.flags
        ],
        "fork_evidence": carried[FORKED],
        "revocations": carried[REVOKED],
    }


def agrees(res: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The page's verdict is the reference's, or it refused a section it does not know (another
    format byte, more fields than this format has) that the reference refuses too."""
    if res["code"] == "unknown-sections":
        return not expected["ok"] and UNKNOWN.match(res["error"]) is not None
    return page_shape(res) == expected


def page_shape(res: dict[str, Any]) -> dict[str, Any]:
    """The page's result with only what ``python_verdict`` reports."""
    if not res["ok"]:
        return {k: res[k] for k in ("ok", "error", "code")}
    out = {k: res[k] for k in ("ok", "error", "code", "subject", "created_ms", "root_key_id")}
    out |= {k: res[k] for k in ("root_public", "root_pinned", "devices")}
    out |= {k: res[k] for k in ("format", "verdict", "flags", "fork_evidence", "revocations")}
    out["readings"] = [{k: v for k, v in r.items() if k != "status"} for r in res["readings"]]
    return out


# --- bundles -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_bundle(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> bytes:  # noqa: F811
    """Private readings (format 2): the page proves them without opening them."""
    owner_pk = sealbox.public_key_of(hashlib.sha256(b"edgefleet-tests/owner").digest())
    dk = key("private-device")
    did = dk.public.device_id
    store = Store(tmp_path_factory.mktemp("private") / "private.db")
    writer = ChainWriter(store, dk, did, owner_x25519=owner_pk)
    for blk in range(2):
        for j in range(3):
            writer.record(NOW_MS + 10 * blk + j, "temp_mc", 4_000 + j, SUBJECT if j == 1 else None)
        writer.seal()
    blocks = list(store.blocks())
    store.close()
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(
        did, [certify(fleet.authority, dk, 7).wire], blocks[1].header, [blocks[0].header.hash]
    )
    for block in blocks:
        b.add_reading(did, block, 1)
    return b.build()


def reseal(
    top: list[Any], extra_top: tuple[Any, ...] = (), extra_device: tuple[Any, ...] = ()
) -> bytes:
    """``implode`` with fields appended to the top level or to every device entry (what a newer
    format might carry), the digest made right."""
    devices = [enc([*d[:4], [enc(b) for b in d[4]], *extra_device]) for d in top[5]]
    prefix = enc([*top[:5], devices, *extra_top, bytes(32)])[:-34]
    return prefix + enc(hashlib.sha256(DIGEST_DOMAIN + prefix).digest())


def flip_inside(bundle: bytes, part: bytes, offset: int) -> bytes:
    """``bundle`` with the low bit of byte ``offset`` of ``part`` (found once in it) flipped."""
    at = bundle.index(part)
    assert bundle.count(part) == 1
    pos = at + (offset if offset >= 0 else len(part) + offset)
    return bundle[:pos] + bytes([bundle[pos] ^ 1]) + bundle[pos + 1 :]


def named_tampering(fleet: Fleet, data: bytes) -> Iterator[tuple[str, bytes, list[bytes] | None]]:  # noqa: F811
    root = [fleet.authority.public.raw]
    dev = fleet.stored
    block = dev.chain[0]
    reading = block.readings[0].wire
    yield "valid, pinned", data, root
    yield "valid, unpinned", data, None
    yield "reading value bit", flip_inside(data, reading, len(reading) - 70), root
    yield "reading signature bit", flip_inside(data, reading, -1), root
    yield "header signature bit", flip_inside(data, block.header.wire, -1), root
    cert = dev.credentials[0]
    yield "certificate signature bit", flip_inside(data, cert, -1), root
    yield "certificate body bit", flip_inside(data, cert, 40), root
    # Proof hashes may occur elsewhere too (a prev_hash): flipped in place, the digest redone.
    top = explode(data)
    first = top[5][0][4][0]  # the first block entry of the first device: it has a history proof
    first[1][0] = bytes([first[1][0][0] ^ 4]) + first[1][0][1:]
    yield "history proof hash bit", implode(top), root
    top = explode(data)
    first = top[5][0][4][0]
    first[2][0][2][0] = first[2][0][2][0][:-1] + bytes([first[2][0][2][0][-1] ^ 1])
    yield "reading proof hash bit", implode(top), root
    yield "digest bit", data[:-1] + bytes([data[-1] ^ 0x80]), root
    yield "trailing garbage", data + b"\x00", root
    yield "truncated", data[:-1], root
    yield "empty file", b"", root
    yield "not a bundle", b'{"format": "edgefleet-root/1"}', root
    yield "wrong fleet root", data, [key("rogue-authority").public.raw]
    swapped = explode(data)
    swapped[4] = key("rogue-authority").public.raw
    yield "root swapped inside", implode(swapped), None
    relabelled = explode(data)
    relabelled[2] = SUBJECT.replace("3", "4")
    yield "subject changed", implode(relabelled)[:-34] + data[-34:], None
    bad_subject = explode(data)
    bad_subject[2] = "carton\u2028"
    yield "subject not printable", implode(bad_subject), None
    # Subjects that are not UTF-8, each error as Python's decoder names it (digest made right).
    start = data.index(SUBJECT.encode())
    for bad in (b"\xff", b"\xc3(", b"\xe2\x82(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"):
        raw = data[:start] + SUBJECT.encode()[: -len(bad)] + bad + data[start + len(SUBJECT) :]
        resealed = raw[:-34] + enc(hashlib.sha256(DIGEST_DOMAIN + raw[:-34]).digest())
        yield f"subject ending {bad!r}", resealed, None
    # U+1FAE8 was assigned in Unicode 15.0: unassigned (Cn) to Python 3.11, a symbol to the
    # browser; the page judges by Python's table (docs/BUNDLE.md "Printable").
    newer = explode(data)
    newer[2] = "carton \U0001fae8"
    yield "subject of a later Unicode", implode(newer), None
    small = fleet.small
    revoked = explode(data)
    entry = next(d for d in revoked[5] if small.device_id.encode() in d[0])
    entry[2] = [sign_revocation(fleet.authority, small.device_id, None, 1, "stolen", NOW_MS)]
    yield "revoked device", implode(revoked), root
    swap = explode(data)
    swap[5][0], swap[5][1] = swap[5][1], swap[5][0]
    yield "devices out of order", implode(swap), root
    dup = explode(data)
    dup[5][0][4][0][2].append(dup[5][0][4][0][2][-1])
    yield "reading repeated", implode(dup), root
    above = explode(data)
    above[5][0][4].append(above[5][0][4][-1])
    yield "block repeated", implode(above), root


# Values put where the format expects something else: every type MessagePack has, edge integers,
# empty, long, non-ASCII and non-printable strings, hashes and key ids of zeros.
ALTERNATIVES: tuple[Any, ...] = (
    None,
    True,
    0,
    1,
    -1,
    2**63,
    2**64 - 1,
    -(2**63),
    "x",
    "",
    "é" * 40,
    "a\u2028",
    b"",
    bytes(8),
    bytes(32),
    [],
    [b"\x00"],
    1.5,
    {},
    {"k": 1},
)


def implode_any(top: list[Any]) -> bytes:
    """``implode`` that also carries fields which are not what the format says."""
    devices = top[5]
    if isinstance(devices, list):
        devices = [
            enc([*d[:4], [enc(b) for b in d[4]] if isinstance(d[4], list) else d[4]])
            if isinstance(d, list)
            else d
            for d in devices
        ]
    prefix = enc([*top[:5], devices, bytes(32)])[:-34]
    return prefix + enc(hashlib.sha256(DIGEST_DOMAIN + prefix).digest())


def with_field(wire: bytes, i: int, value: Any, body: bool = True) -> bytes:
    """A signed wire with field ``i`` of its body (or of its envelope) replaced."""
    env = dec(wire)
    if body:
        fields = dec(env[0])
        fields[i] = value
        env[0] = enc(fields)
    else:
        env[i] = value
    return enc(env)


def structural_variants(data: bytes) -> Iterator[tuple[str, bytes]]:  # noqa: F811
    """Each field of each level, and of each kind of signed record, replaced by each of
    ``ALTERNATIVES``: the bundle re-sealed so that the decoders' checks are what fails."""
    top = explode(data)
    rot_dev = next(k for k, d in enumerate(top[5]) if d[1])

    def device(t: list[Any]) -> list[Any]:
        return t[5][rot_dev]  # type: ignore[no-any-return]

    setters: list[tuple[str, Any]] = []
    for i in range(2, 6):
        setters.append((f"top[{i}]", lambda t, v, i=i: t.__setitem__(i, v)))
    for i in range(5):
        setters.append((f"device[{i}]", lambda t, v, i=i: device(t).__setitem__(i, v)))
    for i in range(3):
        setters.append((f"block[{i}]", lambda t, v, i=i: device(t)[4][0].__setitem__(i, v)))
    for i in range(3):
        setters.append(
            (f"reading entry[{i}]", lambda t, v, i=i: device(t)[4][0][2][0].__setitem__(i, v))
        )

    def record(name: str, get: Any, put: Any, n: int, body: bool = True) -> None:
        for i in range(n):
            setters.append(
                (f"{name}[{i}]", lambda t, v, i=i: put(t, with_field(get(t), i, v, body)))
            )

    def put_reading(t: list[Any], w: bytes) -> None:
        device(t)[4][0][2][0][1] = w

    def put_header(t: list[Any], w: bytes) -> None:
        device(t)[4][0][0] = w

    def put_device_field(k: int) -> Any:
        return lambda t, w: device(t).__setitem__(k, w)

    def put_first(k: int) -> Any:
        return lambda t, w: device(t)[k].__setitem__(0, w)

    record("reading body", lambda t: device(t)[4][0][2][0][1], put_reading, 9)
    record("reading envelope", lambda t: device(t)[4][0][2][0][1], put_reading, 2, body=False)
    record("header body", lambda t: device(t)[4][0][0], put_header, 11)
    record("head body", lambda t: device(t)[3], put_device_field(3), 11)
    record("certificate body", lambda t: device(t)[0], put_device_field(0), 11)
    record("rotation body", lambda t: device(t)[1][0], put_first(1), 7)
    record("rotation wire", lambda t: device(t)[1][0], put_first(1), 3, body=False)
    record("revocation body", lambda t: device(t)[2][0], put_first(2), 7)
    for name, put in setters:
        for alt in ALTERNATIVES:
            t = explode(data)
            put(t, alt)
            yield f"{name} = {alt!r}", implode_any(t)


# --- static checks (no browser) -----------------------------------------------------------------


def test_page_is_one_file_that_fetches_nothing() -> None:
    html = PAGE.read_text()
    assert "default-src 'none'" in html  # the CSP forbids every fetch, script and style source
    for needle in ("src=", "href=", "fetch(", "XMLHttpRequest", "import(", "WebSocket", "http"):
        assert needle not in html.replace("http-equiv", ""), needle


def nonprintable_ranges() -> str:
    out, start = [], None
    for cp in range(0x110000):
        bad = not chr(cp).isprintable()
        if bad and start is None:
            start = cp
        elif not bad and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return ",".join(f"{a:x}" if a == b else f"{a:x}-{b:x}" for a, b in out)


def test_printable_table_is_pythons() -> None:
    """The page judges a subject by Python's ``str.isprintable`` (docs/BUNDLE.md), from a table
    embedded at build time, not by the browser's newer Unicode database."""
    html = PAGE.read_text()
    m = re.search(r'/\* nonprintable:begin \*/\nconst NONPRINTABLE_RANGES = "([^"]*)";', html)
    assert m is not None
    assert m.group(1) == nonprintable_ranges(), "regenerate the table in agent/web/verify.html"


def test_missing_chromium_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chromium.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        require_chromium()


# --- in the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    exe = require_chromium()
    chromium = Chromium.start(exe, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def page(browser: Chromium) -> Iterator[Page]:
    tab = browser.open(PAGE.as_uri())
    yield tab
    tab.close()


@pytest.mark.browser
def test_limits_are_the_reference_limits(page: Page) -> None:
    assert page.evaluate("edgefleet.limits") == {
        "MAX_BUNDLE_BYTES": MAX_BUNDLE_BYTES,
        "MAX_DEVICES": MAX_DEVICES,
        "MAX_BLOCKS": MAX_BLOCKS,
        "MAX_TOTAL_READINGS": MAX_TOTAL_READINGS,
        "MAX_ROTATIONS": MAX_ROTATIONS,
        "MAX_REVOCATIONS": MAX_REVOCATIONS,
        "MAX_SUBJECT": MAX_SUBJECT,
        "MAX_CREDENTIAL": MAX_CREDENTIAL,
        "MAX_HISTORY_PROOF": MAX_HISTORY_PROOF,
        "MAX_READING_PROOF": MAX_READING_PROOF,
        "MAX_BLOCK_ENTRY": MAX_BLOCK_ENTRY,
        "MAX_FORKS": MAX_FORKS,
        "MAX_FORK_EVIDENCE": MAX_FORK_EVIDENCE,
    }


@pytest.mark.browser
def test_valid_bundles_verify_as_the_reference_does(
    page: Page,
    fleet: Fleet,  # noqa: F811
    data: bytes,  # noqa: F811
    private_bundle: bytes,
) -> None:
    root = [fleet.authority.public.raw]
    cases = [(data, root), (data, None), (build_vector(), None), (private_bundle, root)]
    items = [[b64(b), None if r is None else [b64(x) for x in r]] for b, r in cases]
    got = page.call(VERIFY_ALL, items)
    for (bundle, roots), res in zip(cases, got, strict=True):
        expected = python_verdict(bundle, roots)
        assert expected["ok"], expected
        assert page_shape(res) == expected
    assert len(got[0]["readings"]) == 23
    assert all(r["private"] and r["sensor"] is None for r in got[3]["readings"])


@pytest.mark.browser
def test_tampered_bundles_fail_as_the_reference_does(
    page: Page,
    fleet: Fleet,  # noqa: F811
    data: bytes,  # noqa: F811
) -> None:
    cases = list(named_tampering(fleet, data))
    items = [[b64(b), None if r is None else [b64(x) for x in r]] for _, b, r in cases]
    got = page.call(VERIFY_ALL, items)
    codes = {}
    for (name, bundle, roots), res in zip(cases, got, strict=True):
        expected = python_verdict(bundle, roots)
        assert page_shape(res) == expected, name
        codes[name] = res["code"]
    # The mutations reach the checks they were made for (not only some decode error).
    assert codes["reading value bit"] == "bad-proof"  # the leaf changes before the signature
    assert codes["header signature bit"] == "bad-signature"
    assert codes["certificate signature bit"] == "bad-signature"
    assert codes["history proof hash bit"] == "bad-proof"
    assert codes["wrong fleet root"] == "bad-certificate"
    assert codes["revoked device"] == "revoked"
    assert codes["trailing garbage"] == "decode"
    assert codes["subject changed"] == "bad-bundle"


@pytest.mark.browser
def test_single_bit_flips_across_the_file_fail_as_the_reference_does(
    page: Page,
    data: bytes,  # noqa: F811
) -> None:
    """A seeded sample of byte positions, one flipped bit each: the same message every time."""
    rng = random.Random(20)
    positions = sorted(rng.sample(range(len(data)), 150))
    flips = [[pos, 1 << rng.randrange(8)] for pos in positions]
    got = page.call(FLIP_ALL, b64(data), flips)
    seen = set()
    for (pos, mask), res in zip(flips, got, strict=True):
        bad = bytearray(data)
        bad[pos] ^= mask
        expected = python_verdict(bytes(bad))
        assert agrees(res, expected), f"byte {pos} ^ {mask:#04x}: {res}"
        seen.add(expected["code"])
    assert {"decode", "bad-proof", "bad-signature", "bad-bundle"} <= seen


@pytest.mark.browser
def test_sections_of_a_newer_format_fail_closed(
    page: Page,
    data: bytes,  # noqa: F811
) -> None:
    top = explode(data)
    newer_format = data[:18] + b"\x03" + data[19:]
    cases = [
        reseal(top, extra_top=([b"fork evidence"],)),
        reseal(top, extra_device=([b"fork evidence"], [b"revocation list"])),
        newer_format,
    ]
    got = page.call(VERIFY_ALL, [[b64(b), None] for b in cases])
    for bundle, res in zip(cases, got, strict=True):
        assert not python_verdict(bundle)["ok"]  # this format's reference refuses them too
        assert (res["ok"], res["code"]) == (False, "unknown-sections")
        assert UNKNOWN.match(res["error"]), res["error"]


# --- format 2: fork evidence and flagged keys -----------------------------------------------


def format_2_cases(
    fleet: Fleet,  # noqa: F811
    forked: bytes,  # noqa: F811
    fork_wire: bytes,  # noqa: F811
) -> Iterator[tuple[str, bytes]]:
    """Format-2 bundles the test makes: a forked custodian, a revoked device, a key used after
    its rotation, and their tamperings (every one re-digested, as anyone can)."""
    yield "forked custodian", forked
    dev = fleet.small
    revocation = sign_revocation(fleet.authority, dev.device_id, None, 1, "stolen", NOW_MS)
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(dev.device_id, [*dev.credentials, revocation], dev.head, dev.hashes())
    b.add_reading(dev.device_id, dev.chain[0], 0)
    yield "revoked head, reading below it", b.build()
    b.add_reading(dev.device_id, dev.chain[1], 0)
    yield "revoked head and its reading", b.build()
    rot = fleet.rotating
    chain = seal_chain_impl(rot.key, sample_readings(rot.device_id, (2, 2, 2)))
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(
        rot.device_id, rot.credentials[:2], chain[2].header, [x.header.hash for x in chain[:2]]
    )
    for height in range(3):
        b.add_reading(rot.device_id, chain[height], 0)
    rotated = b.build()
    yield "rotated-away key", rotated

    top = explode(forked)
    for d in top[5]:
        d[5] = []
    yield "fork evidence stripped", implode(top)
    top = explode(forked)
    for d in top[5]:
        d[5] = [] if d[5] else [fork_wire]
    yield "fork evidence misplaced", implode(top)
    top = explode(forked)
    next(d for d in top[5] if d[5])[5] *= 2
    yield "fork evidence repeated", implode(top)
    old = rot.chain[1].header
    stale = make_evidence(rot.credentials[0], (), old, forge(old, rot.key)).encode()
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(rot.device_id, rot.credentials, rot.head, rot.hashes(), forks=[stale])
    b.add_reading(rot.device_id, rot.chain[3], 0)
    top = explode(b.build())
    top[1] = 2
    top[5][0].append([stale])
    yield "fork evidence unused", implode(top)
    top = explode(rotated)
    top[1] = 1
    del top[5][0][5]
    yield "rotated-away key as format 1", implode(top)
    top = explode(forked)
    top[1] = 1
    yield "format 2 entries under format 1", implode(top)
    yield "format 1 entries under format 2", forked[:18] + b"\x02" + forked[19:]
    start = forked.index(fork_wire)
    for offset in (0, 3, 20, 150, len(fork_wire) // 2, len(fork_wire) - 70, len(fork_wire) - 1):
        mutated = bytearray(forked[:-34])
        mutated[start + offset] ^= 0x01
        prefix = bytes(mutated)
        yield (
            f"fork evidence byte {offset}",
            prefix + enc(hashlib.sha256(DIGEST_DOMAIN + prefix).digest()),
        )


@pytest.mark.browser
def test_format_2_bundles_verify_and_flag_as_the_reference_does(
    page: Page,
    fleet: Fleet,  # noqa: F811
    forked: bytes,  # noqa: F811
    fork_wire: bytes,  # noqa: F811
) -> None:
    cases = list(format_2_cases(fleet, forked, fork_wire))
    root = [b64(fleet.authority.public.raw)]
    got = page.call(VERIFY_ALL, [[b64(b), root] for _, b in cases])
    results = {}
    for (name, bundle), res in zip(cases, got, strict=True):
        expected = python_verdict(bundle, [fleet.authority.public.raw])
        assert page_shape(res) == expected, name
        results[name] = res
    # The forked custodian turns the verdict: every reading its key signed is flagged.
    fork = results["forked custodian"]
    assert (fork["ok"], fork["format"], fork["verdict"]) == (True, 2, "FORKED")
    small = fleet.small.device_id
    flagged = {r["device_id"] for r in fork["readings"] if r["flags"]}
    assert flagged == {small}
    assert fork["flags"][0]["text"].startswith(f"device {small} forked: key ")
    assert results["revoked head, reading below it"]["verdict"] == "OK"
    assert results["revoked head and its reading"]["verdict"] == "REVOKED"
    assert results["rotated-away key"]["verdict"] == "ROTATED-AWAY"
    stripped = results["fork evidence stripped"]
    assert (stripped["ok"], stripped["verdict"], stripped["flags"]) == (True, "OK", [])
    # Tampered evidence fails, and for the reasons the reference gives.
    codes = {n: r["code"] for n, r in results.items() if not r["ok"]}
    assert codes["fork evidence misplaced"] == "bad-chain"
    assert codes["rotated-away key as format 1"] == "verify"
    assert {codes[f"fork evidence byte {o}"] for o in (20, len(fork_wire) - 1)} >= {"bad-signature"}
    assert len([n for n in codes if n.startswith("fork evidence byte")]) == 7


@pytest.mark.browser
def test_a_forked_custodian_is_shown_to_the_user(
    page: Page,
    tmp_path: Path,
    fleet: Fleet,  # noqa: F811
    forked: bytes,  # noqa: F811
) -> None:
    bundle = tmp_path / "forked.bundle"
    bundle.write_bytes(forked)
    shown = pick(page, bundle, root_file(tmp_path / "fleet-root.json", fleet.authority.public.raw))
    res = page.evaluate("edgefleet.last")
    assert res["ok"] and res["verdict"] == "FORKED"
    assert shown["cls"] == "bad"
    assert shown["verdict"].startswith("FORKED: the bundle verifies, but 1 flagged key(s)")
    flags_shown = page.evaluate(
        "[document.getElementById('flags-section').hidden,"
        " document.getElementById('flags').tBodies[0].rows[0].cells[1].textContent]"
    )
    assert flags_shown == [False, res["flags"][0]["text"]]
    flagged = sum(1 for r in res["readings"] if r["flags"])
    assert flagged > 0
    assert sum(1 for row in shown["rows"] if row[6] == "⚠ flagged key") == flagged
    keep(page, tmp_path, "forked-custodian")


def root_file(path: Path, public: bytes) -> Path:
    """A fleet-root.json as agent/fleet/keystore.py writes it."""
    pk = PublicKey(public)
    doc = {"format": "edgefleet-root/1", "public": pk.hex(), "key_id": pk.key_id.hex()}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def keep(page: Page, tmp_path: Path, name: str) -> None:
    """A screenshot of the page in the test's ``tmp_path``, and in ``$EDGEFLEET_ARTEFACTS`` when
    set (a CI job can upload that directory)."""
    page.screenshot(tmp_path / name)
    if os.environ.get("EDGEFLEET_ARTEFACTS"):
        out = Path(os.environ["EDGEFLEET_ARTEFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / name, out / name)


def pick(page: Page, bundle: Path, root: Path | None = None) -> dict[str, Any]:
    """Choose the files as a user would, wait for the verdict, return what the page shows."""
    # Cleared first: choosing the file an input already holds fires no change event.
    page.evaluate(
        "document.body.dataset.state = 'picking'; "
        "for (const i of document.querySelectorAll('input[type=file]')) i.value = ''"
    )
    if root is not None:
        page.set_files("#root-input", root)
        page.wait_for("document.body.dataset.state === 'done'")
        page.evaluate("document.body.dataset.state = 'picking'")
    page.set_files("#bundle-input", bundle)
    page.wait_for("document.body.dataset.state === 'done'")
    shown: dict[str, Any] = page.evaluate(
        """({
        verdict: document.getElementById('verdict').firstChild.textContent,
        cls: document.getElementById('verdict').className,
        pin: document.getElementById('root-pin').textContent,
        subject: document.getElementById('subject').textContent,
        title: document.getElementById('timeline-title').textContent,
        rows: [...document.querySelectorAll('#timeline tbody tr')].map(
          (tr) => [...tr.cells].map((td) => td.textContent)),
        devices: document.querySelectorAll('#devices tbody tr').length,
      })"""
    )
    return shown


@pytest.mark.browser
def test_a_user_picks_the_files_and_reads_the_verdict_and_timeline(
    page: Page,
    fleet: Fleet,  # noqa: F811
    data: bytes,  # noqa: F811
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "carton.bundle"
    bundle.write_bytes(data)
    root = root_file(tmp_path / "fleet-root.json", fleet.authority.public.raw)
    shown = pick(page, bundle, root)
    keep(page, tmp_path, "verify-ok.png")
    assert (shown["verdict"], shown["cls"]) == ("OK, the bundle verifies", "ok")
    assert shown["pin"] == "pinned by fleet-root.json"
    assert shown["subject"] == SUBJECT
    assert shown["devices"] == 3
    vb = verify_bundle(data, roots=fleet.roots)
    assert shown["title"] == f"Timeline of proved readings ({len(vb.readings)})"
    ordered = sorted(vb.readings, key=lambda r: r.reading.reading.time_ms)
    assert [row[1] for row in shown["rows"]] == [r.device_id for r in ordered]
    assert [row[3] for row in shown["rows"]] == [str(r.reading.reading.value) for r in ordered]
    assert [row[4] for row in shown["rows"]] == [r.reading.reading.tag or "" for r in ordered]
    assert {row[6] for row in shown["rows"]} == {"✓ included and signed"}

    # The same page, a tampered bundle: the CLI's words, and the readings checked before it.
    tampered = tmp_path / "tampered.bundle"
    reading = fleet.small.chain[1].readings[0].wire
    tampered.write_bytes(flip_inside(data, reading, -1))
    shown = pick(page, tampered)
    keep(page, tmp_path, "verify-failed.png")
    expected = python_verdict(tampered.read_bytes(), [fleet.authority.public.raw])
    assert shown["verdict"] == f"bundle tampered.bundle does NOT verify: {expected['error']}"
    assert shown["cls"] == "bad"
    assert shown["title"].startswith("Readings checked before the failure")
    failed = [row for row in shown["rows"] if row[6] != "✓ included and signed"]
    assert len(failed) == 1
    assert (failed[0][1], failed[0][5], failed[0][6]) == (
        fleet.small.device_id,
        "1 / 0",
        f"✗ failed ({expected['code']})",
    )
    assert shown["devices"] == 0  # devices are reported only for a bundle that verifies

    # A root the bundle does not chain to.
    rogue = root_file(tmp_path / "rogue-root.json", key("rogue-authority").public.raw)
    shown = pick(page, bundle, rogue)
    expected = python_verdict(data, [key("rogue-authority").public.raw])
    assert shown["verdict"] == f"bundle carton.bundle does NOT verify: {expected['error']}"

    # A root file that is not one: said so, as the CLI says of a malformed --root-key.
    broken = tmp_path / "broken-root.json"
    broken.write_text('{"format": "edgefleet-root/1", "public": "abc"}')
    shown = pick(page, bundle, broken)
    assert shown["verdict"].startswith("broken-root.json: not a fleet root file (")
    assert shown["cls"] == "bad"


@pytest.mark.browser
def test_every_bit_flip_and_truncation_of_the_document_vector(page: Page) -> None:
    """docs/BUNDLE.md's vector, exhaustively: each byte with one bit flipped (the bit varies
    with the position), each truncation, and a few extensions."""
    vector = build_vector()
    flips = [[pos, 1 << (pos % 8)] for pos in range(len(vector))]
    got = page.call(FLIP_ALL, b64(vector), flips)
    for (pos, mask), res in zip(flips, got, strict=True):
        bad = bytearray(vector)
        bad[pos] ^= mask
        assert agrees(res, python_verdict(bytes(bad))), f"byte {pos} ^ {mask:#04x}: {res}"
    cuts = [vector[:n] for n in range(len(vector))]
    longer = [vector + tail for tail in (b"\x00", b"\xc0", b"\x91\x01", b"\xc4\x20" + bytes(32))]
    got = page.call(VERIFY_ALL, [[b64(b), None] for b in cuts + longer])
    for bundle, res in zip(cuts + longer, got, strict=True):
        assert agrees(res, python_verdict(bundle)), f"{len(bundle)} bytes: {res}"


@pytest.mark.browser
def test_fields_of_every_kind_and_type_fail_as_the_reference_does(
    page: Page,
    data: bytes,  # noqa: F811
) -> None:
    """Schema checks: each field of each level and record given each kind of wrong value."""
    cases = list(structural_variants(data))
    got = page.call(VERIFY_ALL, [[b64(b), None] for _, b in cases])
    codes = set()
    for (name, bundle), res in zip(cases, got, strict=True):
        expected = python_verdict(bundle)
        assert agrees(res, expected), f"{name}: {res} != {expected}"
        codes.add(expected["code"])
    assert len(cases) > 1000
    assert {"decode", "bad-signature", "bad-certificate"} <= codes


@pytest.mark.browser
def test_the_bundle_and_its_root_dropped_together(
    page: Page,
    fleet: Fleet,  # noqa: F811
    data: bytes,  # noqa: F811
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "carton.bundle"
    bundle.write_bytes(data)
    root = root_file(tmp_path / "fleet-root.json", fleet.authority.public.raw)
    page.drop(bundle, root)
    page.wait_for("document.body.dataset.state === 'done'")
    shown = page.evaluate(
        "[document.getElementById('verdict').textContent, "
        "document.getElementById('root-pin').textContent]"
    )
    assert shown == ["OK, the bundle verifies", "pinned by fleet-root.json"]


@pytest.mark.browser
def test_a_block_of_many_readings_and_the_progress_it_reports(page: Page) -> None:
    """600 readings of one block (proofs of 10 hashes) and the head's: the same verdict, and
    the page tells its progress every 512 readings."""
    authority, dk = key("authority"), key("busy-device")
    did = dk.public.device_id
    chain = seal_chain_impl(dk, sample_readings(did, (600, 1)))
    b = BundleBuilder(FleetRoots.of(authority.public), subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(did, [certify(authority, dk, 1).wire], chain[1].header, [chain[0].header.hash])
    for block in chain:
        for i in range(len(block.readings)):
            b.add_reading(did, block, i)
    bundle = b.build()
    res, seen = page.call(
        f"""async (d) => {{
          const seen = [];
          const r = await edgefleet.verifyBundle(({UNB64})(d), null, (n) => seen.push(n));
          return [r, seen];
        }}""",
        b64(bundle),
    )
    assert page_shape(res) == python_verdict(bundle)
    assert len(res["readings"]) == 601
    assert seen == [512]


@pytest.mark.browser
def test_a_browser_without_ed25519_is_told_so_not_shown_forgeries(
    page: Page,
    data: bytes,  # noqa: F811
) -> None:
    page.evaluate(
        "crypto.subtle.importKey = async () => { throw new DOMException('', 'NotSupportedError') }"
    )
    res = page.call(VERIFY_ALL, [[b64(data), None]])[0]
    assert (res["ok"], res["code"]) == (False, "page-error")
    assert res["error"].startswith("this browser cannot verify Ed25519 signatures")
    assert res["error"].endswith("or use edgefleet verify-bundle")


@pytest.mark.browser
def test_signatures_libsodium_refuses_are_refused(
    page: Page,
    fleet: Fleet,  # noqa: F811
    data: bytes,  # noqa: F811
) -> None:
    """Ed25519 edge cases where a cofactorless verifier without libsodium's checks would accept:
    the page refuses them as PyNaCl does."""
    # A fleet root at the identity point "signs" anything with R = identity, S = 0.
    identity = b"\x01" + bytes(31)
    top = explode(data)
    dev = top[5][0]
    body = dec(dev[0])[0]
    fields = dec(body)
    fields[10] = key_id_for(identity)
    dev[0] = enc([enc(fields), identity + bytes(32)])
    top[4] = identity
    forged_root = implode(top)
    # A header signature with S + L in place of S: the same point, a non-canonical scalar.
    header = fleet.stored.chain[0].header
    sig = header.signature
    s_plus_l = (int.from_bytes(sig[32:], "little") + L25519).to_bytes(32, "little")
    malleated = data.replace(header.wire, enc([header.body, sig[:32] + s_plus_l]))
    cases = [forged_root, malleated]
    got = page.call(VERIFY_ALL, [[b64(b), None] for b in cases])
    for bundle, res in zip(cases, got, strict=True):
        expected = python_verdict(bundle)
        assert expected["code"] == "bad-signature", expected
        assert page_shape(res) == expected


@pytest.mark.browser
def test_single_bit_flips_across_a_forked_bundle_fail_as_the_reference_does(
    page: Page,
    forked: bytes,  # noqa: F811
) -> None:
    """Format 2 (fork evidence, flags) under a seeded sample of one-bit flips: the page reaches
    the reference's verdict each time, flags included when the flip leaves it valid."""
    rng = random.Random(21)
    positions = sorted(rng.sample(range(len(forked)), 150))
    flips = [[pos, 1 << rng.randrange(8)] for pos in positions]
    got = page.call(FLIP_ALL, b64(forked), flips)
    seen = set()
    for (pos, mask), res in zip(flips, got, strict=True):
        bad = bytearray(forked)
        bad[pos] ^= mask
        expected = python_verdict(bytes(bad))
        assert agrees(res, expected), f"byte {pos} ^ {mask:#04x}: {res}"
        seen.add(expected["code"])
    assert {"decode", "bad-signature"} <= seen, seen
