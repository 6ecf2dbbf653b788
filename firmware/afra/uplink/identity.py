"""The node's identity: its own key pair, the certificate the hub signed, the pinned hub CA.

Files live in `<data_dir>/identity/`: `node.key` (EC P-256, mode 0600, never logged),
`node.crt`, `hub-ca.pem` (the CA given at enrolment; every TLS connection to the hub is
verified against it and nothing else) and `enrolment.json` (node id, hub URL).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from afra.errors import AfraError
from medix.durable import write_private, write_public


class IdentityError(AfraError, ValueError):
    """The node's identity files are missing or unusable."""


class NodeIdentity:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key_path = directory / "node.key"
        self.cert_path = directory / "node.crt"
        self.ca_path = directory / "hub-ca.pem"
        self.meta_path = directory / "enrolment.json"
        self.webhook_key_path = directory / "webhook.key"
        self.api_token_path = directory / "node-api-token.sha256"

    def ensure_key(self) -> None:
        """Make the node's key pair on first start; keep it ever after."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.key_path.exists():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(self.key_path, pem)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise IdentityError(f"node key {self.key_path} is unusable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"node key {self.key_path} is not an EC key")
        return key

    def csr_pem(self, node_name: str) -> str:
        self.ensure_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
            .sign(self._key(), hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def save_enrolment(
        self,
        *,
        node_id: str,
        hub_url: str,
        cert_pem: str,
        ca_pem: str,
        webhook_key: str = "",
        node_api_token: str = "",
    ) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        if cert.public_key() != self._key().public_key():
            raise IdentityError("the hub returned a certificate for another key")
        write_public(self.cert_path, cert_pem.encode("ascii"))
        write_public(self.ca_path, ca_pem.encode("ascii"))
        if webhook_key:
            write_private(self.webhook_key_path, webhook_key.encode("ascii"))
        if node_api_token:  # only its hash is kept: a stolen card cannot call the API
            digest = hashlib.sha256(node_api_token.encode("utf-8")).hexdigest()
            write_private(self.api_token_path, digest.encode("ascii"))
        meta = {"node_id": node_id, "hub_url": hub_url.rstrip("/")}
        write_public(self.meta_path, json.dumps(meta, indent=2).encode("utf-8"))

    def move_hub(self, hub_url: str) -> None:
        """The same hub (same CA, same certificate) is now reached at `hub_url`: the local
        reference hub of `afra emulate` started on another port."""
        meta = {**self._meta(), "hub_url": hub_url.rstrip("/")}
        write_public(self.meta_path, json.dumps(meta, indent=2).encode("utf-8"))

    @property
    def enrolled(self) -> bool:
        return all(
            p.exists() for p in (self.key_path, self.cert_path, self.ca_path, self.meta_path)
        )

    def _meta(self) -> dict[str, str]:
        try:
            data = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IdentityError(f"enrolment record {self.meta_path} is unusable: {exc}") from None
        return {str(k): str(v) for k, v in data.items()}

    @property
    def node_id(self) -> str:
        return self._meta()["node_id"]

    @property
    def hub_url(self) -> str:
        return self._meta()["hub_url"]

    @property
    def webhook_key(self) -> str:
        """The HMAC key download progress is signed with; empty if the hub gave none."""
        try:
            return self.webhook_key_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return ""

    def api_token_ok(self, token: str) -> bool:
        """Whether `token` is the bearer token the hub received at enrolment."""
        try:
            expected = self.api_token_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return False
        given = hashlib.sha256(token.encode("utf-8")).hexdigest()
        return bool(expected) and hmac.compare_digest(given, expected)
