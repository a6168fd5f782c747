"""Broker identities: X.509 certificates for the MQTT broker's TLS listener, from the fleet
authority. The only module that builds or reads X.509 (the ``cryptography`` library).

The **fleet CA** is the fleet authority's own Ed25519 key, as a self-signed X.509 CA certificate
(``DATA/authority/broker-ca.pem``): its public key is the fleet root's, so anyone holding
``fleet-root.json`` can check that a broker certificate chain is the fleet's. It signs:

- a **device certificate** per device: subject CN = the device id (the name in its topics), an
  ECDSA P-256 key, extended key usage clientAuth. Mosquitto takes the CN as the user name
  (``use_identity_as_username``) and its ACLs bind the device's inbox and presence to it.
- a **hub certificate** for a shared connection (``MqttHub``): CN ``efhub-<hub id>``, with the
  device ids it carries recorded next to it (``hubs/<hub id>/devices.json``): the broker config
  gives each hub its own rule set naming those devices.
- a **server certificate** for the broker: CN ``edgefleet broker``, serverAuth, the host names
  and addresses clients connect to as subject alternative names.

Files (PEM; secret keys unencrypted, mode 0600, never overwritten: Mosquitto and the MQTT client
read them unattended, so they cannot take a passphrase):

    DATA/authority/broker-ca.pem     the fleet CA certificate (public)
    DATA/broker/ca.pem               its copy, for the broker's cafile
    DATA/broker/server.pem, .key     the broker's certificate and key
    DATA/broker/hubs/H/hub.pem, .key, devices.json
    DEVDIR/broker.pem, broker.key    a device's client certificate and key
    DEVDIR/broker-ca.pem             the CA, to verify the broker
    DEVDIR/broker.csr                a certificate request made on the device (``make_request``)

A TLS key is a transport credential only: it lets its holder connect to the broker as the device
(publish on its topics), never sign a record; the device's Ed25519 key stays encrypted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import AgentError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.transport.brokers import AUTHORITY_CLIENT, MosquittoTls, mosquitto_acl
from agent.transport.topics import HUB_ID_RE, Topics
from ledger import keyfile
from ledger.certs import decode_certificate
from ledger.errors import KeyFileError, LedgerError
from ledger.identity import SigningKey, is_device_id

log = logging.getLogger(__name__)

CA_CERT = "broker-ca.pem"
BROKER = "broker"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENT_CERT = "broker.pem"
CLIENT_KEY = "broker.key"
CLIENT_REQUEST = "broker.csr"
HUBS = "hubs"
HUB_CERT = "hub.pem"
HUB_KEY = "hub.key"
HUB_DEVICES = "devices.json"
HUB_PREFIX = "efhub-"  # a hub's CN and MQTT client id: efhub-<hub id> (agent/transport/mqtt.py)
SERVER_CN = "edgefleet broker"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_VALID_DAYS = 20 * 366
DEFAULT_VALID_DAYS = 3650
_SKEW = dt.timedelta(hours=1)  # not-before one hour back: a device clock slightly behind


class BrokerTlsError(AgentError, code="broker-tls"):
    """A broker certificate cannot be issued, read or checked (the message names the file)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A certificate, its key and the CA that verifies the other side."""

    cert: Path
    key: Path
    ca: Path


# --------------------------------------------------------------------------- files


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise BrokerTlsError(f"{path}: cannot write ({exc.strerror})") from None


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A new PEM (PKCS#8, unencrypted) key file, mode 0600; an existing one is never replaced."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        keyfile.write_private(path, data)
    except KeyFileError as exc:
        raise BrokerTlsError(str(exc)) from None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise BrokerTlsError(f"{path}: cannot read ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BrokerTlsError(
            f"{path}: permissions {oct(mode & 0o777)} are too open; expected 0600 "
            f"(chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BrokerTlsError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BrokerTlsError(f"{path}: expected an EC private key, found {type(key).__name__}")
    return key


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise BrokerTlsError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise BrokerTlsError(f"{path}: not a PEM X.509 certificate ({exc})") from None


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return ""
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# --------------------------------------------------------------------------- the fleet CA


def _ca_key(authority: SigningKey) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(authority.seed)


def _ca_public_raw(cert: x509.Certificate) -> bytes | None:
    public = cert.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        return None
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fleet_ca(authority_dir: Path, authority: SigningKey) -> x509.Certificate:
    """The fleet CA certificate in ``authority_dir`` (created, self-signed, when absent).

    An existing one must hold the authority's public key: a CA of another authority is refused.
    """
    path = authority_dir / CA_CERT
    if path.exists():
        cert = read_certificate(path)
        if _ca_public_raw(cert) != authority.public.raw:
            raise BrokerTlsError(
                f"{path}: the CA certificate is not this fleet authority's (its key differs "
                f"from {authority_dir / keystore.FLEET_ROOT}); move it away to issue a new one"
            )
        return cert
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgefleet fleet CA {authority.key_id.hex()}"),
        ]
    )
    now = _now()
    key = _ca_key(authority)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    _write_public(path, _pem(cert))
    return cert


def _leaf(
    authority: SigningKey,
    ca: x509.Certificate,
    subject: str,
    public: ec.EllipticCurvePublicKey,
    *,
    server_hosts: tuple[str, ...] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
) -> x509.Certificate:
    now = _now()
    ca_key = _ca_key(authority)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, True, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [
                    ExtendedKeyUsageOID.SERVER_AUTH
                    if server_hosts
                    else ExtendedKeyUsageOID.CLIENT_AUTH
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in server_hosts]), critical=False
        )
    return builder.sign(ca_key, None)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def check_hosts(hosts: tuple[str, ...]) -> tuple[str, ...]:
    """Host names or addresses for a server certificate: non-empty, no spaces or wildcards."""
    for host in hosts:
        ok = bool(host) and all(c.isalnum() or c in ".-:" for c in host)
        if not ok:
            raise BrokerTlsError(
                f"server certificate host: expected a DNS name or an IP address, found {host!r}"
            )
    if not hosts:
        raise BrokerTlsError("server certificate: expected at least one host name or address")
    return hosts


def verify_issued(cert: x509.Certificate, ca: x509.Certificate, where: Path) -> None:
    """``cert`` is signed by ``ca`` and valid now; else BrokerTlsError naming ``where``."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise BrokerTlsError(f"{where}: not signed by the fleet CA {common_name(ca)!r}") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise BrokerTlsError(
            f"{where}: valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now: issue a new one"
        )


