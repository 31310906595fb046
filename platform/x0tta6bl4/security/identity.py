"""SPIFFE IDs of the platform's workloads: one per kind and instance, validated per the SPIFFE-ID spec.

Paths are ``/<kind>`` or ``/<kind>/<instance>`` under the platform's trust domain, e.g.
``spiffe://x0tta6bl4.local/shard/region-3`` or ``spiffe://x0tta6bl4.local/operator/alice``.
Parsing uses py-spiffe's :class:`~spiffe.SpiffeId` (scheme, trust-domain characters, no empty,
``.`` or ``..`` segments, path characters) and adds the spec's 2,048-byte limit; every failure
is an :class:`InvalidSpiffeIdError`.
"""

from __future__ import annotations

import re
from enum import StrEnum

from spiffe import SpiffeId, TrustDomain
from spiffe.errors import PySpiffeError

from x0tta6bl4.security.errors import InvalidSpiffeIdError

#: The trust domain of the embedded CA unless configured otherwise.
DEFAULT_TRUST_DOMAIN = "x0tta6bl4.local"

#: The SPIFFE-ID spec's upper bound on a whole ID's length, in bytes.
MAX_SPIFFE_ID_BYTES = 2048

#: The spec's upper bound on a trust domain name's length, in bytes.
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_INSTANCE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class WorkloadKind(StrEnum):
    """Every kind of workload that carries an identity; the value is its path prefix."""

    SHARD = "shard"
    EBPF_SOURCE = "ebpf"
    SERVE_GATEWAY = "serve/gateway"
    SERVE_ANOMALY = "serve/anomaly"
    SERVE_RAG = "serve/rag"
    FRONT = "front"
    CONTROLLER = "controller"
    TRAINER = "trainer"
    FLOWER_SERVER = "flower/server"
    FLOWER_CLIENT = "flower/client"
    OPERATOR = "operator"
    AUTHORITY = "ca"

    @property
    def needs_instance(self) -> bool:
        """Kinds with many members name the instance (a shard's region, an operator's name)."""
        return self in _INSTANCED


_INSTANCED = {
    WorkloadKind.SHARD,
    WorkloadKind.EBPF_SOURCE,
    WorkloadKind.FLOWER_CLIENT,
    WorkloadKind.OPERATOR,
}


def parse_trust_domain(name: str) -> TrustDomain:
    """A trust domain from a bare name or a ``spiffe://`` ID; InvalidSpiffeIdError when invalid."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_BYTES + len("spiffe://"):
        raise InvalidSpiffeIdError(f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    bare = name[len("spiffe://") :].partition("/")[0] if name.startswith("spiffe://") else name
    if not _TRUST_DOMAIN.match(bare):
        raise InvalidSpiffeIdError(
            f"invalid trust domain {name[:80]!r}: use lowercase letters, digits, '.', '-', '_'"
        )
    try:
        domain = TrustDomain(name)
    except PySpiffeError as exc:
        raise InvalidSpiffeIdError(f"invalid trust domain {name[:80]!r}: {exc}") from None
    if len(domain.name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeIdError(f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    return domain


def parse_spiffe_id(text: str) -> SpiffeId:
    """A SPIFFE ID from its URI form; InvalidSpiffeIdError on anything the spec forbids.

    Workload IDs need a path: the bare trust-domain ID names a domain, not a workload.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        raise InvalidSpiffeIdError(f"SPIFFE ID longer than {MAX_SPIFFE_ID_BYTES} bytes")
    if not text.startswith("spiffe://"):
        raise InvalidSpiffeIdError(f"invalid SPIFFE ID {text[:80]!r}: the scheme must be 'spiffe://'")
    if not _TRUST_DOMAIN.match(text[len("spiffe://") :].partition("/")[0]):
        raise InvalidSpiffeIdError(
            f"invalid SPIFFE ID {text[:80]!r}: trust domains use lowercase letters, digits, '.', '-', '_'"
        )
    try:
        spiffe_id = SpiffeId(text)
    except PySpiffeError as exc:
        raise InvalidSpiffeIdError(f"invalid SPIFFE ID {text[:80]!r}: {exc}") from None
    if len(spiffe_id.trust_domain.name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeIdError(f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if not spiffe_id.path:
        raise InvalidSpiffeIdError(f"SPIFFE ID {text[:80]!r} names a trust domain, not a workload")
    return spiffe_id


def workload_id(
    kind: WorkloadKind | str, instance: str | None = None, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> SpiffeId:
    """The SPIFFE ID of one workload, e.g. ``workload_id("shard", "region-3")``.

    Args:
        kind: the workload kind (a :class:`WorkloadKind` or its value).
        instance: the member of a many-member kind (required for shards, eBPF sources, Flower
            clients and operators; refused for the singletons).
        trust_domain: the trust domain (default :data:`DEFAULT_TRUST_DOMAIN`).

    Raises:
        InvalidSpiffeIdError: unknown kind, missing or unexpected instance, invalid characters.
    """
    try:
        k = WorkloadKind(kind)
    except ValueError:
        known = ", ".join(w.value for w in WorkloadKind)
        raise InvalidSpiffeIdError(f"unknown workload kind {str(kind)[:40]!r} (known: {known})") from None
    if k.needs_instance and not instance:
        raise InvalidSpiffeIdError(f"workload kind {k.value!r} needs an instance name")
    if not k.needs_instance and instance:
        raise InvalidSpiffeIdError(f"workload kind {k.value!r} has one instance; got {instance[:40]!r}")
    if instance is not None and not _INSTANCE.match(instance):
        raise InvalidSpiffeIdError(f"instance {instance[:40]!r}: use 1-128 letters, digits, '.', '_' or '-'")
    if instance in (".", ".."):
        raise InvalidSpiffeIdError("instance may not be '.' or '..'")
    domain = parse_trust_domain(trust_domain)
    path = f"/{k.value}" + (f"/{instance}" if instance else "")
    return parse_spiffe_id(f"spiffe://{domain.name}{path}")


def kind_of(spiffe_id: SpiffeId) -> WorkloadKind | None:
    """The platform workload kind an ID names (None for IDs outside the platform's scheme)."""
    path = spiffe_id.path.lstrip("/")
    for kind in sorted(WorkloadKind, key=lambda k: -len(k.value)):
        prefix = kind.value
        if path == prefix and not kind.needs_instance:
            return kind
        if kind.needs_instance and path.startswith(prefix + "/") and "/" not in path[len(prefix) + 1 :]:
            return kind
    return None


def is_operator(spiffe_id: SpiffeId) -> bool:
    """True for operator identities (the only ones allowed to write runbooks)."""
    return kind_of(spiffe_id) is WorkloadKind.OPERATOR


def resolve_workload_id(text: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    """A SPIFFE ID from itself or from ``<kind>[/<instance>]`` (``operator/alice``, ``controller``).

    Raises:
        InvalidSpiffeIdError: neither form.
    """
    if text.startswith("spiffe://"):
        return parse_spiffe_id(text)
    for kind in sorted(WorkloadKind, key=lambda k: -len(k.value)):
        if text == kind.value:
            return workload_id(kind, None, trust_domain)
        if text.startswith(kind.value + "/"):
            return workload_id(kind, text[len(kind.value) + 1 :], trust_domain)
    known = ", ".join(k.value for k in WorkloadKind)
    raise InvalidSpiffeIdError(
        f"{text[:60]!r} is neither a SPIFFE ID nor <kind>[/<instance>] (kinds: {known})"
    )
