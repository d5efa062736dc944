"""A development certificate authority: TLS certificates for servers, clients and MPC parties.

TLS needs certificates before anything can be served off loopback; making
them with ``openssl`` by hand is where deployments go wrong (a missing IP in
the subject alternative names, a client certificate without the client-auth
usage). :func:`make_pki` makes a CA and every certificate a deployment needs
in one call (``secure-infer certs DIR --host 10.0.0.1 --client alice``):

* ``ca.pem`` / ``ca.key``: the CA. Keep ``ca.key`` offline; everyone gets ``ca.pem``.
* ``server.pem`` / ``server.key``: the HE server, valid for every ``--host``
  (DNS names and IP addresses go into the subject alternative names).
* ``client-NAME.pem`` / ``client-NAME.key``: one per client, for mutual TLS;
  the certificate's common name is the client's identity on the server.
* ``party-R.pem`` / ``party-R.key``: one per MPC party rank, valid as both
  TLS server and client (parties dial each other).

Keys are ECDSA P-256, written with mode 0600. Running it again in the same
folder reuses the CA and issues only the certificates that are missing, so
a client can be added later without re-keying the server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_infer._errors import ParameterError

CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]

CA_NAME = "secure-infer development CA"


@dataclass
class Issued:
    """What :func:`make_pki` wrote (paths), and what it found already there."""

    folder: Path
    ca: Path
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _load_ca(folder: Path) -> CA:
    cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ParameterError(f"{folder / 'ca.key'} is not an ECDSA key made by `secure-infer certs`; use another folder")
    return cert, key


def _new_ca(folder: Path, days: int) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca.key", key)
    return cert, key


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(folder: Path, ca: CA, stem: str, common_name: str, *, hosts: list[str],
          server: bool, client: bool, days: int = 825) -> Path:
    """Write ``stem.pem``/``stem.key`` signed by ``ca``; returns the certificate's path."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    path = folder / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / f"{stem}.key", key)
    return path


def check_client_name(name: str) -> None:
    """A client's name is its certificate's common name and part of file names: a plain word only."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ParameterError(f"client name {name!r} must be letters, digits, '-', '_' or '.' (it names files "
                             "and certificates)")


def make_pki(folder: str | Path, *, hosts: list[str] | None = None, clients: list[str] | None = None,
             parties: int = 0, days: int = 825) -> Issued:
    """A CA (reused if ``folder`` has one) and the server, client and party certificates that are missing.

    Args:
        folder: where the PEM files go (created if needed).
        hosts: names and IP addresses the server and the parties are reached at;
            default ``localhost`` and ``127.0.0.1``.
        clients: client identities (mutual TLS); each becomes a certificate's common name.
        parties: MPC parties: one certificate per rank ``0..parties-1``, common name ``party-R``.
        days: validity of new certificates.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    hosts = list(hosts or ["localhost", "127.0.0.1"])
    for name in clients or []:
        check_client_name(name)
    if parties < 0:
        raise ParameterError(f"parties must be >= 0, got {parties}")
    have_ca = (out / "ca.pem").exists(), (out / "ca.key").exists()
    if have_ca == (True, True):
        ca = _load_ca(out)
        issued = Issued(out, out / "ca.pem", kept=[out / "ca.pem"])
    elif any(have_ca):
        raise ParameterError(f"{out} holds only one of ca.pem and ca.key: move it away or restore the other")
    else:
        ca = _new_ca(out, days)
        issued = Issued(out, out / "ca.pem", written=[out / "ca.pem", out / "ca.key"])
    wanted = [("server", "server", True, False)]
    wanted += [(f"client-{c}", c, False, True) for c in clients or []]
    wanted += [(f"party-{r}", f"party-{r}", True, True) for r in range(parties)]
    for stem, cn, server, client in wanted:
        if (out / f"{stem}.pem").exists() and (out / f"{stem}.key").exists():
            issued.kept.append(out / f"{stem}.pem")
            continue
        issued.written.append(issue(out, ca, stem, cn, hosts=hosts if server else [], server=server,
                                    client=client, days=days))
    return issued


def common_name(pem: bytes) -> str:
    """The subject common name of a PEM certificate (the identity a peer presented)."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
