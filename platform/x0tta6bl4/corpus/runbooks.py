"""Operational runbooks: Markdown with YAML front matter, parsed, validated and cut into retrievable chunks.

The retriever indexes the chunks; the MAPE-K planner reads the recommended action from
the best match; the embedder is fine-tuned on runbook summaries.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import check_action, check_fault_type

#: Keys of a runbook's front matter; all are required (``fault_type`` may be null).
FRONT_MATTER_KEYS: tuple[str, ...] = (
    "id",
    "title",
    "fault_type",
    "action",
    "preconditions",
    "severity",
    "tags",
)
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")

#: Longest front matter accepted, in characters: runbooks may come from HTTP requests, and YAML
#: parsing is slow Python, so its input is bounded (real front matter is a few hundred characters).
MAX_FRONT_MATTER_CHARS = 16_384

# Runbooks may come from HTTP requests, so every pattern here runs in time linear in its input:
# anchored, with no two adjacent quantifiers that can match the same characters (headings are
# parsed with string methods, see _heading).
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_ITEM_RE = re.compile(r"^\s{0,3}(?:[-*+]|\d+[.)])\s+")
_FRONT_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


class RunbookError(ConfigError):
    """A runbook file that cannot be used: bad front matter, unknown names, empty body."""


@dataclasses.dataclass(frozen=True)
class Runbook:
    """One operational runbook.

    Args:
        id: unique identifier (lower-case, digits, ``-`` and ``_``).
        title: one-line title.
        fault_type: the fault it treats (a key of ``FAULT_CODES``), ``None`` for action runbooks.
        action: the recommended remediation action (a key of ``ACTIONS``).
        preconditions: short checks that must hold before the action is applied.
        body: the Markdown text after the front matter.
        path: where it was read from.
        severity: ``low``, ``medium``, ``high`` or ``critical``.
        tags: free keywords.
    """

    id: str
    title: str
    fault_type: str | None
    action: str
    preconditions: tuple[str, ...]
    body: str
    path: str
    severity: str = "medium"
    tags: tuple[str, ...] = ()

    def sections(self) -> dict[str, str]:
        """Heading → text of every section of the body (text before the first heading under ``""``)."""
        return {heading: "\n\n".join(paras) for heading, paras in _sections(self.body) if paras}

    def summary(self, max_words: int = 120) -> str:
        """Title plus the symptoms (or, for action runbooks, when to use it), then the summary.

        A short passage in the words incidents are reported in; used as the positive
        passage when fine-tuning the embedder on incidents.
        """
        secs = self.sections()
        parts = [secs[h] for h in ("Symptoms", "When to use it", "Summary", "What it does") if h in secs]
        if not parts:
            parts = list(secs.values())[:1]
        words = " ".join(parts).replace("**", "").replace("`", "").split()
        body = " ".join(w for w in words if not _ITEM_RE.match(w + " "))
        text = f"{self.title}. {body}"
        return " ".join(text.split()[:max_words])


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A retrievable piece of a runbook.

    Args:
        runbook_id: the runbook it comes from.
        index: position among that runbook's chunks (0-based).
        text: the runbook title and section heading, then the section text (at most ``max_words`` words).
        fault_type: the runbook's fault type (``None`` for action runbooks).
        action: the runbook's recommended action.
        heading: the section heading (``""`` before the first heading).
    """

    runbook_id: str
    index: int
    text: str
    fault_type: str | None
    action: str
    heading: str


