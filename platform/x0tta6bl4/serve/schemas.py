"""HTTP request and response bodies of the Serve applications (the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints

# Integers are strict: JSON's true/false or 1.5 are not node ids or counts (the schema says integer).
NodeId = Annotated[int, Strict()] | Annotated[str, StringConstraints(min_length=1, max_length=128)]
StreamId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ScoreRequest(_Body):
    """One graph snapshot: who the nodes are, what they measured, how they are linked."""

    node_ids: list[NodeId] = Field(
        description="node identifiers, unique; rows of `features` follow this order"
    )
    feature_names: list[str] = Field(
        description="column names of `features`; exactly the detector's features, in any order"
    )
    features: list[list[float | None]] | list[list[list[float | None]]] = Field(
        description=(
            "raw telemetry: [nodes][features] for one tick, or [ticks][nodes][features] for a window "
            "(oldest first; earlier ticks serve as each node's baseline). null = not measured"
        )
    )
    edges: list[tuple[NodeId, NodeId]] = Field(
        default_factory=list, description="undirected links as [node_id, node_id] pairs"
    )


#: Decimals of the scores in a ScoreResponse (float32 scores have about 7 significant digits).
SCORE_DECIMALS = 5


class Alarm(BaseModel):
    """A node whose score is above its threshold."""

    node_id: NodeId
    score: float
    threshold: float


class ScoreResponse(BaseModel):
    """Scores per node (higher = more anomalous), alarms under the current thresholds."""

    model_version: str = Field(description="registry version that produced the scores")
    scores: list[float] = Field(
        description=f"one score per node, in request order, rounded to {SCORE_DECIMALS} decimals"
    )
    alarms: list[Alarm] = Field(description="nodes above their threshold, highest score first")
    warm: bool = Field(
        description="true once the window or stream covered the baseline warm-up (before: rough scores)"
    )
    window_ticks: int = Field(description="ticks of history behind these scores")
    thresholds_version: int = Field(description="increments whenever new thresholds are applied")


class ModelInfo(BaseModel):
    """What the anomaly app is serving."""

    model: str
    version: str
    created_at: str
    feature_names: list[str]
    warmup_ticks: int
    spec: dict[str, Any]
    metrics: dict[str, Any]
    default_threshold: float
    per_node_thresholds: int = Field(description="number of nodes with their own threshold")
    thresholds_version: int
    last_load_error: str | None = Field(description="why the last requested version was refused, if it was")
    batching: dict[str, float] = Field(
        default_factory=dict,
        description="the answering replica's scoring passes so far: batches, snapshots, mean_batch_size",
    )


class RagQuery(_Body):
    """An incident to find runbooks for."""

    query: str = Field(min_length=1, description="incident text, as an operator or the controller writes it")
    k: int = Field(
        default=3, ge=1, strict=True, description="how many runbooks to return (at most the service's max_k)"
    )


class RagBatch(_Body):
    """Many incidents in one call."""

    queries: list[RagQuery] = Field(min_length=1, description="the incidents, answered in order")


class Passage(BaseModel):
    """A retrieved runbook passage."""

    text: str
    score: float
    runbook_id: str
    runbook_title: str
    section: str
    fault_type: str | None
    action: str | None


class RagAnswer(BaseModel):
    """Passages for one incident and the remediation they recommend."""

    passages: list[Passage]
    fault_type: str | None = Field(description="fault type the passages point to")
    action: str | None = Field(description="recommended remediation action (from the runbooks' front matter)")
    cached: bool = Field(description="answered from the semantic cache")
    corpus_version: int = Field(
        description="the corpus the answer was computed on; it changes with every ingest"
    )


class RagBatchAnswer(BaseModel):
    answers: list[RagAnswer]


class RagDocument(_Body):
    """A runbook to add: markdown with front matter, or plain text with its metadata here."""

    text: str = Field(
        min_length=1, description="runbook markdown (front matter optional when title is given)"
    )
    title: str | None = Field(default=None, max_length=200)
    fault_type: str | None = Field(default=None, max_length=64)
    action: str | None = Field(default=None, max_length=64)
    signature: dict[str, Any] | None = Field(
        default=None,
        description="the operator's signature over the runbook's claim (`x0tta6bl4 runbook sign` writes "
        "it); a signature that fails is refused (400), an unsigned runbook is stored but never acted on",
    )


class RagDocuments(_Body):
    documents: list[RagDocument] = Field(min_length=1, max_length=100)


class IngestAnswer(BaseModel):
    documents: int = Field(description="documents added (durable on disk before this answer)")
    chunks: int = Field(description="passages indexed")
    total_documents: int
    corpus_version: int = Field(description="the corpus version that includes these documents")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="machine-readable kind, e.g. invalid_request, payload_too_large")
    message: str = Field(description="what is wrong, for a person")
    details: list[dict[str, Any]] = Field(default_factory=list)
