"""Ed25519 signatures over a package's file digests (``cryptography``), kept beside the package.

``<package>.sig`` is JSON: the signed payload (package file name, archive sha256, expert name and
version, and every member's path → sha256), the signature over the payload's exact bytes, and the
signer's public key and key id (sha256 of the raw public key). Signing never touches the package.
Trust comes from the verifier's keys (``--key`` or ``--trusted-keys DIR``), never from the key
embedded in the signature, which only says who *claims* to have signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from expertkit.fsutil import write_text_atomic
from expertkit.home import expertkit_home
from expertkit.package.archive import PackageError

KEY_FILE, PUBLIC_FILE = "expert.key", "expert.pub"
SIGNATURE_FORMAT = "expertkit-signature/v1"
ALGORITHM = "ed25519"


@dataclass(frozen=True)
class PublicKey:
    key: Any  # cryptography's Ed25519PublicKey
    key_id: str
    source: str

    def verifies(self, signature: bytes, payload: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signature:
    path: Path
    payload_bytes: bytes
    payload: dict[str, Any]
    signature: bytes
    claimed: PublicKey


def signature_path(package: Path) -> Path:
    return package.with_name(package.name + ".sig")


def default_trusted_keys_dir() -> Path:
    return expertkit_home() / "trusted-keys"


def _raw(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def key_id_of(public: Any) -> str:
    return "ed25519:" + hashlib.sha256(_raw(public)).hexdigest()[:16]


def keygen(out_dir: Path, force: bool = False) -> tuple[Path, Path, str]:
    """Write ``expert.key`` (PKCS#8 PEM, mode 0600) and ``expert.pub``; refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path, pub_path = out_dir / KEY_FILE, out_dir / PUBLIC_FILE
    existing = [str(p) for p in (key_path, pub_path) if p.exists()]
    if existing and not force:
        raise PackageError(f"refusing to overwrite {', '.join(existing)}", "choose another --out, or pass --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = key_path.with_name(f".{KEY_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(pem)
    tmp.replace(key_path)
    public = private.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_text_atomic(pub_path, public_pem.decode("ascii"))
    return key_path, pub_path, key_id_of(public)


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PackageError(f"cannot read the private key {path}: {exc}", "create one with: expert-cli keygen") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"{path} is not an Ed25519 private key", "create one with: expert-cli keygen")
    return key


def load_public_key(path: Path) -> PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise PackageError(f"cannot read the public key {path}: {exc}", "pass the signer's expert.pub") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise PackageError(f"{path} is not an Ed25519 public key", "pass the signer's expert.pub")
    return PublicKey(key, key_id_of(key), str(path))


def trusted_keys(directory: Path) -> list[PublicKey]:
    """Every ``*.pub`` in ``directory``."""
    if not directory.is_dir():
        raise PackageError(f"trusted keys directory {directory} does not exist", "put the signers' *.pub files there")
    keys = [load_public_key(p) for p in sorted(directory.glob("*.pub"))]
    if not keys:
        raise PackageError(f"no *.pub keys in {directory}", "put the signers' expert.pub files there")
    return keys


def payload_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_signature(package: Path, payload: dict[str, Any], key_path: Path) -> tuple[Path, str]:
    """Sign ``payload`` with the private key and write ``<package>.sig``; returns it and the key id."""
    private = load_private_key(key_path)
    body = payload_bytes({**payload, "signed_at": datetime.now(UTC).isoformat(timespec="seconds")})
    public = private.public_key()
    document = {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "key_id": key_id_of(public),
        "public_key": base64.b64encode(_raw(public)).decode("ascii"),
        "payload": base64.b64encode(body).decode("ascii"),
        "signature": base64.b64encode(private.sign(body)).decode("ascii"),
    }
    path = signature_path(package)
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
    return path, document["key_id"]


def read_signature(path: Path) -> Signature:
    """Parse ``<package>.sig``; any malformation is a PackageError naming the file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != SIGNATURE_FORMAT or document.get("algorithm") != ALGORITHM:
            raise ValueError(f"unknown format {document.get('format')!r}/{document.get('algorithm')!r}")
        body = base64.b64decode(document["payload"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(document["public_key"], validate=True))
        signature = base64.b64decode(document["signature"], validate=True)
        payload = json.loads(body.decode("utf-8"))
        if not isinstance(payload, dict) or not isinstance(payload.get("files"), dict):
            raise ValueError("the payload has no file list")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PackageError(f"{path} is not a valid signature file: {exc}", "re-sign the package") from exc
    return Signature(path, body, payload, signature, PublicKey(public, key_id_of(public), "signature file"))
