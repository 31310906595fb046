"""The retriever's on-disk store: documents, chunk records and index in one directory, under one lock.

Files in the directory: ``store.json`` (version and fingerprint, written last by a rebuild),
``documents.jsonl`` (ingested documents, the source of truth), ``chunks.jsonl`` (one line per
index label), ``index/`` (the :class:`~x0tta6bl4.rag.index.VectorIndex`) and ``.lock``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from x0tta6bl4.corpus import Runbook, RunbookError, chunk_text, load_runbooks, parse_runbook
from x0tta6bl4.durable import append_synced, fsync_dir, write_atomic
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import ACTIONS, FAULT_TYPES, HEALED_BY
from x0tta6bl4.rag.errors import IndexStoreError, RetrievalInputError, RetrievalStoreError
from x0tta6bl4.rag.index import VectorIndex
from x0tta6bl4.rag.lexical import words

STORE_VERSION = 1
EMBEDDING_DIM = 384
_DOC_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_DOC_KEYS = frozenset({"id", "title", "text", "fault_type", "action"})


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """A retrievable document: a packaged runbook or an ingested one."""

    id: str
    title: str
    body: str
    fault_type: str | None
    action: str | None

    @classmethod
    def of(cls, runbook: Runbook) -> Document:
        """The document of a parsed runbook."""
        return cls(runbook.id, runbook.title, runbook.body, runbook.fault_type, runbook.action)

    @property
    def digest(self) -> str:
        """SHA-256 of the content (what makes a re-ingest of the same document a no-op)."""
        raw = json.dumps([self.title, self.body, self.fault_type, self.action]).encode("utf-8")
        return hashlib.sha256(raw).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One indexed chunk: its document's id, its section heading and its text."""

    doc: str
    heading: str
    text: str


def packaged_documents() -> list[Document]:
    """The packaged runbooks, as documents."""
    return [Document.of(rb) for rb in load_runbooks()]


