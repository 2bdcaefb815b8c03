"""A private CA made in the test, and a real nginx rendering relay/deploy/nginx-relay.conf.

    pki = make_pki(tmp_path)            # pki.ca, pki.cert, pki.key, pki.other_ca (PEM paths)
    with start_nginx(tmp_path, pki, relay_port=relay.port) as https_url: ...
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from didmesh.session.lab.procs import stop
from relay_helpers import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "relay" / "deploy"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the private CA clients are told to trust
    cert: Path  # server certificate for 127.0.0.1 and localhost, issued by ca
    key: Path
    other_ca: Path  # a CA that did not issue it


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("didmesh test CA")
    _, other = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name("relay.test"))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = Pki(directory / "ca.pem", directory / "relay.pem", directory / "relay.key",
                directory / "other-ca.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.other_ca.write_bytes(other.public_bytes(pem))
    paths.cert.write_bytes(cert.public_bytes(pem))
    paths.key.write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths.key.chmod(0o600)
    return paths


def render_nginx_site(pki: Pki, listen_port: int, relay_ports: list[int]) -> str:
    """relay/deploy/nginx-relay.conf with the test's ports and certificate (each
    replacement must hit as often as expected: the shipped file is what runs)."""
    text = (DEPLOY / "nginx-relay.conf").read_text()
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in relay_ports)
    for old, new, times in [
        ("listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;", 1),
        ("listen [::]:443 ssl;", "", 1),
        ("/etc/ssl/didmesh-relay/fullchain.pem", str(pki.cert), 1),
        ("/etc/ssl/didmesh-relay/privkey.pem", str(pki.key), 1),
        ("server 127.0.0.1:8470;", servers, 2),  # both upstreams
    ]:
        assert text.count(old) == times, f"nginx-relay.conf no longer has {old!r} {times}x"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def start_nginx(directory: Path, pki: Pki, relay_port: int | list[int],
                timeout: float = 15.0) -> Iterator[str]:
    """nginx (foreground, this user's temp dirs) in front of the relay; yields its https URL."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                    else None)
    if exe is None:
        pytest.fail("nginx is not installed (.ci/run installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ports = relay_port if isinstance(relay_port, list) else [relay_port]
    (directory / "didmesh-relay.conf").write_text(render_nginx_site(pki, port, ports))
    temps = "\n".join(
        f"  {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    (directory / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} warn;\n"
        "events { worker_connections 512; }\n"
        f"http {{\n  access_log {directory / 'access.log'};\n{temps}\n"
        f"  include {directory / 'didmesh-relay.conf'};\n}}\n"
    )
    proc = subprocess.Popen(
        [exe, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening") from None
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        stop(proc, 10)
        if proc.stderr:
            proc.stderr.close()
