"""Registry safety: tampered manifests, torn PROMOTED.json, crash-safe writes, and versions that cannot serve."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch

from x0tta6bl4.models.registry import (
    PROMOTED,
    PROMOTIONS,
    CorruptVersionError,
    ModelRegistry,
    PromotionRecordError,
    RegistryError,
    UnsafePathError,
    UnservableVersionError,
)
from x0tta6bl4.models.versions import MANIFEST, METRICS, sha256_hex

SPEC = {"hidden": 8}
CARD = "# m\n"


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}


def _version_dir(reg: ModelRegistry, model: str, version: str) -> Path:
    return Path(reg.uri) / model / version


def _rewrite_manifest(
    reg: ModelRegistry, model: str, version: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    path = _version_dir(reg, model, version) / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def memory_registry() -> Iterator[ModelRegistry]:
    root = f"memory://registry-{uuid.uuid4().hex}"
    yield ModelRegistry(root)
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# ------------------------------------------------------------------ tampered manifests


@pytest.mark.parametrize(
    "bad_path",
    ["../../outside.txt", "/etc/passwd", "st/../../x", "st/a\x00b", "st//x", "st\\..\\x"],
)
def test_a_manifest_naming_a_path_outside_the_version_is_refused_before_any_read_or_write(
    tmp_path: Path, bad_path: str
) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    mv = reg.write_version("emb", {}, {}, {}, CARD, extra_files={"st/ok.bin": b"ok"})
    loaded = reg.load("emb", mv.version)

    def add(manifest: dict[str, Any]) -> None:
        manifest["files"][bad_path] = {"sha256": sha256_hex(b"evil"), "size": 4}

    _rewrite_manifest(reg, "emb", mv.version, add)

    with pytest.raises(UnsafePathError, match=r"manifest\.json is refused"):
        reg.load("emb", mv.version)
    assert reg.versions("emb") == []  # listed as unusable, not an error
    # a LoadedModel taken before the tampering holds its own checked manifest
    out = loaded.extract_files(tmp_path / "dest", prefix="st/")
    assert sorted(p.name for p in out.rglob("*")) == ["ok.bin"]
    assert not (tmp_path / "outside.txt").exists()


def test_duplicate_and_conflicting_manifest_paths_are_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = reg.write_version("emb", {}, {}, {}, CARD, extra_files={"st/a": b"a", "st/b": b"b"})
    path = _version_dir(reg, "emb", mv.version) / MANIFEST
    original = path.read_text()
    entry = '"st/a": {'
    path.write_text(original.replace(entry, f'"st/a": {{"sha256": "{"0" * 64}", "size": 1}}, {entry}', 1))
    with pytest.raises(CorruptVersionError, match="appears twice"):
        reg.load("emb", mv.version)

    for extra in ("ST/A", "st/a/inner"):
        path.write_text(original)

        def add(manifest: dict[str, Any], extra: str = extra) -> None:
            manifest["files"][extra] = {"sha256": "0" * 64, "size": 1}

        _rewrite_manifest(reg, "emb", mv.version, add)
        with pytest.raises(UnsafePathError):
            reg.load("emb", mv.version)


def test_extract_files_never_writes_through_a_symlink_leading_outside(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    mv = reg.write_version("emb", {}, {}, {}, CARD, extra_files={"st/sub/w.bin": b"w", "st/top": b"t"})
    loaded = reg.load("emb", mv.version)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)

    with pytest.raises(UnsafePathError, match="leads outside"):
        loaded.extract_files(dest, prefix="st/")
    assert list(outside.iterdir()) == []

    (dest / "sub").unlink()
    (dest / "top").symlink_to(outside / "victim")  # a final-component symlink is replaced, not followed
    loaded.extract_files(dest, prefix="st/")
    assert not (outside / "victim").exists()
    assert (dest / "top").read_bytes() == b"t" and not (dest / "top").is_symlink()


def test_a_version_file_replaced_by_a_symlink_out_of_the_version_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    mv = reg.write_version("emb", {}, {}, {}, CARD, extra_files={"st/x": b"secret"})
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    target = _version_dir(reg, "emb", mv.version) / "st" / "x"
    target.unlink()
    target.symlink_to(secret)  # same bytes, same hash: only the path check catches it
    with pytest.raises(UnsafePathError, match="outside the version"):
        reg.load("emb", mv.version)


# ------------------------------------------------------------------ PROMOTED.json


@pytest.mark.parametrize("torn", [b"", b'{"version": "v00', b"null", b'{"version": "../x"}'])
def test_a_torn_promoted_json_falls_back_to_the_last_recorded_promotion(tmp_path: Path, torn: bytes) -> None:
    reg = ModelRegistry(str(tmp_path))
    first = reg.write_version("m", _tensors(0), SPEC, {}, CARD)
    second = reg.write_version("m", _tensors(1), SPEC, {}, CARD)
    reg.promote("m", first.version)
    reg.promote("m", second.version)
    (tmp_path / "m" / PROMOTED).write_bytes(torn)

    assert reg.promoted_id("m") == second.version
    assert reg.load("m").version.version == second.version
    reg.promote("m", first.version)  # promoting again repairs the file
    assert json.loads((tmp_path / "m" / PROMOTED).read_text())["version"] == first.version


def test_a_torn_promoted_json_without_history_is_a_typed_error_naming_the_fix(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = reg.write_version("m", _tensors(), SPEC, {}, CARD)
    reg.promote("m", mv.version)
    (tmp_path / "m" / PROMOTED).write_bytes(b"")
    (tmp_path / "m" / PROMOTIONS).write_bytes(b'{"version": "v0001-2026')  # torn history line only

    with pytest.raises(PromotionRecordError, match="x0tta6bl4 models promote m"):
        reg.promoted_id("m")
    reg.promote("m", mv.version)  # an unreadable record never blocks promoting a good version
    assert reg.promoted_id("m") == mv.version
    (tmp_path / "m" / PROMOTED).write_bytes(b"{")  # the new history line did not merge into the torn one
    assert reg.promoted_id("m") == mv.version


def test_promotion_history_works_on_object_stores(memory_registry: ModelRegistry) -> None:
    reg = memory_registry
    first = reg.write_version("m", _tensors(0), SPEC, {}, CARD)
    second = reg.write_version("m", _tensors(1), SPEC, {}, CARD)
    reg.promote("m", first.version)
    reg.promote("m", second.version)
    fs, root = fsspec.core.url_to_fs(reg.uri)
    lines = fs.cat_file(f"{root}/m/{PROMOTIONS}").decode().splitlines()
    assert [json.loads(line)["version"] for line in lines] == [first.version, second.version]
    fs.pipe_file(f"{root}/m/{PROMOTED}", b"{")
    assert reg.promoted_id("m") == second.version


def test_version_files_and_directories_are_fsynced_before_the_manifest_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import x0tta6bl4.durable as durable
    import x0tta6bl4.models.registry as registry_module

    events: list[str] = []
    real_file, real_dir = durable.fsync_file, durable.fsync_dir

    def file_synced(path: str | os.PathLike[str]) -> None:
        events.append("file " + Path(path).name.split(".")[1])  # temporary ".<name>.<uuid>.tmp"
        real_file(path)

    def dir_synced(path: str | os.PathLike[str]) -> None:
        events.append("dir " + Path(path).name)
        real_dir(path)

    monkeypatch.setattr(durable, "fsync_file", file_synced)
    monkeypatch.setattr(durable, "fsync_dir", dir_synced)
    monkeypatch.setattr(registry_module, "fsync_dir", dir_synced)
    reg = ModelRegistry(str(tmp_path / "reg"))
    mv = reg.write_version("m", _tensors(), SPEC, {}, CARD, extra_files={"a/b/c.bin": b"c"})

    commit = events.index("file manifest")
    before = set(events[:commit])
    assert {"file weights", "file spec", "file metrics", "file MODEL_CARD", "file c"} <= before
    assert {"dir b", "dir a", f"dir {mv.version}", "dir m", "dir reg"} <= before
    assert events[commit + 1] == f"dir {mv.version}"


# ------------------------------------------------------------------ versions that cannot serve


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_version_with_a_non_finite_weight_is_refused_and_cannot_be_promoted(
    tmp_path: Path, bad: float
) -> None:
    reg = ModelRegistry(str(tmp_path))
    good = reg.write_version("m", _tensors(), SPEC, {"auprc": 0.9}, CARD)
    reg.promote("m", good.version)
    tensors = _tensors()
    tensors["w"][2, 1] = bad
    mv = reg.write_version("m", tensors, SPEC, {"auprc": 0.9}, CARD)

    with pytest.raises(UnservableVersionError, match="weights: w") as info:
        reg.load("m", mv.version)
    assert info.value.reasons == ["weights: w"]
    assert isinstance(info.value, RegistryError)  # Serve's hot swap keeps the previous version on these
    with pytest.raises(UnservableVersionError):
        reg.promote("m", mv.version)
    assert reg.promoted_id("m") == good.version
    inspected = reg.load("m", mv.version, servable=False)  # still inspectable
    assert torch.isnan(inspected.tensors["w"]).any() or torch.isinf(inspected.tensors["w"]).any()


@pytest.mark.parametrize("metric", ["score_threshold", "auprc", "train_best_f1"])
def test_a_version_whose_validation_score_was_not_finite_is_refused(tmp_path: Path, metric: str) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = reg.write_version("m", _tensors(), SPEC, {metric: float("nan"), "train_loss": 0.1}, CARD)

    assert reg.get("m", mv.version).metrics[metric] is None  # strict JSON stores NaN as null
    with pytest.raises(UnservableVersionError, match=f"metrics: {metric}"):
        reg.load("m", mv.version)


def test_a_non_finite_score_written_by_another_writer_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = reg.write_version("m", _tensors(), SPEC, {"auprc": 0.9, "best_f1": 0.8}, CARD)
    vdir = _version_dir(reg, "m", mv.version)
    metrics = b'{"auprc": NaN, "best_f1": Infinity}\n'  # Python's json reads these
    (vdir / METRICS).write_bytes(metrics)

    def rehash(manifest: dict[str, Any]) -> None:
        manifest["files"][METRICS] = {"sha256": sha256_hex(metrics), "size": len(metrics)}

    _rewrite_manifest(reg, "m", mv.version, rehash)
    with pytest.raises(UnservableVersionError) as info:
        reg.load("m", mv.version)
    assert info.value.reasons == ["metrics: auprc", "metrics: best_f1"]


def test_a_non_finite_loss_or_nested_value_alone_does_not_refuse_a_version(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    metrics = {"loss": float("nan"), "auprc": 0.7, "heldout": {"auprc": float("nan")}}
    mv = reg.write_version("m", _tensors(), SPEC, metrics, CARD)
    assert reg.load("m", mv.version).metrics["auprc"] == 0.7
