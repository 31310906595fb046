"""Who may sign what: the provenance policy for model versions and runbooks, and its configuration."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.security.identity import (
    DEFAULT_TRUST_DOMAIN,
    WorkloadKind,
    parse_spiffe_id,
    resolve_workload_id,
    workload_id,
)
from x0tta6bl4.security.signing import HybridSignature, SignatureError, SignatureVerifier, Signer

if TYPE_CHECKING:
    from x0tta6bl4.security.ledger import AuditRecorder

#: Signing contexts: a signature made for one kind of artifact never verifies as another.
MODEL_CONTEXT = "model-version"
RUNBOOK_CONTEXT = "runbook"


class ProvenanceConfig(BaseModel):
    """Which signatures the platform requires, and whose it accepts."""

    model_config = ConfigDict(extra="forbid")

    require_signatures: bool = Field(
        default=True,
        description="refuse unsigned or wrongly signed model versions and runbooks (off: accept and log)",
    )
    ca_dir: str | None = Field(
        default=None, description="the CA whose signers are trusted (default $X0TTA6BL4_CA_DIR)"
    )
    ledger_dir: str | None = Field(
        default=None,
        description="the audit ledger (default $X0TTA6BL4_LEDGER_DIR, else ledger/ beside the CA)",
    )
    model_signers: list[str] = Field(
        default_factory=lambda: ["trainer"],
        description="identities allowed to sign model versions: SPIFFE IDs, <kind>[/<instance>], or a "
        "prefix ending in /* (e.g. operator/*)",
    )
    runbook_signers: list[str] = Field(
        default_factory=lambda: ["operator/*", "controller"],
        description="identities allowed to sign runbooks (same forms as model_signers); the controller "
        "signs the documents it writes about incidents it resolved",
    )

    def resolved(self) -> ProvenanceConfig:
        """A copy with absolute directories (actors and replicas may run elsewhere)."""
        from x0tta6bl4.security.ca import default_ca_dir
        from x0tta6bl4.security.ledger import default_ledger_dir

        out = self.model_copy(deep=True)
        out.ca_dir = str(Path(self.ca_dir or default_ca_dir()).expanduser().resolve())
        out.ledger_dir = str(Path(self.ledger_dir or default_ledger_dir(out.ca_dir)).expanduser().resolve())
        return out


def _pattern(text: str, trust_domain: str) -> str:
    """A full SPIFFE ID, or a full prefix ending in ``/`` for ``.../*`` forms."""
    wildcard = text.endswith("/*")
    body = text[:-2] if wildcard else text
    if body.startswith("spiffe://"):
        full = str(parse_spiffe_id(body))
    else:
        kind, _, instance = body.partition("/")
        if wildcard and not instance:
            full = f"spiffe://{trust_domain}/{WorkloadKind(kind).value}"
        else:
            full = str(workload_id(kind, instance or None, trust_domain))
    return full + "/" if wildcard else full


def signer_allowed(spiffe_id: str, allowed: Sequence[str], trust_domain: str = DEFAULT_TRUST_DOMAIN) -> bool:
    """Whether ``spiffe_id`` matches one of ``allowed`` (IDs, ``kind/instance`` or ``.../*`` prefixes)."""
    for text in allowed:
        pattern = _pattern(text, trust_domain)
        if spiffe_id == pattern or (pattern.endswith("/") and spiffe_id.startswith(pattern)):
            return True
    return False


class ProvenancePolicy:
    """Checks signatures of model versions and runbooks against a :class:`ProvenanceConfig`."""

    def __init__(self, config: ProvenanceConfig | None = None) -> None:
        self.config = (config or ProvenanceConfig()).resolved()

    @functools.cached_property
    def verifier(self) -> SignatureVerifier:
        return SignatureVerifier(str(self.config.ca_dir))

    def check(self, record: Any, payload: bytes, context: str, allowed: Sequence[str]) -> str:
        """Verify a signature record over ``payload``; returns the signer's SPIFFE ID.

        Raises:
            SignatureError: ``unsigned`` (no record), ``disallowed``, or any reason of
                :meth:`SignatureVerifier.verify`.
        """
        if record is None:
            raise SignatureError(
                "unsigned", f"no signature (a {context} must be signed by {', '.join(allowed)})"
            )
        self.verifier.reload()
        signature = HybridSignature.parse(record)
        sid = str(self.verifier.verify(signature, payload, context))
        trust_domain = str(self.verifier.trust_domain)
        if not signer_allowed(sid, allowed, trust_domain):
            raise SignatureError(
                "disallowed", f"{sid} is not allowed to sign a {context} (allowed: {', '.join(allowed)})"
            )
        return sid

    def check_model(self, record: Any, manifest: bytes) -> str:
        """:meth:`check` for a model version's manifest against ``model_signers``."""
        return self.check(record, manifest, MODEL_CONTEXT, self.config.model_signers)

    def check_runbook(self, record: Any, text: bytes) -> str:
        """:meth:`check` for a runbook's text against ``runbook_signers``."""
        return self.check(record, text, RUNBOOK_CONTEXT, self.config.runbook_signers)

    def signer(self, kind: WorkloadKind | str, instance: str | None = None) -> Signer:
        """This machine's signing identity of a workload (from the configured CA, made on first use).

        ``kind`` may also be a whole ``<kind>[/<instance>]`` or SPIFFE ID string.
        """
        from x0tta6bl4.security.ca import EmbeddedCA

        ca = EmbeddedCA.open(self.config.ca_dir)
        if isinstance(kind, WorkloadKind):
            sid = workload_id(kind, instance, ca.trust_domain)
        else:
            sid = resolve_workload_id(kind, ca.trust_domain)
        return Signer.obtain(ca, sid)

    def recorder(self, kind: WorkloadKind | str, instance: str | None = None) -> AuditRecorder:
        """The workload's pen on the configured audit ledger."""
        from x0tta6bl4.security.ledger import AuditRecorder, Ledger

        return AuditRecorder(Ledger(self.config.ledger_dir), self.signer(kind, instance))
