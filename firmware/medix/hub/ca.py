"""The hub's certificate authority: its key and certificate, the hub's TLS server certificate,
node certificates signed from CSRs, and the signatures on receipts.

Files live in one directory (the hub keeps it at `<data_dir>/ca/`): `ca.key` and `server.key`
(EC P-256, mode 0600), `ca.crt` and `server.crt`. They are made on first start and reused ever
after; the server certificate alone is re-issued when its names change or it nears expiry.

What a node needs of the hub's signatures (`verify_receipt`) lives in `medix.receipts`, and
the durable file writes in `medix.durable`: the node imports neither the hub nor this module.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medix.durable import write_private, write_public
from medix.receipts import canonical_json

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=825)
NODE_VALIDITY = dt.timedelta(days=365)
# Re-issue the server certificate this long before it expires, so a running hub never serves
# an expired one after a restart.
SERVER_RENEW_BEFORE = dt.timedelta(days=30)
# Certificates start a little in the past: a node whose clock lags the hub's by a few minutes
# must still accept them.
BACKDATE = dt.timedelta(minutes=5)
DEFAULT_SERVER_NAMES = ("127.0.0.1", "localhost")
MIN_RSA_BITS = 2048
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CSRError(ValueError):
    """A certificate signing request the hub will not sign; the message says why."""


def fingerprint(cert_pem: str | bytes) -> str:
    """SHA-256 (hex, lower case) of a certificate's DER encoding: how the hub names a node."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _now() -> dt.datetime:
    # Certificates are checked by TLS stacks against the real clock, never a test clock.
    return dt.datetime.now(dt.UTC)


def read_or_make_token(path: Path) -> str:
    """The secret token in `path`, made (mode 0600) when the file does not exist yet.

    An empty file is an error, never an empty token: compared with an empty bearer token it
    would open whatever the token guards."""
    if path.exists():
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty; remove it to have a new token made")
        return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, token.encode() + b"\n")
    return token


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in (*DEFAULT_SERVER_NAMES, *names):
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


class HubCA:
    """The CA of one hub, loaded from (or made in) `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        hub_name: str = "Reference hub",
        server_names: Iterable[str] = (),
    ) -> None:
        self.directory = directory
        self.hub_name = hub_name
        self.ca_key_path = directory / "ca.key"
        self.ca_cert_path = directory / "ca.crt"
        self.server_key_path = directory / "server.key"
        self.server_cert_path = directory / "server.crt"
        self._server_names = _general_names(server_names)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ca_key, self._ca_cert = self._load_or_make_ca()
        self._ensure_server_cert()
        self.ca_pem = self._ca_cert.public_bytes(serialization.Encoding.PEM).decode()

    # -- the CA itself ---------------------------------------------------------------------

    def _load_or_make_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if self.ca_key_path.exists() and self.ca_cert_path.exists():
            key = _load_key(self.ca_key_path)
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
            return key, cert
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"{self.hub_name} Medix CA"[:64]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Medix hub"),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a certificate without its key would be useless after a crash in between.
        write_private(self.ca_key_path, _key_pem(key))
        write_public(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM))
        # A server certificate from an older CA must not survive the new one.
        self.server_cert_path.unlink(missing_ok=True)
        return key, cert

    def _issue(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        validity: dt.timedelta,
        usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
        names: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        now = _now()
        not_after = min(now + validity, self._ca_cert.not_valid_after_utc)
        ca_ski = self._ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._ca_key, hashes.SHA256())

    # -- the hub's TLS certificate ---------------------------------------------------------

    def _server_cert_usable(self) -> bool:
        if not (self.server_key_path.exists() and self.server_cert_path.exists()):
            return False
        cert = x509.load_pem_x509_certificate(self.server_cert_path.read_bytes())
        if cert.issuer != self._ca_cert.subject:
            return False
        if cert.not_valid_after_utc - SERVER_RENEW_BEFORE < _now():
            return False
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return set(san) == set(self._server_names)

    def _ensure_server_cert(self) -> None:
        if self._server_cert_usable():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"{self.hub_name} Medix hub"[:64])]
        )
        cert = self._issue(
            subject,
            key.public_key(),
            SERVER_VALIDITY,
            ExtendedKeyUsageOID.SERVER_AUTH,
            self._server_names,
        )
        write_private(self.server_key_path, _key_pem(key))
        write_public(self.server_cert_path, cert.public_bytes(serialization.Encoding.PEM))

    # -- nodes and receipts ----------------------------------------------------------------

    def sign_csr(self, csr_pem: str, node_id: str) -> str:
        """A one-year certificate (CN and DNS name = node_id) for the key in a CSR whose
        signature holds: the node's client certificate, and the server certificate of its own
        HTTP API (the hub verifies that against its CA and the node id, not an address).

        The subject the node asked for is ignored: the hub names its nodes.
        """
        csr = self.check_csr(csr_pem)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CSRError("only EC (P-256) and RSA keys are accepted")
        cert = self._issue(
            subject,
            public_key,
            NODE_VALIDITY,
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            [x509.DNSName(node_id)],
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    @staticmethod
    def check_csr(csr_pem: str) -> x509.CertificateSigningRequest:
        """The parsed CSR when it is one the hub would sign; CSRError says why not."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CSRError("csr_pem is not a PEM certificate signing request") from exc
        if not csr.is_signature_valid:
            raise CSRError("the CSR's signature does not verify")
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, ACCEPTED_CURVES):
                raise CSRError(f"curve {public_key.curve.name} not accepted; use P-256")
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < MIN_RSA_BITS:
                raise CSRError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        else:
            raise CSRError("only EC (P-256) and RSA keys are accepted")
        return csr

    def sign_receipt(self, fields: Mapping[str, object]) -> str:
        """Base64 ECDSA P-256 SHA-256 signature over the canonical JSON of `fields`."""
        signature = self._ca_key.sign(canonical_json(fields), ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def new_secret(self, name: str, nbytes: int = 32) -> bytes:
        """A random secret kept in this directory (mode 0600), made once and reused."""
        path = self.directory / name
        if path.exists():
            return path.read_bytes()
        secret = secrets.token_bytes(nbytes)
        write_private(path, secret)
        return secret
