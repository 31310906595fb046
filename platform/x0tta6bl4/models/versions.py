"""What a registry version is, before any storage: names and ids, file layout, ModelVersion, input checks.

Everything here is pure (no I/O) and raises ConfigError on bad input; the registry itself
(``models/registry.py``) stores, verifies and promotes versions and owns the registry errors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.jsonsafe import json_safe

if TYPE_CHECKING:
    import torch

WEIGHTS = "weights.safetensors"
SPEC = "spec.yaml"
METRICS = "metrics.json"
CARD = "MODEL_CARD.md"
MANIFEST = "manifest.json"
#: A version's signature over its manifest (written after it; never an extra file).
SIGNATURE = "SIGNATURE.json"
RESERVED_FILES = frozenset({WEIGHTS, SPEC, METRICS, CARD, MANIFEST})
MANIFEST_FORMAT = 1

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION_ID_RE = re.compile(r"^v(\d{4,})-(\d{8}T\d{6})$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_model_name(model: str) -> str:
    """Return ``model`` if it is a usable model name (letters, digits, ``_.-``), else raise ConfigError."""
    if not isinstance(model, str) or not MODEL_NAME_RE.match(model):
        raise ConfigError(
            f"invalid model name {model!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return model


def check_version_id(version: str) -> str:
    """Return ``version`` if it has the registry's form ``v0001-20260101T120000``, else raise ConfigError."""
    if not isinstance(version, str) or not VERSION_ID_RE.match(version):
        raise ConfigError(f"invalid version id {version!r}: expected the form v0001-20260101T120000")
    return version


def version_key(version: str) -> tuple[int, str]:
    """Sort key of a version id: its number, then its timestamp (string order breaks at v10000)."""
    match = VERSION_ID_RE.match(version)
    if match is None:  # pragma: no cover - callers filter with the same pattern
        raise ConfigError(f"invalid version id {version!r}")
    return int(match.group(1)), match.group(2)


def sha256_hex(data: bytes) -> str:
    """The hex sha256 digest the manifest records for a file."""
    return hashlib.sha256(data).hexdigest()


def check_safe_relpath(relpath: str, what: str = "file path") -> str:
    """``relpath`` if it stays below the directory it is joined to, else ConfigError.

    Relative, POSIX, normalised (no ``.``, ``..`` or empty parts), no backslash, NUL or other
    control character: such a path joined to a directory names a file inside it, never outside.
    """
    parts = PurePosixPath(relpath).parts if isinstance(relpath, str) else ()
    if (
        not parts
        or relpath.startswith("/")
        or "\\" in relpath
        or any(ord(c) < 32 or c == "\x7f" for c in relpath)
        or any(p in ("", ".", "..") for p in parts)
        or "/".join(parts) != relpath
    ):
        raise ConfigError(
            f"invalid {what} {relpath!r}: use a relative POSIX path without '..' or control characters"
        )
    return relpath


def check_relpath(relpath: str) -> str:
    """An extra file's path: a safe relative path (see check_safe_relpath), not one of the registry's own."""
    check_safe_relpath(relpath, "extra file path")
    if relpath in RESERVED_FILES or relpath == SIGNATURE:
        raise ConfigError(f"extra file {relpath!r} clashes with the registry's own {relpath}")
    return relpath


def check_manifest_files(files: Mapping[str, Any]) -> None:
    """Re-validate the file table of a manifest read back from storage (it may have been tampered with).

    Every path must be one of the registry's own files or a valid extra file path; no two may
    name the same file on a case-insensitive filesystem, and no file may also be a directory of
    another (``a`` and ``a/b``). Each entry needs a non-negative integer size and a hex sha256.

    Raises:
        ConfigError: naming the first offending path.
    """
    seen: dict[str, str] = {}
    for relpath, entry in files.items():
        if relpath not in RESERVED_FILES - {MANIFEST}:
            check_relpath(relpath)
        folded = unicodedata.normalize("NFC", relpath).casefold()
        if folded in seen:
            raise ConfigError(f"file paths {seen[folded]!r} and {relpath!r} name the same file")
        seen[folded] = relpath
        size, sha = entry.get("size"), entry.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"file {relpath!r} has an invalid size {size!r}")
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise ConfigError(f"file {relpath!r} has an invalid sha256 {sha!r}")
    for folded, relpath in seen.items():
        parts = folded.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise ConfigError(f"file {seen[parent]!r} is also a directory of {relpath!r}")


