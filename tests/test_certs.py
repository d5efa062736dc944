"""The development CA: certificates that TLS stacks accept, and refusals that name the problem."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from secure_infer import ParameterError
from secure_infer.certs import common_name, make_pki


def test_certificates_chain_to_the_ca_and_carry_the_identities(tmp_path: Path) -> None:
    issued = make_pki(tmp_path, hosts=["localhost", "10.0.0.1"], clients=["alice"], parties=2)
    assert {p.name for p in issued.written} >= {"ca.pem", "server.pem", "client-alice.pem", "party-0.pem", "party-1.pem"}
    assert common_name((tmp_path / "client-alice.pem").read_bytes()) == "alice"
    assert common_name((tmp_path / "party-1.pem").read_bytes()) == "party-1"
    for key in tmp_path.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # a TLS client that trusts only the CA accepts the server for the IP in its SANs
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(tmp_path / "client-alice.pem", tmp_path / "client-alice.key")
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_running_again_reuses_the_ca_and_adds_only_what_is_missing(tmp_path: Path) -> None:
    make_pki(tmp_path, clients=["alice"])
    ca_before = (tmp_path / "ca.pem").read_bytes()
    again = make_pki(tmp_path, clients=["alice", "bob"])
    assert [p.name for p in again.written] == ["client-bob.pem"]
    assert (tmp_path / "ca.pem").read_bytes() == ca_before


@pytest.mark.parametrize("name", ["../evil", "a b", ""])
def test_client_names_that_would_make_bad_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ParameterError, match="client name"):
        make_pki(tmp_path, clients=[name])


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    make_pki(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ParameterError, match="only one of ca.pem and ca.key"):
        make_pki(tmp_path)
