"""The hub CA: files and modes, reuse, node certificates from CSRs, receipt signatures."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medix.hub.ca import CSRError, HubCA, fingerprint
from medix.models import Receipt
from medix.receipts import receipt_fields, verify_receipt
from tests.medix.nodekit import MEDIS_CODE, node_key


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def unsigned_receipt() -> Receipt:
    return Receipt(
        receipt_id="r1",
        upload_id="u1",
        study_uid="1.2.3",
        revision=0,
        medis_code=MEDIS_CODE,
        instance_count=3,
        stream_sha256="a" * 64,
        received_at=1_800_000_000.125,
        signature="",
    )


def signed(ca: HubCA) -> Receipt:
    receipt = unsigned_receipt()
    return receipt.model_copy(update={"signature": ca.sign_receipt(receipt_fields(receipt))})


def test_ca_files_modes_and_certificates(tmp_path: Path) -> None:
    ca = HubCA(tmp_path / "ca", server_names=("hub.example", "10.0.0.5"))
    for key in (ca.ca_key_path, ca.server_key_path):
        assert key.stat().st_mode & 0o777 == 0o600
    root = load(ca.ca_cert_path)
    assert root.subject == root.issuer
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    server = load(ca.server_cert_path)
    server.verify_directly_issued_by(root)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "hub.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_ca_is_reused_and_server_cert_follows_the_names(tmp_path: Path) -> None:
    first = HubCA(tmp_path / "ca")
    server_pem = first.server_cert_path.read_bytes()
    second = HubCA(tmp_path / "ca")
    assert second.ca_pem == first.ca_pem
    assert second.server_cert_path.read_bytes() == server_pem
    renamed = HubCA(tmp_path / "ca", server_names=("hub.example",))
    assert renamed.ca_pem == first.ca_pem
    assert renamed.server_cert_path.read_bytes() != server_pem


def test_sign_csr_makes_a_one_year_node_certificate(tmp_path: Path) -> None:
    ca = HubCA(tmp_path / "ca")
    key = node_key("whatever-the-node-asks")
    pem = ca.sign_csr(key.csr_pem, "node-abc")
    cert = x509.load_pem_x509_certificate(pem.encode())
    cert.verify_directly_issued_by(load(ca.ca_cert_path))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-abc"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # A client certificate, and the server certificate of the node's own API, named by id.
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-abc"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=365) <= lifetime <= dt.timedelta(days=366)
    node_public = serialization.load_pem_private_key(key.key_pem, None).public_key()
    assert cert.public_key() == node_public
    der = cert.public_bytes(serialization.Encoding.DER)
    assert fingerprint(pem) == hashlib.sha256(der).hexdigest()


def test_sign_csr_refuses_bad_requests(tmp_path: Path) -> None:
    ca = HubCA(tmp_path / "ca")
    with pytest.raises(CSRError, match="not a PEM"):
        ca.sign_csr("hello", "node-x")
    good = x509.load_pem_x509_csr(node_key().csr_pem.encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CSRError, match="signature"):
        ca.sign_csr(tampered.decode(), "node-x")
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed")]))
        .sign(ed_key, None)
    )
    with pytest.raises(CSRError, match="accepted"):
        ca.sign_csr(ed_csr.public_bytes(serialization.Encoding.PEM).decode(), "node-x")


def test_receipt_signatures(tmp_path: Path) -> None:
    ca = HubCA(tmp_path / "ca")
    receipt = signed(ca)
    assert verify_receipt(receipt, ca.ca_pem)
    # Survives the trip through JSON, as the node stores it.
    assert verify_receipt(Receipt.model_validate_json(receipt.model_dump_json()), ca.ca_pem)
    assert not verify_receipt(receipt.model_copy(update={"revision": 1}), ca.ca_pem)
    assert not verify_receipt(receipt.model_copy(update={"signature": "!!"}), ca.ca_pem)
    assert not verify_receipt(
        receipt.model_copy(update={"signature": base64.b64encode(b"x" * 70).decode()}), ca.ca_pem
    )
    other = HubCA(tmp_path / "other")
    assert not verify_receipt(receipt, other.ca_pem)
    assert not verify_receipt(receipt, "not a certificate")


def test_signature_covers_canonical_json(tmp_path: Path) -> None:
    ca = HubCA(tmp_path / "ca")
    receipt = signed(ca)
    fields = receipt_fields(receipt)
    assert "signature" not in fields
    canonical = (
        '{"instance_count":3,"medis_code":"K7QM2XHP9RTC","receipt_id":"r1",'
        '"received_at":1800000000.125,"revision":0,"stream_sha256":"' + "a" * 64 + '",'
        '"study_uid":"1.2.3","upload_id":"u1"}'
    ).encode()
    public = load(ca.ca_cert_path).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(receipt.signature), canonical, ec.ECDSA(hashes.SHA256()))


def test_verify_receipt_does_not_need_the_hub() -> None:
    code = (
        "import sys, medix.receipts; "
        "assert not any(m == 'flask' or m.startswith('medix.hub') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith(('flask', 'medix.hub')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
