"""Configuration of the Serve applications: pydantic models with described fields, units in names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.models.registry import default_registry_uri
from x0tta6bl4.security.provenance import ProvenanceConfig


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Thresholds(_Config):
    """Alarm thresholds on the anomaly score (the MAPE-K controller learns and pushes these)."""

    default: float | None = Field(
        default=None,
        description="threshold for nodes without their own; None = the model's recorded score_threshold",
    )
    per_node: dict[str, float] = Field(default_factory=dict, description="threshold by node id (as a string)")


class AnomalyUserConfig(_Config):
    """What may change while the anomaly app runs (Serve ``user_config``: applied without a restart)."""

    model_version: str | None = Field(
        default=None, description="registry version to serve; None = the promoted one"
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)


class AnomalyConfig(_Config):
    """The anomaly scoring deployment (``user`` is its Serve user_config; the rest restarts replicas)."""

    registry: str = Field(
        default_factory=default_registry_uri, description="model registry path or fsspec URI"
    )
    num_replicas: int = Field(default=1, ge=1, description="scoring replicas")
    max_nodes: int = Field(default=20_000, gt=0, description="largest snapshot accepted, in nodes")
    max_edges: int = Field(default=400_000, gt=0, description="largest snapshot accepted, in links")
    max_ticks: int = Field(default=64, gt=0, description="longest window accepted, in ticks")
    max_batch_size: int = Field(default=16, ge=1, description="snapshots scored together in one pass")
    batch_wait_timeout_s: float = Field(
        default=0.002,
        ge=0,
        description="how long an idle replica waits for more snapshots to join the first (a busy one "
        "batches whatever queued while it worked)",
    )
    batches_in_flight: int = Field(
        default=2,
        ge=1,
        description="scoring batches the gateway keeps in flight to the detector: with 2 a replica "
        "starts the next batch while the last one's scores travel back",
    )
    max_ongoing_requests: int = Field(default=64, ge=1, description="requests in flight per replica")
    max_streams_per_owner: int = Field(
        default=8,
        ge=1,
        description="live streams one identity keeps per replica; its next evicts its own oldest",
    )
    max_stream_owners: int = Field(
        default=64,
        ge=1,
        description="identities with live streams per replica; a new one beyond this is refused (429) "
        "unless an owner has been idle for 10 minutes",
    )
    user: AnomalyUserConfig = Field(default_factory=AnomalyUserConfig, description="initial user_config")
    bootstrap: bool = Field(
        default=True,
        description="train and promote a small bootstrap detector when the registry has none promoted",
    )
    provenance: ProvenanceConfig = Field(
        default_factory=ProvenanceConfig,
        description="whose signatures a model version needs before it is served (an unsigned or "
        "disallowed version is refused and the previous one keeps serving)",
    )


class RagConfig(_Config):
    """The runbook retrieval deployment."""

    num_replicas: int = Field(default=1, ge=1, description="retrieval replicas (they share data_dir)")
    max_batch_size: int = Field(default=32, ge=1, description="queries embedded together in one pass")
    batch_wait_timeout_s: float = Field(
        default=0.01,
        ge=0,
        description="how long an idle gateway or retriever waits for more queries to join the first (a "
        "busy one batches whatever queued while it worked)",
    )
    batches_in_flight: int = Field(
        default=16,
        ge=1,
        description="query batches the gateway keeps in flight to the retriever, which merges all that "
        "queued while it embedded into its next batch: with 16, queries wait there rather than at the "
        "gateway, so the retriever's batches are larger",
    )
    max_ongoing_requests: int = Field(default=128, ge=1, description="requests in flight per replica")
    compute_nice: int | None = Field(
        default=0,
        ge=-20,
        le=19,
        description="nice value of the replica thread that embeds queries. Ray starts workers' Python "
        "threads at nice 15 and keeps its RPC threads (the proxy's and the gateway's too) at 0, so under "
        "load those preempt the embedding; 0 levels them. Needs CAP_SYS_NICE (root has it), otherwise "
        "Ray's value stays and a warning is logged; None leaves Ray's value",
    )
    retriever: dict[str, Any] = Field(
        default_factory=dict,
        description="x0tta6bl4.rag.config.RetrieverConfig fields (data_dir, ef, cache, ...)",
    )
    edge_cache: bool = Field(
        default=True,
        description="the gateway answers exact repeats (same normalised text and k) itself, without the "
        "hop to the retriever; sized and timed by the retriever's cache settings, emptied when the corpus "
        "changes",
    )
    corpus_check_s: float = Field(
        default=1.0,
        gt=0,
        description="how often the gateway asks for the corpus version: an ingest made through another "
        "gateway replica empties this one's exact-repeat cache within this time",
    )


class HttpConfig(_Config):
    """The HTTP ingress: where it listens and what it accepts."""

    host: str = Field(default="127.0.0.1", description="address the Serve proxy binds")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port")
    request_timeout_s: float = Field(default=30.0, gt=0, description="end-to-end timeout of one request")
    score_max_bytes: int = Field(default=64 << 20, gt=0, description="largest /v1/anomaly/score body")
    query_max_bytes: int = Field(default=64 << 10, gt=0, description="largest /v1/rag/query body")
    batch_max_bytes: int = Field(default=4 << 20, gt=0, description="largest /v1/rag/batch body")
    documents_max_bytes: int = Field(default=8 << 20, gt=0, description="largest /v1/rag/documents body")
    max_batch_queries: int = Field(default=256, ge=1, description="queries per /v1/rag/batch call")
    inflight_body_bytes: int = Field(
        default=256 << 20,
        gt=0,
        description="request bodies a gateway replica holds at once, all routes together; a request "
        "that would pass it gets a 503 with Retry-After",
    )
    front_token_file: str | None = Field(
        default=None,
        description="0600 file with the mTLS front's secret: when set, the app answers only requests "
        "that carry it (they came through the front, which names the caller's verified SPIFFE ID); "
        "None serves plain HTTP to anonymous callers (development and benchmarks)",
    )


class FrontConfig(_Config):
    """The mTLS front of ``x0tta6bl4 serve``: the one way in when enabled (Serve listens on loopback)."""

    enabled: bool = Field(default=True, description="serve through the mTLS front (off: plain HTTP)")
    host: str = Field(default="127.0.0.1", description="address the front binds")
    port: int = Field(default=8443, ge=0, le=65535, description="HTTPS port of the front (0: any free)")
    policy: str | None = Field(
        default=None, description="authorisation policy file (default: cluster/authz.yaml)"
    )
    ca_dir: str | None = Field(
        default=None,
        description="embedded CA directory (default $X0TTA6BL4_CA_DIR or .x0tta6bl4/security/ca); "
        "with SPIFFE_ENDPOINT_SOCKET set, SVIDs come from the Workload API instead",
    )
    svid_ttl_s: int | None = Field(default=None, ge=1, description="the front's SVID TTL (default: the CA's)")
    dns_names: list[str] = Field(
        default_factory=lambda: ["localhost"], description="DNS names in the front's SVID (for curl)"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="with --front-only (no Ray): serve the front's Prometheus metrics at "
        "http://<host>:<port>/metrics (None: off; inside Ray they go to the node's metrics agent)",
    )


class ServeConfig(_Config):
    """Everything ``x0tta6bl4 serve``, ``serve run`` and the main job deploy."""

    app_name: str = Field(default="x0tta6bl4", description="Serve application name")
    access_log: bool = Field(
        default=False,
        description="log every request in the replicas' logs (costs CPU per request; off by default)",
    )
    log_level: str = Field(default="INFO", description="replica log level (DEBUG, INFO, WARNING, ERROR)")
    route_prefix: str = Field(default="/", description="route prefix of the application")
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    front: FrontConfig = Field(default_factory=FrontConfig)

    def resolved(self) -> ServeConfig:
        """A copy whose local paths are absolute (replicas may run in another working directory)."""
        out = self.model_copy(deep=True)
        if "://" not in out.anomaly.registry:
            out.anomaly.registry = str(Path(out.anomaly.registry).expanduser().resolve())
        out.anomaly.provenance = out.anomaly.provenance.resolved()
        data_dir = (
            out.rag.retriever.get("data_dir") or os.environ.get("X0TTA6BL4_RAG_DIR") or ".x0tta6bl4/rag"
        )
        out.rag.retriever["data_dir"] = str(Path(data_dir).expanduser().resolve())
        prov = ProvenanceConfig.model_validate(out.rag.retriever.get("provenance") or {})
        out.rag.retriever["provenance"] = prov.resolved().model_dump()
        if out.http.front_token_file is not None:
            out.http.front_token_file = str(Path(out.http.front_token_file).expanduser().resolve())
        return out
