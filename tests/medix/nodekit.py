"""What a test needs to act as a Medix node: a key and CSR, and a study cut into parts."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medix.models import CommitRequest, ManifestEntry, Patient, StudyRegistration

PART_SIZE = 65536  # the smallest part size the models allow: small studies still span parts
STUDY_ROOT = "1.2.826.0.1.3680043.10.999"
MEDIS_CODE = "K7QM2XHP9RTC"
BIRTH_DATE = "19800131"
PHYSICIAN = "Rahimi^Ali"
PATIENT_NAME = "Karimi^Sara"


@dataclass
class NodeKey:
    key_pem: bytes
    csr_pem: str

    def write(self, directory: Path, cert_pem: str) -> tuple[str, str]:
        """Write key and certificate files for requests' `cert=`; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "node.key"
        cert_path = directory / "node.crt"
        key_path.write_bytes(self.key_pem)
        cert_path.write_text(cert_pem)
        return str(cert_path), str(key_path)


def node_key(common_name: str = "test-node") -> NodeKey:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return NodeKey(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
    )


def enrol_body(code: str, csr_pem: str, name: str = "Test node") -> dict[str, str]:
    return {
        "pairing_code": code,
        "node_name": name,
        "csr_pem": csr_pem,
        "software_version": "0.1.0",
    }


@dataclass
class Study:
    """Instances, their stream cut into parts, and the bodies a node sends for them."""

    registration: StudyRegistration
    instances: dict[str, bytes]  # SOP Instance UID -> file bytes, in stream order
    parts: list[bytes]
    commit: CommitRequest

    def part_headers(self, n: int, data: bytes | None = None) -> dict[str, str]:
        digest = hashlib.sha256(self.parts[n] if data is None else data).hexdigest()
        return {"X-Medix-Part-SHA256": digest, "Content-Type": "application/octet-stream"}

    def encoded_part(self, n: int) -> tuple[bytes, dict[str, str]]:
        """Even parts travel zstd-compressed, odd ones as they are: both paths get used."""
        headers = self.part_headers(n)
        if n % 2 == 0:
            headers["Content-Encoding"] = "zstd"
            return zstandard.ZstdCompressor(level=3).compress(self.parts[n]), headers
        headers["Content-Encoding"] = "identity"
        return self.parts[n], headers


def make_study(
    sizes: tuple[int, ...] = (30000, 100000, 5000, 70000),
    *,
    study_number: int = 1,
    revision: int = 0,
    medis_code: str = MEDIS_CODE,
    birth_date: str = BIRTH_DATE,
    physician: str = PHYSICIAN,
    patient_name: str = PATIENT_NAME,
    seed: int = 7,
) -> Study:
    rng = random.Random(seed + study_number * 1000 + revision)
    study_uid = f"{STUDY_ROOT}.{study_number}"
    series_uid = f"{study_uid}.1"
    instances: dict[str, bytes] = {}
    entries = []
    offset = 0
    for index, size in enumerate(sizes, start=1):
        uid = f"{series_uid}.{revision}.{index}"
        # Half compressible header-like text, half noise: like a small image file.
        text = (f"DICM {uid} " * (size // 40 + 1)).encode()[: size // 2]
        data = (b"\0" * 128 + b"DICM" + text + rng.randbytes(size))[:size]
        instances[uid] = data
        entries.append(
            ManifestEntry(
                sop_instance_uid=uid,
                series_uid=series_uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                offset=offset,
                size=size,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        offset += size
    stream = b"".join(instances.values())
    parts = [stream[i : i + PART_SIZE] for i in range(0, len(stream), PART_SIZE)]
    registration = StudyRegistration(
        study_uid=study_uid,
        revision=revision,
        medis_code=medis_code,
        patient=Patient(name=patient_name, patient_id="P-1", birth_date=birth_date),
        referring_physician=physician,
        study_date="20250301",
        study_description="CHEST PA",
        modalities=("CR",),
        instance_count=len(sizes),
        stream_size=len(stream),
        part_size=PART_SIZE,
        parts=math.ceil(len(stream) / PART_SIZE),
    )
    commit = CommitRequest(
        instances=tuple(entries), stream_sha256=hashlib.sha256(stream).hexdigest()
    )
    return Study(registration, instances, parts, commit)
