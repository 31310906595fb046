"""Signed model versions: the writer's hybrid signature over a version's manifest, checked by a policy.

The manifest lists the SHA-256 and size of every file of the version, so one signature over
its bytes covers the whole version. The signature lives beside it in ``SIGNATURE.json``
(written after the manifest commits the version; a version without it is unsigned).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from x0tta6bl4.models.registry import ModelRegistry, RegistryError
from x0tta6bl4.models.versions import MANIFEST, SIGNATURE
from x0tta6bl4.security.provenance import MODEL_CONTEXT, ProvenancePolicy
from x0tta6bl4.security.signing import SignatureError

if TYPE_CHECKING:
    from x0tta6bl4.security.signing import Signer

log = logging.getLogger(__name__)


class UntrustedVersionError(RegistryError):
    """A version that is unsigned, or signed by an identity the provenance policy does not allow.

    ``reason`` is the signature check's word (``unsigned``, ``disallowed``, ``bad-signature``, ...).
    A RegistryError, so Serve keeps the previous version serving and reports this one's refusal.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sign_version(registry: ModelRegistry, model: str, version: str, signer: Signer) -> str:
    """Sign a committed version's manifest and store ``SIGNATURE.json``; returns the signer's SPIFFE ID.

    Raises:
        RegistryError: unknown or corrupt version; RegistryNotWritableError: the write failed.
    """
    registry.get(model, version)  # the manifest exists and is sound
    raw = registry.read_version_file(model, version, MANIFEST)
    record = signer.sign(raw, MODEL_CONTEXT).to_dict()
    registry.write_version_file(model, version, SIGNATURE, json.dumps(record, indent=1).encode())
    log.info("registry: %s/%s signed by %s", model, version, signer.spiffe_id)
    return str(signer.spiffe_id)


def check_signature(
    registry: ModelRegistry, model: str, version: str, policy: ProvenancePolicy
) -> str | None:
    """Verify a version's signature against ``policy``; returns the signer's SPIFFE ID.

    With ``policy.config.require_signatures`` off, a failed check is logged and None returned.

    Raises:
        UntrustedVersionError: unsigned, or a signature that fails or is not allowed.
        RegistryError: the manifest cannot be read.
    """
    try:
        manifest = registry.read_version_file(model, version, MANIFEST)
    except OSError as exc:
        raise RegistryError(f"cannot read {model} {version}: {exc}") from exc
    try:
        record: Any = json.loads(registry.read_version_file(model, version, SIGNATURE))
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as exc:
        record = {"unreadable": str(exc)}
    try:
        return policy.check_model(record, manifest)
    except SignatureError as exc:
        message = f"{model} version {version} is refused: {exc} ({exc.reason})"
        if not policy.config.require_signatures:
            log.warning("%s; accepted because require_signatures is off", message)
            return None
        raise UntrustedVersionError(exc.reason, message) from None
