"""The ``tls_pki`` fixture: throwaway certificates for brokers listening with TLS.

Made once per test session with the ``openssl`` command (EC P-256 keys: a fraction of a
second in all). ``tls_pki.server`` is a broker's :class:`sim.broker.TlsFiles` for
``IP:127.0.0.1`` and ``DNS:localhost``; ``tls_pki.mutual`` the same files requiring a
client certificate; ``tls_pki.client`` a client certificate from the same CA;
``tls_pki.wrong_name`` a server certificate from that CA for ``DNS:other.invalid`` only;
``tls_pki.other_ca`` a second CA that trusts none of them, with ``tls_pki.other_client``,
a client certificate of its own.

``tests/conftest.py`` imports it, so every test module has it. Without openssl the
fixture raises: the TLS tests error out, they are not skipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from sim.broker import CertAuthority, KeyPair, TlsFiles

WRONG_NAME = "DNS:other.invalid"


@dataclass(frozen=True, kw_only=True)
class Pki:
    """Two unrelated CAs and the certificates the TLS tests present."""

    ca: CertAuthority
    server: TlsFiles
    mutual: TlsFiles
    wrong_name: TlsFiles
    client: KeyPair
    other_ca: CertAuthority
    other_client: KeyPair

    @property
    def ca_file(self) -> Path:
        """The CA the agent is told to trust (`[mqtt] ca_file`)."""
        return self.ca.cert


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates for the session; read-only for tests (brokers only read them)."""
    directory = tmp_path_factory.mktemp("tls")
    ca = CertAuthority(directory / "ca")
    other_ca = CertAuthority(directory / "other-ca", name="orio-agent other test CA")
    server = ca.server_files()
    return Pki(
        ca=ca,
        server=server,
        mutual=dataclasses.replace(server, require_certificate=True),
        wrong_name=ca.server_files("wrong-name", san=(WRONG_NAME,)),
        client=ca.issue("client", client=True),
        other_ca=other_ca,
        other_client=other_ca.issue("client", client=True),
    )
