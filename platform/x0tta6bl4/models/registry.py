"""Versioned model registry on any fsspec URI: write, verify, promote and load model versions.

The module is one unit: writing, reading, verifying and promoting all obey one on-disk format and
its commit order (a version's files, then its manifest; the promotion history, then
``PROMOTED.json``), and keeping them in one class keeps those invariants in one place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from x0tta6bl4.durable import append_synced, fsync_dir, write_atomic
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.models.versions import (
    CARD,
    MANIFEST,
    MANIFEST_FORMAT,
    METRICS,
    MODEL_NAME_RE,
    RESERVED_FILES,
    SIGNATURE,
    SPEC,
    VERSION_ID_RE,
    WEIGHTS,
    ModelVersion,
    check_manifest_files,
    check_model_name,
    check_relpath,
    check_safe_relpath,
    check_version_id,
    cpu_tensors,
    metrics_json,
    non_finite_paths,
    non_finite_tensors,
    sha256_hex,
    spec_yaml,
    tensor_table,
    unservable_scores,
    version_key,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = "models/registry"
REGISTRY_ENV = "X0TTA6BL4_REGISTRY"

PROMOTED = "PROMOTED.json"
#: Every promotion of a model, one JSON record a line, appended before PROMOTED.json is replaced:
#: where the current promotion is read from when PROMOTED.json is torn or unreadable.
PROMOTIONS = "PROMOTIONS.jsonl"

_CHUNK = 8 << 20


class RegistryError(X0tta6bl4Error):
    """The model registry cannot do what was asked (unknown version, nothing promoted, I/O failure)."""


class CorruptVersionError(RegistryError):
    """A stored version does not match its manifest: missing file, hash mismatch, unreadable weights."""


class VersionMismatchError(RegistryError):
    """A stored version is intact but not what the caller expects (model name, tensor shapes, spec)."""


class RegistryNotWritableError(RegistryError):
    """The registry location cannot be written; raised before training starts, naming the OS reason."""


class UnsafePathError(CorruptVersionError):
    """A file path that would leave its directory: in a (tampered) manifest, or through a symlink.

    Absolute paths, ``..``, control characters (NUL), duplicates, a file that is also another's
    directory, or a symlink that leads outside the version or the extraction target.
    """


class UnservableVersionError(RegistryError):
    """An intact version that must not serve: NaN/inf weights, or non-finite recorded validation scores.

    A RegistryError, so Serve keeps the previous version serving and reports this one's refusal
    (``last_load_error``); ``reasons`` lists what is wrong (``weights: conv1.weight``, ``metrics: auprc``).
    """

    def __init__(self, message: str, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class PromotionRecordError(CorruptVersionError):
    """``PROMOTED.json`` is empty, torn or names no valid version, and the promotion history has no
    intact record to fall back to: promote a version again to repair it."""


def default_registry_uri() -> str:
    """The registry URI to use when none is given: ``$X0TTA6BL4_REGISTRY``, else ``models/registry``."""
    return os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY


@dataclasses.dataclass
class LoadedModel:
    """A verified version: tensors, spec, metrics and card in memory; extra files read on demand.

    Attributes:
        version: The version that was loaded.
        tensors: Weights by name, on CPU.
        spec: The model spec (``spec.yaml``).
        metrics: The recorded metrics (``metrics.json``).
        card: The model card (``MODEL_CARD.md``).
        files: Relative paths of the extra files stored with the version.
    """

    version: ModelVersion
    tensors: dict[str, torch.Tensor]
    spec: dict[str, Any]
    metrics: dict[str, Any]
    card: str
    files: tuple[str, ...]
    _registry: ModelRegistry = dataclasses.field(repr=False)
    _manifest: dict[str, Any] = dataclasses.field(repr=False)

    def read_file(self, relpath: str) -> bytes:
        """Read one file of the version, checked again against the manifest's sha256.

        Args:
            relpath: Path relative to the version directory, as given in ``extra_files`` at write time.

        Raises:
            RegistryError: ``relpath`` is not part of the version.
            CorruptVersionError: The file is missing or its content changed since it was written.
        """
        if relpath not in self._manifest["files"]:
            raise RegistryError(
                f"{self.version} has no file {relpath!r}; files: {', '.join(sorted(self._manifest['files']))}"
            )
        return self._registry._read_verified(
            self.version.model, self.version.version, self._manifest, relpath
        )

    def extract_files(self, dest: str | os.PathLike[str], prefix: str = "") -> Path:
        """Copy the extra files under ``prefix`` into local directory ``dest`` (e.g. for a loader that
        needs a directory, like sentence-transformers), each verified against the manifest.

        Args:
            dest: Local directory to write into (created if missing).
            prefix: Only files whose relative path starts with this are copied; it is stripped.

        Returns:
            ``dest`` as a Path.
        """
        wanted = [f for f in self.files if f.startswith(prefix)]
        if not wanted:
            raise RegistryError(f"{self.version} has no extra files under {prefix!r}")
        subpaths: dict[str, str] = {}
        for relpath in wanted:
            sub = relpath[len(prefix) :].lstrip("/")
            try:
                check_safe_relpath(sub)
            except ConfigError as exc:
                raise UnsafePathError(
                    f"{self.version}: cannot extract {relpath!r} under {prefix!r}: {exc}"
                ) from None
            subpaths[relpath] = sub
        root = Path(dest)
        root.mkdir(parents=True, exist_ok=True)
        real_root = Path(os.path.realpath(root))
        for relpath, sub in subpaths.items():
            target = real_root / sub
            _make_parents_inside(real_root, target, str(self.version))
            write_atomic(target, self.read_file(relpath))  # replaces a symlink, never writes through it
        return root


class ModelRegistry:
    """Model versions under ``<uri>/<model>/<version>/`` on local disk or any fsspec filesystem.

    A version is committed by its ``manifest.json``, written last (object stores have no atomic
    rename); directories without one are incomplete and ignored. On local disk every file is
    written atomically and fsynced, and every directory synced, before the manifest; on object
    stores each file is one whole object. Every load re-validates the manifest's paths and checks
    every file's sha256 against it, so a corrupt, swapped or tampered version is refused rather
    than served; so is one with NaN/inf weights or validation scores. Promotion appends to
    ``<model>/PROMOTIONS.jsonl`` and replaces ``<model>/PROMOTED.json``, which Serve reads. One
    writer per model is expected (the training driver); on local disk version directories are
    also reserved exclusively.
    """

    def __init__(self, uri: str | os.PathLike[str] = DEFAULT_REGISTRY) -> None:
        """Open (not create) the registry at ``uri``: a local path or any fsspec URL (``s3://``, ...).

        Raises:
            ConfigError: The URI's protocol is unknown or its fsspec backend is not installed.
        """
        import fsspec.core
        from fsspec.implementations.local import LocalFileSystem

        self.uri = os.fspath(uri)
        try:
            self._fs, path = fsspec.core.url_to_fs(self.uri)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"model registry {self.uri!r}: {exc}") from exc
        self._root: str = path.rstrip("/") or "/"
        self._local = isinstance(self._fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.uri!r})"

    # ----------------------------------------------------------------- paths and raw I/O

    def _path(self, *parts: str) -> str:
        return "/".join([self._root.rstrip("/"), *parts])

    def _url(self, path: str) -> str:
        return self.uri if path == self._root else str(self._fs.unstrip_protocol(path))

    def _put(self, path: str, data: bytes) -> None:
        """Write one file whole: on local disk atomically and fsynced (old or new content after a crash).

        Other filesystems get one ``pipe_file``: object stores (S3, GCS, Azure) make an object
        visible only whole, but give no rename; what a crash leaves on other remote filesystems
        (SFTP, HDFS, ...) is theirs to say. Versions are therefore committed by their manifest,
        written last, and readers check every file against it.
        """
        parent = path.rsplit("/", 1)[0]
        self._fs.makedirs(parent, exist_ok=True)
        if self._local:
            write_atomic(path, data)
        else:
            self._fs.pipe_file(path, data)

    def _ls_dirs(self, path: str) -> list[str]:
        """Names of the sub-directories of ``path`` (empty if it does not exist or is not a directory)."""
        self._fs.invalidate_cache(path)
        try:
            entries = self._fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise RegistryError(f"cannot list {self._url(path)}: {exc}") from exc
        return [
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"
        ]

    # ----------------------------------------------------------------- writing

    def check_writable(self) -> None:
        """Write and delete a probe file at the registry root, so training fails before it starts.

        Raises:
            RegistryNotWritableError: Naming the registry URI and the OS (or object store) reason.
        """
        probe = self._path(f".write-probe-{uuid.uuid4().hex}")
        try:
            self._put(probe, b"x0tta6bl4 registry write probe\n")
            self._fs.rm_file(probe)
        except Exception as exc:  # any backend failure means "not writable"; report it as one line
            reason = f"{type(exc).__name__}: {exc}"
            raise RegistryNotWritableError(
                f"model registry {self.uri} is not writable ({reason}); "
                "choose a writable registry path or URI"
            ) from exc

    def _reserve(self, model: str) -> tuple[str, str]:
        """Pick the next version id (N = highest existing, complete or not, + 1) and claim its directory."""
        existing = [d for d in self._ls_dirs(self._path(model)) if VERSION_ID_RE.match(d)]
        number = max((version_key(d)[0] for d in existing), default=0) + 1
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        for _ in range(1000):
            version = f"v{number:04d}-{stamp}"
            vdir = self._path(model, version)
            if self._local:
                os.makedirs(self._path(model), exist_ok=True)
                try:
                    os.mkdir(vdir)  # exclusive: a concurrent writer gets FileExistsError
                except FileExistsError:
                    number += 1
                    continue
                return version, vdir
            if not self._fs.exists(vdir):
                return version, vdir
            number += 1
        raise RegistryError(f"could not reserve a new version of {model} in {self.uri}")  # pragma: no cover

    def write_version(
        self,
        model: str,
        tensors: Mapping[str, torch.Tensor | np.ndarray[Any, Any]],
        spec: Mapping[str, Any],
        metrics: Mapping[str, Any],
        card: str,
        parent: str | None = None,
        extra_files: Mapping[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store a new version: weights, spec, metrics, card, extra files, then the manifest (commit).

        Everything is serialised before the first write, so bad input leaves nothing behind.

        Args:
            model: Model name (letters, digits, ``_.-``).
            tensors: Weights by name (torch tensors on any device, or numpy arrays).
            spec: The model spec, stored as ``spec.yaml`` (YAML-safe values; numpy scalars are converted).
            metrics: Training/evaluation metrics, stored as ``metrics.json`` (NaN/inf become null).
            card: Short model card in Markdown.
            parent: The version this one was trained from, if any.
            extra_files: More files by relative POSIX path (e.g. a merged sentence-transformers model).

        Returns:
            The committed version.

        Raises:
            ConfigError: Invalid names, paths or values that cannot be serialised.
            RegistryNotWritableError: A write failed; the incomplete version stays invisible.
        """
        from safetensors.torch import save as save_safetensors

        check_model_name(model)
        cpu = cpu_tensors(tensors)
        spec_bytes = spec_yaml(model, spec)
        clean_metrics = metrics_json(metrics)
        non_finite = non_finite_paths(metrics)
        files: dict[str, bytes] = {
            WEIGHTS: save_safetensors(cpu, metadata={"model": model}),
            SPEC: spec_bytes,
            METRICS: (json.dumps(clean_metrics, indent=2, sort_keys=True) + "\n").encode(),
            CARD: (card if card.endswith("\n") else card + "\n").encode(),
        }
        for relpath, data in (extra_files or {}).items():
            if not isinstance(data, bytes | bytearray | memoryview):
                raise ConfigError(f"extra file {relpath!r} must be bytes, got {type(data).__name__}")
            files[check_relpath(relpath)] = bytes(data)

        try:
            version, vdir = self._reserve(model)
            created = dt.datetime.now(dt.UTC).replace(microsecond=0)
            manifest = {
                "format": MANIFEST_FORMAT,
                "model": model,
                "version": version,
                "created_at": created.isoformat(),
                "parent": parent,
                "metrics": clean_metrics,
                # strict JSON stores NaN/inf as null: record which were, so a load can refuse them
                "non_finite_metrics": non_finite,
                "tensors": tensor_table(cpu),
                "files": {p: {"sha256": sha256_hex(d), "size": len(d)} for p, d in sorted(files.items())},
            }
            for relpath, data in files.items():
                self._put(f"{vdir}/{relpath}", data)
            if self._local:  # every directory entry on disk before the manifest commits the version
                subdirs = {"/".join(r.split("/")[:i]) for r in files for i in range(1, r.count("/") + 1)}
                for directory in sorted(subdirs, key=lambda d: -d.count("/")):  # deepest first
                    fsync_dir(f"{vdir}/{directory}")
                fsync_dir(vdir)
                fsync_dir(self._path(model))
                fsync_dir(self._root)
            self._put(f"{vdir}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        except RegistryError:
            raise
        except OSError as exc:
            raise RegistryNotWritableError(
                f"could not write a new version of {model} to {self.uri}: {exc}; "
                "the incomplete version has no manifest and is ignored"
            ) from exc
        written = ModelVersion(model, version, self._url(vdir), created, clean_metrics, parent)
        log.info("registry: wrote %s (%d tensors, %d files)", written, len(cpu), len(files))
        return written

    def read_version_file(self, model: str, version: str, name: str) -> bytes:
        """One file of a version directory as stored (manifest and signature too), unverified."""
        check_model_name(model)
        check_version_id(version)
        return bytes(self._fs.cat_file(self._path(model, version, name)))

    def write_version_file(self, model: str, version: str, name: str, data: bytes) -> None:
        """Replace ``SIGNATURE.json`` of a committed version atomically (no other file may change)."""
        if name != SIGNATURE:
            raise ConfigError(f"only {SIGNATURE} may be written into a committed version, not {name!r}")
        check_model_name(model)
        check_version_id(version)
        try:
            self._put(self._path(model, version, name), data)
        except OSError as exc:
            raise RegistryNotWritableError(f"cannot write {name} of {model} {version}: {exc}") from exc

    # ----------------------------------------------------------------- reading

    def _manifest(self, model: str, version: str) -> dict[str, Any]:
        """Read and sanity-check a version's manifest."""
        vdir = self._path(model, version)
        where = f"{model} version {version} ({self._url(vdir)})"
        try:
            raw = self._fs.cat_file(f"{vdir}/{MANIFEST}")
        except FileNotFoundError:
            if self._fs.exists(vdir):
                raise CorruptVersionError(
                    f"{where} is incomplete: {MANIFEST} is missing (the write was interrupted or is "
                    "still running)"
                ) from None
            known = ", ".join(v.version for v in self.versions(model)) or "none"
            raise RegistryError(f"model {model} has no version {version} (versions: {known})") from None
        except OSError as exc:
            raise RegistryError(f"cannot read {where}: {exc}") from exc
        try:
            manifest: dict[str, Any] = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
            files = manifest["files"]
            ok = (
                isinstance(manifest, dict)
                and isinstance(files, dict)
                and all(isinstance(f, dict) and {"sha256", "size"} <= f.keys() for f in files.values())
                and isinstance(manifest["tensors"], dict)
                and isinstance(manifest["version"], str)
                and isinstance(manifest["model"], str)
            )
            dt.datetime.fromisoformat(manifest["created_at"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptVersionError(f"{where}: {MANIFEST} is unreadable ({exc})") from exc
        if not ok:
            raise CorruptVersionError(f"{where}: {MANIFEST} is malformed")
        try:
            check_manifest_files(files)
        except ConfigError as exc:
            raise UnsafePathError(f"{where}: {MANIFEST} is refused: {exc}") from None
        if manifest["model"] != model:
            raise VersionMismatchError(f"{where}: its manifest says it is model {manifest['model']!r}")
        if manifest["version"] != version:
            raise VersionMismatchError(f"{where}: its manifest says it is version {manifest['version']!r}")
        missing = RESERVED_FILES - {MANIFEST} - files.keys()
        if missing:
            raise CorruptVersionError(f"{where}: {MANIFEST} does not list {', '.join(sorted(missing))}")
        return manifest

    def _version_from(self, model: str, version: str, manifest: Mapping[str, Any]) -> ModelVersion:
        return ModelVersion(
            model=model,
            version=version,
            uri=self._url(self._path(model, version)),
            created_at=dt.datetime.fromisoformat(manifest["created_at"]),
            metrics=dict(manifest.get("metrics") or {}),
            parent=manifest.get("parent"),
        )

    def _read_verified(self, model: str, version: str, manifest: Mapping[str, Any], relpath: str) -> bytes:
        """Read one file of a version and check its size and sha256 against the manifest."""
        path = self._path(model, version, relpath)
        where = f"{model} version {version}"
        self._check_inside(model, version, path)
        try:
            data = bytes(self._fs.cat_file(path))
        except FileNotFoundError:
            raise CorruptVersionError(f"{where} is corrupt: {relpath} is missing") from None
        except OSError as exc:
            raise RegistryError(f"cannot read {relpath} of {where}: {exc}") from exc
        self._check_digest(where, relpath, manifest, len(data), sha256_hex(data))
        return data

    def _verify_streamed(self, model: str, version: str, manifest: Mapping[str, Any], relpath: str) -> None:
        """Check a (possibly large) file's sha256 without keeping it in memory."""
        path = self._path(model, version, relpath)
        where = f"{model} version {version}"
        self._check_inside(model, version, path)
        digest = hashlib.sha256()
        size = 0
        try:
            with self._fs.open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise CorruptVersionError(f"{where} is corrupt: {relpath} is missing") from None
        except OSError as exc:
            raise RegistryError(f"cannot read {relpath} of {where}: {exc}") from exc
        self._check_digest(where, relpath, manifest, size, digest.hexdigest())

    def _check_inside(self, model: str, version: str, path: str) -> None:
        """On local disk, refuse a version file that resolves (through symlinks) outside its version."""
        if not self._local:
            return
        vdir = os.path.realpath(self._path(model, version))
        real = os.path.realpath(path)
        if os.path.commonpath([vdir, real]) != vdir:
            raise UnsafePathError(
                f"{model} version {version}: {path} leads outside the version directory (to {real})"
            )

    @staticmethod
    def _check_digest(where: str, relpath: str, manifest: Mapping[str, Any], size: int, sha: str) -> None:
        expected = manifest["files"][relpath]
        if size != expected["size"]:
            raise CorruptVersionError(
                f"{where} is corrupt: {relpath} has {size} bytes, the manifest says {expected['size']}"
            )
        if sha != expected["sha256"]:
            raise CorruptVersionError(
                f"{where} is corrupt: {relpath} sha256 {sha[:16]}… does not match the manifest's "
                f"{str(expected['sha256'])[:16]}…"
            )

    def models(self) -> list[str]:
        """Names of the models that have a directory in the registry, sorted."""
        return sorted(d for d in self._ls_dirs(self._root) if MODEL_NAME_RE.match(d))

    def versions(self, model: str) -> list[ModelVersion]:
        """Complete versions of ``model``, oldest first; incomplete or unreadable ones are skipped."""
        check_model_name(model)
        found: list[ModelVersion] = []
        for name in sorted(
            (d for d in self._ls_dirs(self._path(model)) if VERSION_ID_RE.match(d)), key=version_key
        ):
            try:
                found.append(self._version_from(model, name, self._manifest(model, name)))
            except CorruptVersionError as exc:
                log.debug("registry: skipping %s/%s: %s", model, name, exc)
            except VersionMismatchError as exc:
                log.warning("registry: skipping %s/%s: %s", model, name, exc)
        return found

    def latest(self, model: str) -> ModelVersion | None:
        """The newest complete version of ``model``, or None if there is none."""
        found = self.versions(model)
        return found[-1] if found else None

    def get(self, model: str, version: str) -> ModelVersion:
        """One version's record (manifest read, files not verified).

        Raises:
            RegistryError: No such version. CorruptVersionError: incomplete or unreadable manifest.
        """
        check_model_name(model)
        check_version_id(version)
        return self._version_from(model, version, self._manifest(model, version))

    def promoted_id(self, model: str) -> str | None:
        """The promoted version id of ``model`` (None if none), without checking that version.

        ``PROMOTED.json`` is written atomically (local disk) or as one object (object stores), so
        it is normally whole. Should it be empty, torn or name no valid version anyway (a crash
        under an older writer, a damaged disk), the last intact record of the promotion history
        (``PROMOTIONS.jsonl``, appended before each replacement) is used instead, with a warning:
        replicas keep starting on the version an operator last promoted.

        Raises:
            PromotionRecordError: PROMOTED.json is unusable and the history has no intact record.
            RegistryError: the file cannot be read (I/O error).
        """
        check_model_name(model)
        path = self._path(model, PROMOTED)
        try:
            raw = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(f"cannot read {self._url(path)}: {exc}") from exc
        version = _promoted_version(raw)
        if version is not None:
            return version
        fallback = self._last_promotion(model)
        if fallback is None:
            raise PromotionRecordError(
                f"{self._url(path)} is empty, torn or names no valid version, and {PROMOTIONS} has no "
                f"intact record; promote a version again: `x0tta6bl4 models promote {model} VERSION "
                f"--registry {self.uri}`"
            )
        log.warning(
            "registry: %s is unreadable; using the last promotion recorded in %s: %s",
            self._url(path),
            PROMOTIONS,
            fallback,
        )
        return fallback

    def _last_promotion(self, model: str) -> str | None:
        """The version of the last intact line of ``PROMOTIONS.jsonl`` (torn lines are skipped)."""
        try:
            raw = bytes(self._fs.cat_file(self._path(model, PROMOTIONS)))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(f"cannot read {self._url(self._path(model, PROMOTIONS))}: {exc}") from exc
        for line in reversed(raw.splitlines()):
            version = _promoted_version(line)
            if version is not None:
                return version
        return None

    def _append_promotion(self, model: str, line: bytes) -> None:
        """Append one record to the history: synced on local disk, the whole file rewritten elsewhere."""
        path = self._path(model, PROMOTIONS)
        if self._local:
            append_synced(path, [line.decode()])
            return
        try:
            old = bytes(self._fs.cat_file(path))
        except FileNotFoundError:
            old = b""
        if old and not old.endswith(b"\n"):
            old += b"\n"  # a torn last line stays torn, on its own line
        self._fs.pipe_file(path, old + line + b"\n")

    def promoted(self, model: str) -> ModelVersion | None:
        """The version Serve should use for ``model``, or None if none has been promoted."""
        check_model_name(model)
        version = self.promoted_id(model)
        return None if version is None else self.get(model, version)

    def promote(self, model: str, version: str) -> None:
        """Make ``version`` the one Serve loads, after verifying every file of it and that it can serve.

        The record is appended to ``PROMOTIONS.jsonl`` and then replaces ``PROMOTED.json``, both durably.

        Raises:
            RegistryError: Unknown version, or PROMOTED.json cannot be written.
            CorruptVersionError / VersionMismatchError: The version fails verification.
            UnservableVersionError: NaN/inf weights or non-finite validation scores.
        """
        self.load(model, version)
        try:
            previous = self.promoted_id(model)
        except CorruptVersionError:
            previous = None
        record = {
            "version": version,
            "promoted_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "previous": previous,
        }
        try:
            # history first: a crash between the two leaves PROMOTED.json whole (old or new)
            self._append_promotion(model, json.dumps(record, separators=(",", ":")).encode())
            self._put(self._path(model, PROMOTED), json.dumps(record, indent=2).encode())
        except OSError as exc:
            raise RegistryNotWritableError(f"cannot promote {model} {version} in {self.uri}: {exc}") from exc
        log.info("registry: promoted %s/%s (was %s)", model, version, previous)

    def load(
        self,
        model: str,
        version: str | None = None,
        *,
        expect_tensors: Mapping[str, tuple[int, ...]] | None = None,
        expect_spec: Mapping[str, Any] | None = None,
        servable: bool = True,
    ) -> LoadedModel:
        """Load and verify a version: every file's sha256, the weights' header, and the expectations.

        Args:
            model: Model name.
            version: Version id; None loads the promoted version.
            expect_tensors: Tensors that must exist with exactly these shapes (others are allowed).
            expect_spec: Spec entries that must exist with exactly these values.
            servable: Also refuse a version that cannot serve (NaN/inf in its weights, or a
                validation score recorded as NaN/inf); False only to inspect one.

        Raises:
            RegistryError: Unknown version, or None given and nothing promoted.
            CorruptVersionError: Missing file, hash/size mismatch, unreadable weights or spec.
            VersionMismatchError: Wrong model name, tensor shape or spec value.
            UnservableVersionError: ``servable`` and the weights or validation scores are not finite.
        """
        from safetensors.torch import load as load_safetensors

        check_model_name(model)
        if version is None:
            version = self.promoted_id(model)
            if version is None:
                latest = self.latest(model)
                hint = latest.version if latest else "VERSION"
                raise RegistryError(
                    f"model {model} has no promoted version in {self.uri}; promote one with "
                    f"`x0tta6bl4 models promote {model} {hint} --registry {self.uri}`"
                )
        check_version_id(version)
        manifest = self._manifest(model, version)
        mv = self._version_from(model, version, manifest)
        where = f"{model} version {version}"

        core = {
            name: self._read_verified(model, version, manifest, name)
            for name in sorted(RESERVED_FILES - {MANIFEST})
        }
        extra = tuple(sorted(p for p in manifest["files"] if p not in RESERVED_FILES))
        for relpath in extra:
            self._verify_streamed(model, version, manifest, relpath)

        try:
            tensors = load_safetensors(core[WEIGHTS])
        except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError)
            raise CorruptVersionError(f"{where} is corrupt: {WEIGHTS} is unreadable ({exc})") from exc
        if tensor_table(tensors) != manifest["tensors"]:
            raise CorruptVersionError(
                f"{where} is corrupt: the tensors in {WEIGHTS} differ from the manifest"
            )
        try:
            spec = yaml.safe_load(core[SPEC]) or {}
            metrics = json.loads(core[METRICS])
            card = core[CARD].decode()
        except (yaml.YAMLError, ValueError) as exc:
            raise CorruptVersionError(f"{where} is corrupt: {exc}") from exc
        if not isinstance(spec, dict) or not isinstance(metrics, dict):
            raise CorruptVersionError(f"{where} is corrupt: {SPEC} and {METRICS} must hold mappings")

        problems: list[str] = []
        for name, shape in (expect_tensors or {}).items():
            if name not in tensors:
                problems.append(f"tensor {name} missing")
            elif tuple(tensors[name].shape) != tuple(shape):
                problems.append(
                    f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
                )
        for key, value in (expect_spec or {}).items():
            if key not in spec:
                problems.append(f"spec has no {key!r}")
            elif spec[key] != value:
                problems.append(f"spec {key}={spec[key]!r}, expected {value!r}")
        if problems:
            raise VersionMismatchError(
                f"{where} does not match what the caller expects: {'; '.join(problems)}"
            )
        if servable:
            check_servable(where, tensors, metrics, manifest)

        return LoadedModel(mv, tensors, spec, metrics, card, extra, self, manifest)


def check_servable(
    where: str, tensors: Mapping[str, torch.Tensor], metrics: Mapping[str, Any], manifest: Mapping[str, Any]
) -> None:
    """Refuse a version whose weights hold NaN/inf or whose validation scores are not finite.

    Scores are read from ``metrics.json`` and the manifest (NaN/inf there means a writer other
    than this registry, or tampering) and from the manifest's ``non_finite_metrics`` (what this
    registry stored as null because it was NaN/inf when the version was written).

    Raises:
        UnservableVersionError: naming the tensors and scores at fault.
    """
    reasons = [f"weights: {name}" for name in non_finite_tensors(tensors)]
    scores = unservable_scores(metrics, manifest.get("non_finite_metrics"))
    scores += [k for k in unservable_scores(manifest.get("metrics") or {}) if k not in scores]
    reasons += [f"metrics: {name}" for name in scores]
    if reasons:
        raise UnservableVersionError(
            f"{where} cannot serve: NaN or infinite values in {'; '.join(reasons)}", reasons
        )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice (JSON keeps the last silently) makes the manifest corrupt."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _promoted_version(raw: bytes) -> str | None:
    """The version a PROMOTED.json (or history line) names, or None if it is empty, torn or invalid."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    version = record.get("version") if isinstance(record, dict) else None
    return version if isinstance(version, str) and VERSION_ID_RE.match(version) else None


def _make_parents_inside(root: Path, target: Path, where: str) -> None:
    """Create ``target``'s missing parent directories below ``root``, refusing any that leads outside it."""
    current = root
    for part in target.relative_to(root).parts[:-1]:
        current = current / part
        if not current.exists() and not current.is_symlink():
            current.mkdir()
        real = os.path.realpath(current)
        if os.path.commonpath([root, real]) != str(root) or not os.path.isdir(real):
            raise UnsafePathError(
                f"{where}: cannot extract into {current}: it leads outside {root} (to {real}) "
                "or is not a directory"
            )
