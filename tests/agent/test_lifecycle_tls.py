"""`edgefleet keys revoke --broker mqtts://...` against the fleet's own TLS broker (a real
Mosquitto with the ACL `broker config` writes): the command connects as the authority's client
(a certificate it issues itself, CN edgefleet-authority) and its revocation reaches an enrolled
device; an enrolled device that tries to publish a revocation is refused by the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet import brokertls, lifecycle
from agent.transport.brokers import AUTHORITY_CLIENT, MosquittoBroker, MosquittoTls, mosquitto_acl
from ledger.certs import decode_revocation
from tests.agent.conftest import require_mosquitto
from tests.agent.test_broker_tls import PW, Inbox, Pki, T, client, endpoint, make_pki

pytestmark = [pytest.mark.mosquitto]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "data")


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path) -> Iterator[MosquittoBroker]:
    require_mosquitto()
    acl = tmp_path / "acl"
    acl.write_text(mosquitto_acl(T, brokertls.hubs(pki.data)))
    files = brokertls.server_files(pki.data)
    broker = MosquittoBroker(
        workdir=tmp_path / "mosquitto",
        tls=MosquittoTls(files.ca, files.cert, files.key, acl_file=acl),
    )
    broker.start_sync()
    try:
        yield broker
    finally:
        broker.stop_sync()


def test_only_the_authority_publishes_revocations_on_the_tls_broker(
    pki: Pki, tls_broker: MosquittoBroker, tmp_path: Path
) -> None:
    alice, bob, carol = (pki.ids[n] for n in ("alice", "bob", "carol"))
    pwfile = tmp_path / "pw"
    pwfile.write_bytes(PW + b"\n")
    e = tls_broker.endpoint
    url = f"mqtts://{e.host}:{e.port}"
    argv = ["keys", "revoke", "--authority", str(pki.data.authority), "--device", bob]
    argv += ["--reason", "stolen", "--from-height", "3", "--broker", url]
    argv += ["--passphrase-file", str(pwfile)]

    async def run() -> list[tuple[str, bytes]]:
        got = Inbox()
        carol_e = endpoint(tls_broker, pki.files("carol"))
        async with client(carol_e, carol, got, T.presence(carol)) as c:
            await c.subscribe([T.revocation_filter()])
            alice_e = endpoint(tls_broker, pki.files("alice"))
            async with client(alice_e, alice, Inbox(), T.presence(alice)) as a:
                await a.publish(T.revocation(bob), b"forged by alice", retain=True)
            assert await asyncio.to_thread(main, argv) == 0
            wire = lifecycle.revocation_path(pki.data.authority, bob).read_bytes()
            seen = await got.until(T.revocation(bob), wire)
        fresh = Inbox()  # a device that subscribes later gets the authority's, retained
        async with client(carol_e, carol, fresh, T.presence(carol)) as f:
            await f.subscribe([T.revocation(bob)])
            assert await fresh.until(T.revocation(bob), wire) == [(T.revocation(bob), wire)]
        return seen

    seen = asyncio.run(run())
    wire = lifecycle.revocation_path(pki.data.authority, bob).read_bytes()
    assert decode_revocation(wire).from_height == 3
    assert seen[-1] == (T.revocation(bob), wire)
    assert (T.revocation(bob), b"forged by alice") not in seen, seen
    cert = brokertls.read_certificate(pki.data.authority / "broker-client" / "client.pem")
    assert brokertls.common_name(cert) == AUTHORITY_CLIENT
