"""Receipts: the bytes the hub's signature covers, and the node's check of it.

The hub signs (`medix.hub.ca.HubCA.sign_receipt` over `canonical_json(receipt_fields(r))`);
the node verifies with the pinned hub CA certificate. Only `cryptography` and the message
models are imported, so the node needs nothing of the hub.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from medix.models import Receipt


def canonical_json(fields: Mapping[str, object]) -> bytes:
    """The bytes a receipt signature covers: sorted keys, no whitespace, UTF-8."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def receipt_fields(receipt: Receipt) -> dict[str, object]:
    """A receipt's signed fields: every field but the signature, as JSON values."""
    return receipt.model_dump(mode="json", exclude={"signature"})


def verify_receipt(receipt: Receipt, ca_pem: str) -> bool:
    """True when `receipt.signature` is the hub CA's signature over the receipt's other fields."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        key = ca.public_key()
        signature = base64.b64decode(receipt.signature, validate=True)
    except (ValueError, binascii.Error):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, canonical_json(receipt_fields(receipt)), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
