"""The knowledge corpus every layer above the mesh shares: runbooks and labelled incidents.

A leaf of the models/rag layers: the embedder (models) fine-tunes on it and the retriever
(rag) indexes it, so neither imports the other for these types.
"""

from x0tta6bl4.corpus.incidents import (
    NUM_REGIONS,
    SPLITS,
    Incident,
    IncidentError,
    load_incidents,
    packaged_incidents_file,
    parse_incident,
)
from x0tta6bl4.corpus.runbooks import (
    FRONT_MATTER_KEYS,
    SEVERITIES,
    Chunk,
    Runbook,
    RunbookError,
    all_chunks,
    chunk_runbook,
    chunk_text,
    load_runbooks,
    packaged_runbooks_dir,
    parse_runbook,
)

__all__ = [
    "FRONT_MATTER_KEYS",
    "NUM_REGIONS",
    "SEVERITIES",
    "SPLITS",
    "Chunk",
    "Incident",
    "IncidentError",
    "Runbook",
    "RunbookError",
    "all_chunks",
    "chunk_runbook",
    "chunk_text",
    "load_incidents",
    "load_runbooks",
    "packaged_incidents_file",
    "packaged_runbooks_dir",
    "parse_incident",
    "parse_runbook",
]
