"""A throwaway (but real) certificate authority for tests and the lab.

`ThrowawayCA` makes a self-signed CA (EC P-256, valid for a day) and signs server certificates
for an IP address or a host name (subject alternative name set, so a client verifying with the
default context and ``SSL_CERT_FILE=<ca.file>`` accepts them). Used for `netprobe serve
--tls-cert` in the tests and for coturn's TLS listener in the lab (`netprobe.lab.coturn`).
Never for anything real: the keys are written unencrypted beside the certificates.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class ThrowawayCA:
    """A CA whose certificate is written to ``directory / "ca.pem"`` (`file`)."""

    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name("netprobe test CA"))
                     .issuer_name(_name("netprobe test CA")).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.file = directory / "ca.pem"
        """The CA certificate (PEM): what a client trusts (``SSL_CERT_FILE``)."""
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert_path: Path, key_path: Path, host: str = "127.0.0.1") -> str:
        """Write a certificate for ``host`` (an IP address or a DNS name) and its key (mode
        0600); returns the certificate's SHA-256 (hex, of the DER)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(host))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([_san(host)]), False)
                .sign(self.key, hashes.SHA256()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