def cpu_tensors(tensors: Mapping[str, torch.Tensor | np.ndarray[Any, Any]]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors safetensors can store; numpy arrays are copied, shared storage is cloned."""
    import torch

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tensor names must be non-empty strings, got {name!r}")
        if isinstance(value, np.ndarray):
            try:
                tensor = torch.from_numpy(np.array(value, order="C", copy=True))
            except TypeError as exc:
                raise ConfigError(f"tensor {name!r}: numpy dtype {value.dtype} is not supported") from exc
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu")
        else:
            raise ConfigError(f"tensor {name!r} is a {type(value).__name__}, not a torch.Tensor or ndarray")
        ptr = tensor.untyped_storage().data_ptr()
        if not tensor.is_contiguous() or (ptr and ptr in seen):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def tensor_table(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """The manifest's record of the weights: each tensor's shape and dtype (``float32``) by name."""
    return {
        n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for n, t in tensors.items()
    }


def spec_yaml(model: str, spec: Mapping[str, Any]) -> bytes:
    """``spec.yaml``'s bytes: numpy scalars/arrays become Python values, so specs from training code dump."""
    plain = json_safe(dict(spec), keep_keys=True, keep_non_finite=True)
    try:
        return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).encode()
    except yaml.YAMLError as exc:
        raise ConfigError(f"spec of {model} cannot be stored as YAML: {exc}") from exc


def metrics_json(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Plain JSON values; a value JSON cannot hold is a ConfigError (refused before writing)."""
    try:
        return dict(json_safe(dict(metrics), strict=True))
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


#: Metric names (top level of a version's metrics) that are validation scores: a version whose
#: recorded value of one is NaN/inf (or was when written) cannot serve. ``loss`` is not one:
#: a diverged loss shows in the weights, which are checked themselves.
SCORE_SUFFIXES = ("threshold", "auprc", "auroc", "f1", "precision", "recall")


def is_score_name(name: str) -> bool:
    """Whether a top-level metric is a validation score (``auprc``, ``train_best_f1``, ``threshold``)."""
    return any(name == s or name.endswith("_" + s) for s in SCORE_SUFFIXES)


def non_finite_paths(metrics: Mapping[str, Any]) -> list[str]:
    """Dotted paths of the NaN/inf numbers in ``metrics`` (``heldout.global.auprc``, ``rounds.3.loss``)."""
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, np.generic | np.ndarray):
            value = value.tolist()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{path}.{i}" if path else str(i))

    walk(metrics, "")
    return found


def unservable_scores(metrics: Mapping[str, Any], recorded_non_finite: Any = ()) -> list[str]:
    """The validation scores that make a version unservable: top-level score metrics that are NaN/inf,
    or that the manifest records as non-finite when written (strict JSON stored them as null).
    """
    bad = [k for k in non_finite_paths(metrics) if "." not in k and is_score_name(k)]
    if isinstance(recorded_non_finite, list):
        bad += [k for k in recorded_non_finite if isinstance(k, str) and is_score_name(k) and k not in bad]
    return bad


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    import torch

    return [
        name
        for name, t in tensors.items()
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
    ]


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One complete (manifest-committed) version of a model in the registry.

    Attributes:
        model: Model name, e.g. ``graphsage``.
        version: Version id ``v{N:04d}-{yyyymmddThhmmss}`` (UTC).
        uri: fsspec URI of the version's directory.
        created_at: When the version was written (UTC).
        metrics: Training/evaluation metrics recorded with it (from the manifest).
        parent: The version it was trained from, if any (free-form, e.g. another model's version).
    """

    model: str
    version: str
    uri: str
    created_at: dt.datetime
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    parent: str | None = None

    @property
    def number(self) -> int:
        """The version's sequence number N."""
        return version_key(self.version)[0]

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"
