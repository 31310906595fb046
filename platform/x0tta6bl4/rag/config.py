"""Retriever configuration: where the store lives, how documents are chunked, indexed, ranked and cached."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.rag.cache import CacheConfig
from x0tta6bl4.security.provenance import ProvenanceConfig

#: Environment variable naming the default store directory.
DATA_DIR_ENV = "X0TTA6BL4_RAG_DIR"


def default_data_dir() -> Path:
    """``$X0TTA6BL4_RAG_DIR``, else ``.x0tta6bl4/rag`` (relative to the working directory)."""
    return Path(os.environ.get(DATA_DIR_ENV) or ".x0tta6bl4/rag")


class RetrieverConfig(BaseModel):
    """Where the retriever keeps its store, how it chunks, indexes, ranks and caches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description=f"directory of the index, chunk metadata and ingested documents (default ${DATA_DIR_ENV} "
        "or .x0tta6bl4/rag)",
    )
    embedder_path: Path | None = Field(
        default=None,
        description="merged sentence-transformers model directory; None: packaged all-MiniLM-L6-v2",
    )
    chunk_words: int = Field(
        default=120, ge=20, le=400, description="words per chunk, title and heading included"
    )
    overlap_words: int = Field(
        default=20, ge=0, description="words shared by consecutive chunks of a section"
    )
    ef: int = Field(default=64, ge=1, description="HNSW query candidate list size (recall vs. latency)")
    m: int = Field(default=16, ge=2, le=128, description="HNSW graph degree M")
    ef_construction: int = Field(default=200, ge=1, description="HNSW build candidate list size")
    max_k: int = Field(default=20, ge=1, description="largest number of runbooks one query may ask for")
    max_query_chars: int = Field(default=4000, ge=1, description="longest accepted query, in characters")
    max_document_chars: int = Field(
        default=200_000, ge=1, description="longest accepted ingested document text, in characters"
    )
    max_ingest_chunks: int = Field(
        default=1000,
        ge=1,
        description="most chunks one ingest may add (bounds the embedding time of one request; a "
        "packaged runbook is about 10)",
    )
    lexical_weight: float = Field(
        default=0.5,
        ge=0,
        description="weight of the BM25 score (scaled to 1 for the query's best chunk) added to the cosine "
        "similarity; 0 ranks by embeddings only; tuned on the train split of the labelled incidents",
    )
    evidence_chunks: int = Field(
        default=2,
        ge=1,
        description="a runbook scores the mean of its best this many chunks, for the cosine and the "
        "scaled BM25 apart (1: its best chunk alone); tuned on the train split of the labelled incidents",
    )
    lexical_length_norm: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="BM25 document-length normalisation b (0: none, 1: full); tuned on the train split",
    )
    expand_queries: bool = Field(
        default=True,
        description="append plain-language readings of the telemetry values a query quotes ('cpu_util 1.00': "
        "'CPU pinned at 1.0') to the text that is embedded and BM25-scored; the cache key stays the query",
    )
    candidates: int = Field(
        default=64,
        ge=1,
        description="chunks taken from each of the dense and the lexical ranking before fusion",
    )
    max_seq_length: int = Field(
        default=256, ge=16, le=512, description="embedder input tokens; longer is cut"
    )
    encode_batch_size: int = Field(
        default=16, ge=1, description="most texts per forward pass of the embedder"
    )
    unpadded_encoding: bool = Field(
        default=True,
        description="run a mean-pooled BERT embedder (MiniLM and its LoRA merges) without padding: the "
        "same vectors, one pass per encode_batch_size texts; False, or any other model, uses "
        "sentence-transformers' padded encode",
    )
    pass_overhead_tokens: int = Field(
        default=50,
        ge=0,
        description="padded encode only: fixed cost of one forward pass, in padded tokens; a batch is cut "
        "into length-sorted passes wherever the padding saved outweighs another pass",
    )
    cache: CacheConfig = Field(default_factory=CacheConfig, description="semantic query cache")
    provenance: ProvenanceConfig = Field(
        default_factory=ProvenanceConfig,
        description="whose runbook signatures are accepted (an ingested document with a signature that "
        "fails is refused; one without is stored but no controller acts on it)",
    )
    sign_packaged_as: str | None = Field(
        default="operator/installer",
        description="identity that signs the packaged runbooks when the store is built (they were "
        "installed from the hash-checked lock); None: they stay unsigned until an operator signs them",
    )


_fingerprints: dict[tuple[Any, ...], str] = {}


def embedder_fingerprint(path: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 of every file of an embedder directory (``None``: the packaged MiniLM); memoised per process.

    Raises:
        ConfigError: ``path`` is not a directory.
    """
    from x0tta6bl4.models.embedder import base_model_path

    root = (base_model_path() if path is None else Path(path)).resolve()
    if not root.is_dir():
        raise ConfigError(f"embedder directory {root} does not exist (models are never downloaded)")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    memo = (str(root), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if memo not in _fingerprints:
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _fingerprints[memo] = h.hexdigest()
    return _fingerprints[memo]