# --------------------------------------------------------------------------- issuing


def _issue_pair(
    authority: SigningKey,
    ca: x509.Certificate,
    subject: str,
    cert_path: Path,
    key_path: Path,
    *,
    server_hosts: tuple[str, ...] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
) -> None:
    """A new key (kept if one exists: a renewal) and a certificate for it."""
    if key_path.exists():
        key = _read_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(key_path, key)
    cert = _leaf(
        authority,
        ca,
        subject,
        key.public_key(),
        server_hosts=server_hosts,
        valid_days=valid_days,
    )
    _write_public(cert_path, _pem(cert))


def device_id_of(device_dir: Path) -> str:
    """The device id a device directory's certificate names."""
    path = device_dir / keystore.DEVICE_CERT
    try:
        return decode_certificate(path.read_bytes()).device_id
    except OSError as exc:
        raise BrokerTlsError(
            f"{path}: cannot read the device certificate ({exc.strerror}): enroll the device first"
        ) from None
    except LedgerError as exc:
        raise BrokerTlsError(f"{path}: {exc}") from None


def device_files(device_dir: Path) -> TlsFiles:
    return TlsFiles(device_dir / CLIENT_CERT, device_dir / CLIENT_KEY, device_dir / CA_CERT)


def server_files(data: DataDir) -> TlsFiles:
    d = data.root / BROKER
    return TlsFiles(d / SERVER_CERT, d / SERVER_KEY, d / "ca.pem")


def hub_files(data: DataDir, hub_id: str) -> TlsFiles:
    d = data.root / BROKER / HUBS / hub_id
    return TlsFiles(d / HUB_CERT, d / HUB_KEY, data.root / BROKER / "ca.pem")