# --------------------------------------------------------------------------- runbooks
def parse_runbook(text: str, path: str | Path = "<string>") -> Runbook:
    """Parse one runbook file's text.

    Args:
        text: the file content: ``---`` / YAML front matter / ``---`` / Markdown body.
        path: where the text came from (used in error messages and kept on the runbook).

    Raises:
        RunbookError: missing or invalid front matter, unknown fault type or action, empty body.
    """
    where = str(path)
    match = _FRONT_RE.match(text.lstrip("\ufeff"))
    if match is None:
        raise RunbookError(f"{where}: a runbook must start with YAML front matter between two '---' lines")
    if len(match.group(1)) > MAX_FRONT_MATTER_CHARS:
        raise RunbookError(
            f"{where}: front matter has {len(match.group(1))} characters; at most {MAX_FRONT_MATTER_CHARS}"
        )
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise RunbookError(f"{where}: front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise RunbookError(f"{where}: front matter must be a YAML mapping, got {type(meta).__name__}")
    missing = [k for k in FRONT_MATTER_KEYS if k not in meta]
    if missing:
        raise RunbookError(f"{where}: front matter lacks {', '.join(missing)}")
    unknown = sorted(str(k) for k in meta if k not in FRONT_MATTER_KEYS)
    if unknown:
        raise RunbookError(
            f"{where}: unknown front matter keys {', '.join(unknown)} (known: {', '.join(FRONT_MATTER_KEYS)})"
        )
    rb_id = _text_field(meta, "id", where)
    if not _ID_RE.match(rb_id):
        raise RunbookError(f"{where}: id {rb_id!r} must be lower-case letters, digits, '-' or '_'")
    title = _text_field(meta, "title", where)
    fault_type = meta["fault_type"]
    if fault_type is not None:
        fault_type = _text_field(meta, "fault_type", where)
        try:
            check_fault_type(fault_type)
        except ConfigError as exc:
            raise RunbookError(f"{where}: {exc}") from None
    action = _text_field(meta, "action", where)
    try:
        check_action(action)
    except ConfigError as exc:
        raise RunbookError(f"{where}: {exc}") from None
    severity = _text_field(meta, "severity", where)
    if severity not in SEVERITIES:
        raise RunbookError(f"{where}: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    preconditions = _text_list(meta, "preconditions", where)
    tags = _text_list(meta, "tags", where)
    body = text.lstrip("\ufeff")[match.end() :].strip()
    if not body:
        raise RunbookError(f"{where}: the runbook has front matter but no body")
    return Runbook(
        id=rb_id,
        title=title,
        fault_type=fault_type,
        action=action,
        preconditions=preconditions,
        body=body,
        path=where,
        severity=severity,
        tags=tags,
    )


def _text_field(meta: dict[Any, Any], key: str, where: str) -> str:
    value = meta[key]
    if not isinstance(value, str) or not value.strip():
        raise RunbookError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value.strip()


def _text_list(meta: dict[Any, Any], key: str, where: str) -> tuple[str, ...]:
    value = meta[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RunbookError(f"{where}: {key} must be a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def packaged_runbooks_dir() -> Traversable:
    """The runbook directory shipped inside the package."""
    return resources.files("x0tta6bl4.corpus") / "data" / "runbooks"


def load_runbooks(directory: str | Path | Traversable | None = None) -> list[Runbook]:
    """Read every ``*.md`` runbook of ``directory`` (default: the packaged ones), sorted by file name.

    Raises:
        RunbookError: the directory holds no runbooks, a runbook is invalid, or two share an id.
    """
    root: Traversable = packaged_runbooks_dir() if directory is None else as_traversable(directory)
    if not root.is_dir():
        raise RunbookError(f"runbook directory {root} does not exist")
    files = sorted((f for f in root.iterdir() if f.name.endswith(".md") and f.is_file()), key=_name)
    if not files:
        raise RunbookError(f"no runbooks (*.md) in {root}")
    runbooks: list[Runbook] = []
    seen: dict[str, str] = {}
    for f in files:
        rb = parse_runbook(f.read_text(encoding="utf-8"), str(f))
        if rb.id in seen:
            raise RunbookError(f"{rb.path}: duplicate runbook id {rb.id!r} (also in {seen[rb.id]})")
        seen[rb.id] = rb.path
        runbooks.append(rb)
    return runbooks


def _name(entry: Traversable) -> str:
    return entry.name


def as_traversable(directory: str | Path | Traversable) -> Traversable:
    return Path(directory) if isinstance(directory, str | Path) else directory


# --------------------------------------------------------------------------- chunks
def _heading(line: str) -> str | None:
    """The text of a Markdown ATX heading line (1 to 6 ``#``, whitespace, text, optional closing ``#``s).

    String methods rather than a regex: the pattern ``^(#{1,6})\\s+(.*?)\\s*#*\\s*$`` backtracks
    cubically on a line of spaces, and runbook text comes from HTTP requests. Same result, linear.
    """
    hashes = len(line) - len(line.lstrip("#"))
    if not 1 <= hashes <= 6 or len(line) == hashes or not line[hashes].isspace():
        return None
    return line[hashes:].strip().rstrip("#").rstrip()


def _sections(body: str) -> list[tuple[str, list[str]]]:
    """Split Markdown into (heading, paragraphs) in order; each list item counts as a paragraph."""
    out: list[tuple[str, list[str]]] = [("", [])]
    para: list[str] = []

    def flush() -> None:
        if para:
            out[-1][1].append("\n".join(para).strip())
            para.clear()

    for line in body.splitlines():
        heading = _heading(line)
        if heading is not None:
            flush()
            out.append((heading, []))
        elif line.strip():
            if _ITEM_RE.match(line):
                flush()
            para.append(line.rstrip())
        else:
            flush()
    flush()
    return [(h, [p for p in paras if p]) for h, paras in out]


def chunk_runbook(rb: Runbook, max_words: int = 120, overlap_words: int = 20) -> list[Chunk]:
    """Split a runbook into chunks along its headings and paragraphs.

    Paragraphs of one section are packed together while they fit; a paragraph longer than
    the budget is cut into word windows. Consecutive chunks of the same section share
    ``overlap_words`` words so a sentence cut at a boundary is still whole in one chunk.
    Every chunk starts with the runbook title and section heading (counted in ``max_words``)
    so it can be understood, and embedded, on its own.

    Args:
        rb: the runbook.
        max_words: upper bound of words (whitespace-separated tokens) per chunk text.
        overlap_words: words repeated from the end of the previous chunk of the same section.

    Raises:
        ConfigError: the bounds are inconsistent or too small for the title and heading.
    """
    return [
        Chunk(
            runbook_id=rb.id, index=i, text=text, fault_type=rb.fault_type, action=rb.action, heading=heading
        )
        for i, (heading, text) in enumerate(chunk_text(rb.title, rb.body, max_words, overlap_words, rb.id))
    ]


def chunk_text(
    title: str, body: str, max_words: int = 120, overlap_words: int = 20, name: str = "<text>"
) -> list[tuple[str, str]]:
    """``(heading, chunk text)`` pairs of a titled Markdown body, as :func:`chunk_runbook` cuts them.

    Args:
        title: prepended (with the section heading) to every chunk.
        body: Markdown text.
        max_words: upper bound of words per chunk text.
        overlap_words: words repeated from the end of the previous chunk of the same section.
        name: what to call the document in error messages.

    Raises:
        ConfigError: the bounds are inconsistent or too small for the title and heading.
    """
    if overlap_words < 0 or max_words <= 0:
        raise ConfigError(f"max_words must be > 0 and overlap_words >= 0, got {max_words}, {overlap_words}")
    chunks: list[tuple[str, str]] = []
    for heading, paras in _sections(body):
        if not paras:
            continue
        prefix = f"{title} — {heading}:" if heading else f"{title}:"
        budget = max_words - len(prefix.split())
        if budget <= overlap_words:
            raise ConfigError(
                f"max_words={max_words} leaves {budget} words after the title and heading of "
                f"{name!r} section {heading!r}; it must exceed overlap_words={overlap_words}"
            )
        chunks.extend((heading, f"{prefix}\n{text}") for text in _pack(paras, budget, overlap_words))
    return chunks


def _pack(paras: list[str], budget: int, overlap: int) -> list[str]:
    """Greedy packing of paragraphs into texts of at most ``budget`` words (see chunk_runbook)."""
    pieces: list[str] = []
    step = budget - overlap
    for p in paras:
        words = p.split()
        if len(words) <= budget:
            pieces.append(p)
            continue
        for start in range(0, len(words), step):
            pieces.append(" ".join(words[start : start + budget]))
            if start + budget >= len(words):
                break
    out: list[str] = []
    current: list[str] = []
    count = 0
    for piece in pieces:
        n = len(piece.split())
        if current and count + n > budget:
            out.append("\n\n".join(current))
            tail = out[-1].split()[-overlap:] if overlap else []
            # Carry the overlap only when it fits together with the next piece and is not already in it.
            carried = tail and len(tail) + n <= budget and not piece.startswith(" ".join(tail))
            current = [" ".join(tail)] if carried else []
            count = len(tail) if carried else 0
        current.append(piece)
        count += n
    if current:
        out.append("\n\n".join(current))
    return out


def all_chunks(runbooks: list[Runbook], max_words: int = 120, overlap_words: int = 20) -> list[Chunk]:
    """Chunks of every runbook, in runbook order."""
    return [c for rb in runbooks for c in chunk_runbook(rb, max_words, overlap_words)]
