"""What authenticating every protocol message costs, per message and per device-second.

``python -m bench.auth --json [--quick]`` prints one JSON object:

- ``primitives``: microseconds per operation, at the message sizes the fleet sends: Ed25519 sign
  and verify (PyNaCl, through ``ledger.identity``, the domain tag included), HMAC-SHA256 under a
  32-byte key, and the X25519 derivation of one pairwise key (once per peer pair and key).
- ``traffic``: a gossip run of the fleet benchmark's shape (one domain of ``domain_size``
  devices, a block every ``seal_every_s`` per device, anti-entropy every 5 s, the sim's lossy
  link) on ``agent.gossip.sim``: messages per device-second by type, sent (one per ``Send``, one
  per ``Broadcast``) and received, and their mean sizes.
- ``run``: the run's process CPU per device-second, the part of it measured inside
  ``auth.seal``, ``auth.seal_unsigned`` and ``auth.authenticate`` (the chosen mechanism, as
  implemented), and the run without authentication (the difference): ``ratio`` = with /
  without.
- ``options``: the authentication CPU per device-second each mechanism would cost on that
  traffic, from the primitive costs: Ed25519 on every message; Ed25519 on every message but an
  ANNOUNCE of the sender's own headers (chosen: their signatures prove it); pairwise HMAC for
  every message (a broadcast needs one MAC per member); HMAC for unicast with Ed25519 for
  broadcasts; HMAC for unicast with own ANNOUNCEs unsigned. Each with its ratio against the run
  without authentication and the cores a 2,000-device fleet would spend on it.

Nothing here is asserted: docs/PROTOCOL.md 12.1.5 quotes the figures and the choice.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import nacl.bindings

from agent.gossip import sim as gossip_sim
from agent.gossip import wire
from agent.gossip.actions import Broadcast, Send
from agent.gossip.tuning import GossipConfig
from agent.protocol import auth
from bench.common import emit, environment, parse_args
from ledger.identity import SigningKey

MESSAGE_SIZES = (128, 512, 2_048, 8_192)
FLEET_DEVICES = 2_000
CHOSEN = "ed25519_but_own_announce"  # what agent/protocol/auth.py implements


def _per_op_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def primitives(n: int) -> dict[str, Any]:
    key = SigningKey(hashlib.sha256(b"bench auth").digest())
    mac_key = hashlib.sha256(b"bench mac").digest()
    out: dict[str, Any] = {}
    for size in MESSAGE_SIZES:
        body = bytes(size)
        sig = key.sign(auth.MESSAGE, body)
        out[str(size)] = {
            "ed25519_sign_us": round(_per_op_us(lambda b=body: key.sign(auth.MESSAGE, b), n), 2),
            "ed25519_verify_us": round(
                _per_op_us(lambda b=body, s=sig: key.public.verify(auth.MESSAGE, b, s, "bench"), n),
                2,
            ),
            "hmac_sha256_us": round(
                _per_op_us(lambda b=body: hmac.digest(mac_key, auth.MESSAGE + b, "sha256"), n),
                2,
            ),
        }
    secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
        nacl.bindings.crypto_sign_seed_keypair(key.seed)[1]
    )
    public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key.public.raw)

    def derive() -> bytes:
        shared = nacl.bindings.crypto_scalarmult(secret, public)
        return hashlib.sha256(b"edgefleet/bench/pair\x00" + shared).digest()

    out["x25519_pair_key_us"] = round(_per_op_us(derive, max(1, n // 4)), 2)
    return out


def _interpolate(prims: dict[str, Any], what: str, size: float) -> float:
    """Cost of ``what`` at ``size`` bytes, linear between the measured sizes."""
    points = [(s, prims[str(s)][what]) for s in MESSAGE_SIZES]
    if size <= points[0][0]:
        return float(points[0][1])
    for (s0, c0), (s1, c1) in itertools.pairwise(points):
        if size <= s1:
            return float(c0 + (c1 - c0) * (size - s0) / (s1 - s0))
    (s0, c0), (s1, c1) = points[-2], points[-1]
    return float(c1 + (c1 - c0) * (size - s1) / (s1 - s0))


def run(devices: int, seconds: int, seal_every_s: int, seed: int) -> dict[str, Any]:
    """One gossip run: traffic by type, and CPU (whole run, and inside auth)."""
    net = gossip_sim.SimNet(seed, faults=gossip_sim.Faults(loss_permille=10, dup_permille=10))
    cfg = GossipConfig()
    ids = [net.add_device(config=cfg).device_id for _ in range(devices)]
    net.start(preload_certificates=True)
    sent: Counter[str] = Counter()
    sent_bytes: Counter[str] = Counter()
    received: Counter[str] = Counter()
    received_bytes: Counter[str] = Counter()
    unicast: Counter[str] = Counter()
    spent = {"seal": 0.0, "authenticate": 0.0}
    seal, authenticate, transmit = auth.seal, auth.authenticate, net._transmit
    seal_unsigned = auth.seal_unsigned

    def timed_seal_unsigned(body: bytes) -> bytes:
        t = time.process_time()
        try:
            return seal_unsigned(body)
        finally:
            spent["seal"] += time.process_time() - t

    execute = net._execute

    def timed_seal(body: bytes, signer: auth.Signer) -> bytes:
        t = time.process_time()
        try:
            return seal(body, signer)
        finally:
            spent["seal"] += time.process_time() - t

    def timed_authenticate(
        payload: bytes, trust: Any, self_proving: frozenset[int] = frozenset()
    ) -> auth.Verdict:
        t = time.process_time()
        try:
            return authenticate(payload, trust, self_proving)
        finally:
            spent["authenticate"] += time.process_time() - t

    def counting_execute(peer: Any, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Send | Broadcast):
                name = wire.NAMES.get(a.payload[2], "?")
                sent[name] += 1
                sent_bytes[name] += len(a.payload)
                if isinstance(a, Send):
                    unicast[name] += 1
        execute(peer, actions)

    def counting_transmit(src: str, dst: str, payload: bytes, *, broadcast: bool = False) -> None:
        name = wire.NAMES.get(payload[2], "?")
        received[name] += 1
        received_bytes[name] += len(payload)
        transmit(src, dst, payload, broadcast=broadcast)

    auth.seal, auth.authenticate = timed_seal, timed_authenticate  # type: ignore[assignment]
    auth.seal_unsigned = timed_seal_unsigned  # type: ignore[assignment]
    net._execute = counting_execute  # type: ignore[method-assign]
    net._transmit = counting_transmit  # type: ignore[method-assign]
    try:
        cpu = time.process_time()
        wall = time.perf_counter()
        step_ms = 1_000
        for t in range(0, seconds * 1000, step_ms):
            for i, dev in enumerate(ids):  # staggered: device i seals at second i mod period
                if (t // 1000 - i) % seal_every_s == 0:
                    net.seal(dev)
            net.run_for(step_ms)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    finally:
        auth.seal, auth.authenticate = seal, authenticate  # type: ignore[assignment]
        auth.seal_unsigned = seal_unsigned  # type: ignore[assignment]
    net.run_for(10_000)  # the last blocks spread (not measured): the run converged
    device_s = devices * seconds
    names = sorted(set(sent) | set(received))
    traffic = {
        n: {
            "sent_per_device_s": round(sent[n] / device_s, 4),
            "unicast_share": round(unicast[n] / sent[n], 3) if sent[n] else 0.0,
            "received_per_device_s": round(received[n] / device_s, 4),
            "mean_bytes": round(sent_bytes[n] / sent[n]) if sent[n] else 0,
        }
        for n in names
    }
    auth_s = spent["seal"] + spent["authenticate"]
    figures = {
        "devices": devices,
        "simulated_s": seconds,
        "seal_every_s": seal_every_s,
        "wall_s": round(wall, 3),
        "converged": net.converged(),
        "cpu_us_per_device_s": round(cpu / device_s * 1e6, 1),
        "auth_cpu_us_per_device_s": round(auth_s / device_s * 1e6, 1),
        "seal_cpu_us_per_device_s": round(spent["seal"] / device_s * 1e6, 1),
        "authenticate_cpu_us_per_device_s": round(spent["authenticate"] / device_s * 1e6, 1),
        "without_auth_cpu_us_per_device_s": round((cpu - auth_s) / device_s * 1e6, 1),
        "ratio": round(cpu / (cpu - auth_s), 3),
        "unattributable": sum(
            p.node.counters["unattributable"] for p in net.peers.values() if p.node is not None
        ),
    }
    return {"traffic": traffic, "run": figures, "_raw": (sent, unicast, received, sent_bytes)}


def options(prims: dict[str, Any], traffic_run: dict[str, Any], devices: int) -> dict[str, Any]:
    """Authentication CPU per device-second of each mechanism on the measured traffic."""
    sent, unicast, _received, sent_bytes = traffic_run["_raw"]
    seconds = traffic_run["run"]["simulated_s"]
    base = traffic_run["run"]["without_auth_cpu_us_per_device_s"]
    device_s = devices * seconds
    members = devices - 1  # one domain: a broadcast reaches every other member

    def cost(sign_what: Callable[[str, bool], str]) -> float:
        """``sign_what(type, unicast)``: "sig", "mac" or "none" for one message."""
        total = 0.0
        for name in sent:
            size = sent_bytes[name] / sent[name]
            for is_unicast, count in ((True, unicast[name]), (False, sent[name] - unicast[name])):
                how = sign_what(name, is_unicast)
                # receptions of this kind: broadcasts reach every member, unicasts one peer
                recv = count if is_unicast else count * members
                if how == "sig":
                    total += count * _interpolate(prims, "ed25519_sign_us", size)
                    total += recv * _interpolate(prims, "ed25519_verify_us", size)
                elif how == "mac":
                    macs = count if is_unicast else count * members  # one tag per recipient
                    total += (macs + recv) * _interpolate(prims, "hmac_sha256_us", size)
        # pairwise keys: each device derives one per peer once; amortized over an hour
        return total / device_s

    pair_keys_us = members * prims["x25519_pair_key_us"] / 3_600
    # In the run every ANNOUNCE carries the sender's own headers (push "broadcast"): those are
    # the ones the chosen scheme leaves unsigned.
    schemes: dict[str, Callable[[str, bool], str]] = {
        "ed25519_every_message": lambda n, u: "sig",
        "ed25519_but_own_announce": lambda n, u: "none" if n == "ANNOUNCE" else "sig",
        "hmac_pairwise_every_message": lambda n, u: "mac",
        "hmac_unicast_ed25519_broadcast": lambda n, u: "mac" if u else "sig",
        "hmac_unicast_but_own_announce": lambda n, u: "none" if n == "ANNOUNCE" else "mac",
    }
    out: dict[str, Any] = {}
    for label, rule in schemes.items():
        us = cost(rule) + (pair_keys_us if "hmac" in label else 0.0)
        out[label] = {
            "auth_cpu_us_per_device_s": round(us, 1),
            "ratio": round((base + us) / base, 3),
            "cores_for_2000_devices": round(FLEET_DEVICES * us / 1e6, 3),
        }
    out["without_auth_cores_for_2000_devices"] = round(FLEET_DEVICES * base / 1e6, 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("python -m bench.auth", __doc__.split("\n")[0], argv)
    devices, seconds, n = (16, 30, 300) if args.quick else (32, 120, 2_000)
    prims = primitives(n)
    measured = run(devices, seconds, seal_every_s=10, seed=7)
    result = {
        "environment": environment(),
        "quick": args.quick,
        "primitives": prims,
        "traffic": measured["traffic"],
        "run": measured["run"],
        "options": options(prims, measured, devices),
        "chosen": CHOSEN,
    }
    emit(result, args, "message authentication: cost per message and per device-second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