def issue_device(
    device_dir: Path,
    authority_dir: Path,
    authority: SigningKey,
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> tuple[str, TlsFiles]:
    """A client certificate for the enrolled device in ``device_dir`` (CN = its device id)."""
    device_id = device_id_of(device_dir)
    ca = fleet_ca(authority_dir, authority)
    files = device_files(device_dir)
    _issue_pair(authority, ca, device_id, files.cert, files.key, valid_days=valid_days)
    _write_public(files.ca, _pem(ca))
    return device_id, files


def issue_server(
    data: DataDir,
    authority: SigningKey,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> TlsFiles:
    """The broker's server certificate (serverAuth, ``hosts`` as subject alternative names)."""
    ca = fleet_ca(data.authority, authority)
    files = server_files(data)
    _issue_pair(
        authority,
        ca,
        SERVER_CN,
        files.cert,
        files.key,
        server_hosts=check_hosts(hosts),
        valid_days=valid_days,
    )
    _write_public(files.ca, _pem(ca))
    return files


def check_hub_id(hub_id: str) -> str:
    if not HUB_ID_RE.match(hub_id) or is_device_id(hub_id):
        raise BrokerTlsError(
            f"hub id: expected {HUB_ID_RE.pattern} and not a device id, found {hub_id[:70]!r}"
        )
    return hub_id


def issue_hub(
    data: DataDir,
    authority: SigningKey,
    hub_id: str,
    device_ids: list[str],
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> TlsFiles:
    """A client certificate for a shared connection carrying ``device_ids`` (CN efhub-<id>)."""
    check_hub_id(hub_id)
    bad = [d for d in device_ids if not is_device_id(d)]
    if bad:
        raise BrokerTlsError(f"hub {hub_id}: {bad[0][:40]!r} is not a device id")
    ca = fleet_ca(data.authority, authority)
    files = hub_files(data, hub_id)
    _issue_pair(authority, ca, HUB_PREFIX + hub_id, files.cert, files.key, valid_days=valid_days)
    _write_public(
        files.cert.parent / HUB_DEVICES,
        (json.dumps({"hub": hub_id, "devices": sorted(set(device_ids))}, indent=2) + "\n").encode(),
    )
    _write_public(files.ca, _pem(ca))
    return files


AUTHORITY_CLIENT_DIR = "broker-client"  # AUTH_DIR/broker-client/: the authority tool's TLS files


def issue_authority_client(
    authority_dir: Path, authority: SigningKey, *, valid_days: int = 1
) -> TlsFiles:
    """A client certificate for the authority's own tool (``edgefleet keys revoke --broker
    mqtts://...``), CN ``edgefleet-authority`` (the ACL's user that alone may publish
    revocations), made afresh for a day at each use; its key is kept in
    ``AUTH_DIR/broker-client/`` beside it."""
    ca = fleet_ca(authority_dir, authority)
    d = authority_dir / AUTHORITY_CLIENT_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    files = TlsFiles(d / "client.pem", d / "client.key", authority_dir / CA_CERT)
    _issue_pair(authority, ca, AUTHORITY_CLIENT, files.cert, files.key, valid_days=valid_days)
    return files


def hubs(data: DataDir) -> dict[str, list[str]]:
    """Every hub identity issued in ``data``: hub id -> the device ids it carries."""
    root = data.root / BROKER / HUBS
    out: dict[str, list[str]] = {}
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        path = d / HUB_DEVICES
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
            devices = [str(x) for x in doc["devices"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BrokerTlsError(f"{path}: not a hub's device list ({exc})") from None
        out[check_hub_id(d.name)] = [x for x in devices if is_device_id(x)]
    return out


# --------------------------------------------------------------------------- requests (remote)


def make_request(device_dir: Path) -> tuple[str, Path]:
    """On a device's own machine: a TLS key (kept there, 0600) and a certificate request
    ``broker.csr`` naming the device id of its ``device.cert``. Returns (device id, csr path)."""
    device_id = device_id_of(device_dir)
    files = device_files(device_dir)
    if files.key.exists():
        key = _read_key(files.key)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(files.key, key)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    path = device_dir / CLIENT_REQUEST
    _write_public(path, csr.public_bytes(serialization.Encoding.PEM))
    return device_id, path


def read_request(path: Path) -> tuple[str, x509.CertificateSigningRequest]:
    """A device's ``broker.csr``: its signature checks and its CN is a device id."""
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except OSError as exc:
        raise BrokerTlsError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise BrokerTlsError(f"{path}: not a PEM certificate request ({exc})") from None
    if not csr.is_signature_valid:
        raise BrokerTlsError(f"{path}: the request's signature does not verify")
    device_id = common_name(csr)
    if not is_device_id(device_id):
        raise BrokerTlsError(f"{path}: CN {device_id[:40]!r} is not a device id")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise BrokerTlsError(f"{path}: expected an EC key, found another kind")
    return device_id, csr


def issue_from_request(
    csr_path: Path,
    out: Path,
    authority_dir: Path,
    authority: SigningKey,
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> tuple[str, Path]:
    """Certify a device's request: writes the certificate to ``out`` and the fleet CA next to
    it (``broker-ca.pem``). Returns (device id, CA path)."""
    device_id, csr = read_request(csr_path)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    ca = fleet_ca(authority_dir, authority)
    cert = _leaf(authority, ca, device_id, public, valid_days=valid_days)
    _write_public(out, _pem(cert))
    ca_path = out.parent / CA_CERT
    _write_public(ca_path, _pem(ca))
    return device_id, ca_path


def install(device_dir: Path, cert_path: Path, ca_path: Path) -> str:
    """On the device: check the certificate the authority issued (signed by the CA, for the key
    in ``broker.key``, naming this device) and put it and the CA in place. Returns the id."""
    device_id = device_id_of(device_dir)
    files = device_files(device_dir)
    cert, ca = read_certificate(cert_path), read_certificate(ca_path)
    verify_issued(cert, ca, cert_path)
    if common_name(cert) != device_id:
        raise BrokerTlsError(
            f"{cert_path}: names {common_name(cert)!r}, not this device ({device_id})"
        )
    key = _read_key(files.key)
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise BrokerTlsError(f"{cert_path}: certifies another key than {files.key}")
    _write_public(files.cert, _pem(cert))
    _write_public(files.ca, _pem(ca))
    return device_id


def check_files(files: TlsFiles, subject: str) -> None:
    """The files exist, the key is private, the certificate is the CA's, valid, for ``subject``
    and for that key; else BrokerTlsError naming the file."""
    cert, ca = read_certificate(files.cert), read_certificate(files.ca)
    verify_issued(cert, ca, files.cert)
    if common_name(cert) != subject:
        raise BrokerTlsError(f"{files.cert}: names {common_name(cert)!r}, expected {subject!r}")
    key = _read_key(files.key)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*fmt) != cert.public_key().public_bytes(*fmt):
        raise BrokerTlsError(f"{files.cert}: certifies another key than {files.key}")


# --------------------------------------------------------------------------- a fleet's own broker


HUB_ID = "local"  # the hub of `run --broker mosquitto-tls`: its broker lives and dies with it
ACL_FILE = "acl"


@dataclass(frozen=True, slots=True)
class FleetTls:
    """What ``run --broker mosquitto-tls`` needs: the broker's TLS listener (with the ACL file),
    each local device's client files by device id, and the shared connection's, if any."""

    listener: MosquittoTls
    devices: dict[str, TlsFiles]
    hub: TlsFiles | None


def prepare_fleet(
    data: DataDir,
    devices: dict[str, Path],
    *,
    hub: bool,
    topics: Topics,
    passphrase: bytes | None,
) -> FleetTls:
    """Issue what is missing (or no longer valid) for a fleet's own TLS broker: the server
    certificate, a client certificate per device of ``devices`` (device id -> its directory),
    the hub's when ``hub``; write the ACL. Needs the fleet authority in ``data``."""
    if not (data.authority / keystore.AUTHORITY_KEY).exists():
        raise BrokerTlsError(
            f"--broker mosquitto-tls issues broker certificates from the fleet authority, and "
            f"{data.authority / keystore.AUTHORITY_KEY} does not exist (devices enrolled "
            "elsewhere): run Mosquitto from `edgefleet broker config` on the authority's "
            "machine and connect with --broker mqtts://... (docs/DEPLOY.md 7)"
        )
    if passphrase is None:
        raise BrokerTlsError(
            f"--broker mosquitto-tls: no passphrase for {data.authority / keystore.AUTHORITY_KEY}"
        )
    try:
        authority = keystore.load_authority(data.authority, passphrase)
    except keystore.KeystoreError as exc:
        raise BrokerTlsError(str(exc)) from None
    ca = fleet_ca(data.authority, authority)
    server = server_files(data)
    if not _valid(server, SERVER_CN, ca):
        server = issue_server(data, authority, DEFAULT_HOSTS)
    out: dict[str, TlsFiles] = {}
    for device_id, device_dir in devices.items():
        files = device_files(device_dir)
        if not _valid(files, device_id, ca):
            issued_id, files = issue_device(device_dir, data.authority, authority)
            if issued_id != device_id:
                raise BrokerTlsError(
                    f"{device_dir / keystore.DEVICE_CERT}: names {issued_id}, expected {device_id}"
                )
        out[device_id] = files
    hub_tls = None
    hub_map: dict[str, list[str]] = {}
    if hub:
        hub_tls = issue_hub(data, authority, HUB_ID, list(devices))
        hub_map[HUB_ID] = sorted(devices)
    acl = data.root / BROKER / ACL_FILE
    _write_public(acl, mosquitto_acl(topics, hub_map).encode())
    listener = MosquittoTls(server.ca, server.cert, server.key, acl_file=acl)
    return FleetTls(listener, out, hub_tls)


def _valid(files: TlsFiles, subject: str, ca: x509.Certificate) -> bool:
    """The files are there, for ``subject``, signed by (today's copy of) ``ca``."""
    if not (files.cert.exists() and files.key.exists() and files.ca.exists()):
        return False
    try:
        check_files(files, subject)
        verify_issued(read_certificate(files.cert), ca, files.cert)
    except BrokerTlsError as exc:
        log.info("re-issuing %s: %s", files.cert, exc)
        return False
    return True


def url_device_files(url: str, devices: dict[str, Path]) -> dict[str, TlsFiles]:
    """``--broker mqtts://host:port`` naming no client certificate: each device (device id -> its
    directory) connects with its own ``broker.pem`` / ``broker.key``, verifying the broker against
    the URL's ``ca=`` or else the device's ``broker-ca.pem``. Empty when the URL is not
    ``mqtts://``, names a certificate, or no device has broker files; BrokerTlsError when only
    some do, or when one's files do not check (``check_files``)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtts":
        return {}
    query = parse_qs(parts.query)
    if "cert" in query or "key" in query:
        return {}
    files = {i: device_files(d) for i, d in devices.items()}
    missing = [f.cert for f in files.values() if not f.cert.exists()]
    if len(missing) == len(files):
        return {}
    if missing:
        raise BrokerTlsError(
            f"{missing[0]}: no broker certificate for this device, while "
            f"{len(files) - len(missing)} other devices here have theirs: issue it (keys "
            "broker-cert, docs/DEPLOY.md section 7) or name one in the URL (cert=, key=)"
        )
    ca = query.get("ca")
    out = {}
    for device_id, f in files.items():
        check_files(f, device_id)
        out[device_id] = TlsFiles(f.cert, f.key, Path(ca[0]) if ca else f.ca)
    return out


def describe(path: Path, roots: list[bytes] | None) -> dict[str, object]:
    """What `keys show` prints for a PEM file: a certificate (its subject, issuer, validity,
    and, given the fleet root keys, whether its issuer's key is one), a request or a key."""
    data = path.read_bytes()
    if b"PRIVATE KEY-----" in data:
        key = _read_key(path)
        return {"file": "broker TLS key (PEM, unencrypted)", "curve": key.curve.name}
    if b"CERTIFICATE REQUEST-----" in data:
        device_id, _ = read_request(path)
        return {"file": "broker certificate request", "device_id": device_id}
    cert = read_certificate(path)
    ca = _ca_public_raw(cert)
    info: dict[str, object] = {
        "file": "broker CA certificate" if ca is not None else "broker certificate",
        "subject": common_name(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(timespec="seconds"),
        "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
    }
    if ca is None:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        info["usage"] = ", ".join(u._name for u in usage)
    if roots is None:
        info["status"] = "not verified (pass --root)"
    elif any(_signed_by(cert, root) for root in roots):
        info["status"] = "signed by the fleet root's key" + (" (the fleet CA)" if ca else "")
    else:
        info["status"] = "NOT signed by the fleet root's key"
    return info


def _signed_by(cert: x509.Certificate, root: bytes) -> bool:
    """The fleet CA's key is the authority's: a certificate it issued verifies with the root."""
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(root).verify(
            cert.signature, cert.tbs_certificate_bytes
        )
    except (InvalidSignature, ValueError):
        return False
    return True