def store_fingerprint(
    embedder: str, chunk_words: int, overlap_words: int, m: int, ef_construction: int
) -> str:
    """Hash of what a store's index depends on: embedder, chunking, HNSW graph and packaged runbooks.

    Args:
        embedder: the embedder's fingerprint.
        chunk_words: words per chunk.
        overlap_words: words shared by consecutive chunks of a section.
        m: HNSW graph degree.
        ef_construction: HNSW build candidate list size.
    """
    parts = {
        "store_version": STORE_VERSION,
        "embedder": embedder,
        "chunk_words": chunk_words,
        "overlap_words": overlap_words,
        "m": m,
        "ef_construction": ef_construction,
        "packaged": hashlib.sha256(
            json.dumps([dataclasses.asdict(d) for d in packaged_documents()]).encode("utf-8")
        ).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def chunk_document(doc: Document, chunk_words: int, overlap_words: int) -> list[ChunkRecord]:
    """The chunk records of a document (see :func:`~x0tta6bl4.corpus.chunk_text`).

    Raises:
        ConfigError: the chunk bounds are too small for the document's title and headings.
    """
    pieces = chunk_text(doc.title, doc.body, chunk_words, overlap_words, doc.id)
    return [ChunkRecord(doc.id, heading, text) for heading, text in pieces]


def parse_document(
    raw: str | Mapping[str, Any], i: int, max_chars: int, chunk_words: int, overlap_words: int
) -> Document:
    """Validate one document given to ingest: runbook Markdown or a mapping ``{title, text, id?, ...}``.

    Args:
        raw: the document.
        i: its position in the request (for messages).
        max_chars: longest accepted text.
        chunk_words: words per chunk (the document must chunk).
        overlap_words: words shared by consecutive chunks of a section.

    Raises:
        RetrievalInputError: an invalid document.
    """
    if isinstance(raw, str):
        if len(raw) > max_chars:
            raise RetrievalInputError(
                f"document {i} has {len(raw)} characters; at most {max_chars} are accepted"
            )
        try:
            doc = Document.of(parse_runbook(raw, f"document {i}"))
        except RunbookError as exc:
            raise RetrievalInputError(str(exc)) from None
    elif isinstance(raw, Mapping):
        doc = _mapping_document(raw, i, max_chars)
    else:
        raise RetrievalInputError(
            f"document {i} must be runbook Markdown or a mapping, got {type(raw).__name__}"
        )
    try:
        chunks = chunk_document(doc, chunk_words, overlap_words)
    except ConfigError as exc:
        raise RetrievalInputError(f"document {i}: {exc}") from None
    if not chunks:
        raise RetrievalInputError(f"document {i} ({doc.id}) has no text to index")
    return doc


def _mapping_document(raw: Mapping[str, Any], i: int, limit: int) -> Document:
    unknown = sorted(str(key) for key in raw if key not in _DOC_KEYS)
    if unknown:
        raise RetrievalInputError(f"document {i}: unknown keys {unknown} (known: {sorted(_DOC_KEYS)})")
    title, text = raw.get("title"), raw.get("text")
    if not isinstance(title, str) or not title.strip():
        raise RetrievalInputError(f"document {i}: 'title' must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise RetrievalInputError(f"document {i}: 'text' must be a non-empty string")
    if len(text) > limit:
        raise RetrievalInputError(f"document {i} has {len(text)} characters; at most {limit} are accepted")
    fault, action = raw.get("fault_type"), raw.get("action")
    if fault is not None and fault not in FAULT_TYPES:
        raise RetrievalInputError(
            f"document {i}: unknown fault_type {fault!r} (known: {', '.join(FAULT_TYPES)})"
        )
    if action is not None and action not in ACTIONS:
        raise RetrievalInputError(f"document {i}: unknown action {action!r} (known: {', '.join(ACTIONS)})")
    if action is None and fault is not None:
        action = HEALED_BY[fault]
    doc_id = raw.get("id")
    if doc_id is None:
        slug = "-".join(words(title))[:48].strip("-") or "doc"
        doc_id = f"{slug}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"
    if not isinstance(doc_id, str) or not _DOC_ID_RE.match(doc_id):
        raise RetrievalInputError(
            f"document {i}: id {doc_id!r} must be lower-case letters, digits, '-' or '_'"
        )
    return Document(doc_id, " ".join(title.split()), text.strip(), fault, action)


class Store:
    """The files of one store directory (see the module docstring).

    One process writes a store at a time: writers hold :meth:`lock`. Every write is durable
    (through :mod:`x0tta6bl4.durable`) before the method returns.

    Args:
        root: the store directory (created when first locked or written).
        fingerprint: what the index must have been built with (see :func:`store_fingerprint`);
            a store with another one is not loaded.
    """

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = root
        self.fingerprint = fingerprint

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's lock (``.lock``: exclusive, across processes, waits) for the ``with`` block.

        Raises:
            RetrievalStoreError: the directory or its lock file cannot be created or opened.
        """
        # flock only, never filelock's soft (existence) fallback: the kernel releases the lock of a
        # crashed process, so a crash never leaves the store locked.
        lock = FileLock(self.root / ".lock", mode=0o644, fallback_to_soft=False)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:
            raise RetrievalStoreError(f"cannot use the store directory {self.root}: {exc}") from None
        try:
            yield
        finally:
            lock.release()

    def documents_size(self) -> int:
        """Size in bytes of ``documents.jsonl`` (0 when absent): it grows with every ingest."""
        try:
            return (self.root / "documents.jsonl").stat().st_size
        except FileNotFoundError:
            return 0

    def read_documents(self) -> tuple[list[Document], bool]:
        """Ingested documents, and whether a torn last line (a crashed ingest) was dropped.

        Raises:
            RetrievalStoreError: the file is unreadable, or a line before the last is corrupt.
        """
        path = self.root / "documents.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return [], False
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrievalStoreError(f"{path}: unreadable: {exc}") from None
        docs: list[Document] = []
        for lineno, line in enumerate(lines, 1):
            try:
                docs.append(Document(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                if lineno == len(lines):
                    return docs, True
                raise RetrievalStoreError(f"{path}:{lineno}: corrupt document record: {exc}") from None
        return docs, False

    def load(self, doc_ids: Collection[str]) -> tuple[VectorIndex, list[ChunkRecord]] | None:
        """The index and chunk records on disk, or ``None`` when they must be rebuilt.

        They must be rebuilt when the fingerprint differs, a file is missing or corrupt, or the
        chunks do not label the index ``0..n-1`` and cover exactly the documents ``doc_ids``.
        """
        try:
            store = json.loads((self.root / "store.json").read_text(encoding="utf-8"))
            if not isinstance(store, dict) or store.get("fingerprint") != self.fingerprint:
                return None
            lines = (self.root / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
            records = [ChunkRecord(r["doc"], r["heading"], r["text"]) for r in map(json.loads, lines)]
            index = VectorIndex.load(self.root / "index", dim=EMBEDDING_DIM)
        except (OSError, ValueError, KeyError, TypeError, IndexStoreError):
            return None
        if len(index) != len(records) or {r.doc for r in records} != set(doc_ids):
            return None
        if not np.array_equal(np.sort(index.ids()), np.arange(len(records))):
            return None
        return index, records

    def write(self, ingested: Sequence[Document], records: Sequence[ChunkRecord], index: VectorIndex) -> None:
        """Replace the whole store (``store.json`` last: a crash before it means a rebuild).

        Raises:
            RetrievalStoreError: the store cannot be written.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "store.json").unlink(missing_ok=True)  # a crash from here on means: rebuild
            fsync_dir(self.root)  # the removal reaches the disk before any new file does
            write_atomic(self.root / "documents.jsonl", "".join(_document_line(d) + "\n" for d in ingested))
            write_atomic(self.root / "chunks.jsonl", "".join(_record_line(r) + "\n" for r in records))
            index.save(self.root / "index")
            store = {"store_version": STORE_VERSION, "fingerprint": self.fingerprint}
            write_atomic(self.root / "store.json", json.dumps(store, indent=2) + "\n")
        except (OSError, IndexStoreError) as exc:
            raise RetrievalStoreError(f"cannot write the store in {self.root}: {exc}") from None

    def append(self, docs: Sequence[Document], records: Sequence[ChunkRecord]) -> None:
        """Append ingested documents and their chunk records (documents first: they are the truth).

        Raises:
            RetrievalStoreError: the store cannot be appended to.
        """
        try:
            append_synced(self.root / "documents.jsonl", [_document_line(d) for d in docs])
            append_synced(self.root / "chunks.jsonl", [_record_line(r) for r in records])
        except OSError as exc:
            raise RetrievalStoreError(f"cannot append to the store in {self.root}: {exc}") from None

    def save_index(self, index: VectorIndex) -> None:
        """Save the index over the one in the store.

        Raises:
            RetrievalStoreError: it cannot be saved.
        """
        try:
            index.save(self.root / "index")
        except IndexStoreError as exc:
            raise RetrievalStoreError(str(exc)) from None


def _document_line(doc: Document) -> str:
    return json.dumps(dataclasses.asdict(doc))


def _record_line(record: ChunkRecord) -> str:
    return json.dumps({"doc": record.doc, "heading": record.heading, "text": record.text})
