"""Model registry: versions round-trip on disk and fsspec, corrupt or mismatched ones are refused."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.models.cli import add_models_arguments, models_main
from x0tta6bl4.models.registry import (
    CorruptVersionError,
    ModelRegistry,
    RegistryError,
    RegistryNotWritableError,
    VersionMismatchError,
)

SPEC = {"hidden": 8, "layers": 2, "features": ["rtt_ms", "loss"]}
CARD = "# graphsage\n\nTest model."


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"conv1.weight": torch.randn(8, 4, generator=gen), "conv1.bias": torch.randn(8, generator=gen)}


def _write(reg: ModelRegistry, seed: int = 0, model: str = "graphsage", **kwargs: object):
    return reg.write_version(model, _tensors(seed), SPEC, {"f1": 0.5 + seed / 100}, CARD, **kwargs)


@pytest.fixture
def memory_registry() -> Iterator[ModelRegistry]:
    root = f"memory://registry-{uuid.uuid4().hex}"
    yield ModelRegistry(root)
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(params=["local", "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "local":
        return ModelRegistry(str(tmp_path / "registry"))
    return request.getfixturevalue("memory_registry")


def _fs_path(reg: ModelRegistry, *parts: str) -> tuple[object, str]:
    fs, root = fsspec.core.url_to_fs(reg.uri)
    return fs, "/".join([root.rstrip("/"), *parts])


def test_round_trip_restores_tensors_spec_metrics_card_and_extra_files(registry: ModelRegistry) -> None:
    tensors = _tensors(1)
    extra = {"st/config.json": b'{"dim": 384}', "st/1_Pooling/config.json": b"{}"}
    mv = registry.write_version(
        "graphsage", tensors, SPEC, {"f1": 0.9, "loss": float("nan")}, CARD, parent="v0000", extra_files=extra
    )

    loaded = registry.load("graphsage", mv.version)

    assert loaded.version == mv
    assert set(loaded.tensors) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)
    assert loaded.spec == SPEC
    assert loaded.metrics == {"f1": 0.9, "loss": None}  # NaN is stored as null: strict JSON
    assert loaded.card == CARD + "\n"
    assert loaded.files == ("st/1_Pooling/config.json", "st/config.json")
    assert loaded.read_file("st/config.json") == b'{"dim": 384}'
    assert mv.parent == "v0000"
    assert mv.metrics == {"f1": 0.9, "loss": None}
    assert mv.uri.endswith(f"/graphsage/{mv.version}")
    assert registry.get("graphsage", mv.version) == mv
    assert registry.models() == ["graphsage"]


def test_extract_files_writes_a_verified_local_directory(registry: ModelRegistry, tmp_path: Path) -> None:
    extra = {"st/config.json": b"{}", "st/sub/w.bin": b"\x00\x01", "other.txt": b"x"}
    mv = registry.write_version("embedder", {}, {"dim": 2}, {}, "card", extra_files=extra)

    out = registry.load("embedder", mv.version).extract_files(tmp_path / "st", prefix="st/")

    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "config.json",
        "sub/w.bin",
    ]
    assert (out / "sub" / "w.bin").read_bytes() == b"\x00\x01"


def test_version_ids_are_numbered_sortable_and_listed_oldest_first(registry: ModelRegistry) -> None:
    written = [_write(registry, seed) for seed in range(3)]

    assert [v.number for v in written] == [1, 2, 3]
    assert all(re.fullmatch(r"v\d{4}-\d{8}T\d{6}", v.version) for v in written)
    assert len({v.version for v in written}) == 3
    assert registry.versions("graphsage") == written
    assert sorted(v.version for v in written) == [v.version for v in written]
    assert registry.latest("graphsage") == written[-1]
    assert registry.versions("unknown") == []
    assert registry.latest("unknown") is None


def test_version_without_manifest_is_ignored_and_its_number_not_reused(registry: ModelRegistry) -> None:
    first = _write(registry)
    fs, vdir = _fs_path(registry, "graphsage", "v0002-20260101T000000")
    fs.makedirs(vdir, exist_ok=True)  # type: ignore[attr-defined]
    fs.pipe_file(f"{vdir}/weights.safetensors", b"half written")  # type: ignore[attr-defined]

    assert registry.versions("graphsage") == [first]
    with pytest.raises(CorruptVersionError, match=r"incomplete: manifest\.json is missing"):
        registry.load("graphsage", "v0002-20260101T000000")
    assert _write(registry, 1).number == 3


def test_flipped_byte_in_weights_is_refused_as_corrupt(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = _write(reg)
    weights = tmp_path / "graphsage" / mv.version / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CorruptVersionError, match=rf"graphsage version {mv.version} is corrupt: weights"):
        reg.load("graphsage", mv.version)


def test_missing_file_is_refused_as_corrupt(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = _write(reg)
    (tmp_path / "graphsage" / mv.version / "MODEL_CARD.md").unlink()

    with pytest.raises(CorruptVersionError, match=r"MODEL_CARD\.md is missing"):
        reg.load("graphsage", mv.version)


def test_unparseable_weights_are_refused_even_when_the_manifest_hash_matches(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = _write(reg)
    vdir = tmp_path / "graphsage" / mv.version
    garbage = b"not a safetensors file"
    (vdir / "weights.safetensors").write_bytes(garbage)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = {
        "sha256": hashlib.sha256(garbage).hexdigest(),
        "size": len(garbage),
    }
    (vdir / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(CorruptVersionError, match=r"weights\.safetensors is unreadable"):
        reg.load("graphsage", mv.version)


def test_weights_whose_tensors_differ_from_the_manifest_are_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = _write(reg)
    vdir = tmp_path / "graphsage" / mv.version
    other = save_safetensors({"conv1.weight": torch.zeros(2, 2)})
    (vdir / "weights.safetensors").write_bytes(other)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = {
        "sha256": hashlib.sha256(other).hexdigest(),
        "size": len(other),
    }
    (vdir / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(CorruptVersionError, match="differ from the manifest"):
        reg.load("graphsage", mv.version)


def test_tampered_extra_file_is_refused_at_load_and_on_read(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = reg.write_version("embedder", {}, {}, {}, "card", extra_files={"st/model.bin": b"abc"})
    loaded = reg.load("embedder", mv.version)
    (tmp_path / "embedder" / mv.version / "st" / "model.bin").write_bytes(b"abd")

    with pytest.raises(CorruptVersionError, match=r"st/model.bin sha256"):
        loaded.read_file("st/model.bin")
    with pytest.raises(CorruptVersionError, match=r"st/model.bin sha256"):
        reg.load("embedder", mv.version)
    with pytest.raises(RegistryError, match="has no file 'nope'"):
        loaded.read_file("nope")


def test_expected_shape_missing_tensor_or_spec_value_is_a_version_mismatch(registry: ModelRegistry) -> None:
    mv = _write(registry)

    ok = registry.load(
        "graphsage", mv.version, expect_tensors={"conv1.weight": (8, 4)}, expect_spec={"hidden": 8}
    )
    assert ok.version == mv
    with pytest.raises(VersionMismatchError, match=r"conv1.weight has shape \(8, 4\), expected \(16, 4\)"):
        registry.load("graphsage", mv.version, expect_tensors={"conv1.weight": (16, 4)})
    with pytest.raises(VersionMismatchError, match=r"tensor conv2\.weight missing"):
        registry.load("graphsage", mv.version, expect_tensors={"conv2.weight": (8, 8)})
    with pytest.raises(VersionMismatchError, match=r"spec hidden=8, expected 16; spec has no 'heads'"):
        registry.load("graphsage", mv.version, expect_spec={"hidden": 16, "heads": 2})


def test_version_copied_under_another_model_name_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    mv = _write(reg)
    (tmp_path / "lora").mkdir()
    (tmp_path / "graphsage" / mv.version).rename(tmp_path / "lora" / mv.version)

    with pytest.raises(VersionMismatchError, match="its manifest says it is model 'graphsage'"):
        reg.load("lora", mv.version)
    assert reg.versions("lora") == []


def test_promote_then_load_without_version_uses_the_promoted_one(registry: ModelRegistry) -> None:
    v1, v2 = _write(registry, 1), _write(registry, 2)
    assert registry.promoted("graphsage") is None

    registry.promote("graphsage", v1.version)
    assert registry.promoted("graphsage") == v1
    assert registry.load("graphsage").version == v1

    registry.promote("graphsage", v2.version)
    assert registry.promoted("graphsage") == v2
    assert registry.load("graphsage").version == v2
    fs, path = _fs_path(registry, "graphsage", "PROMOTED.json")
    record = json.loads(fs.cat_file(path))  # type: ignore[attr-defined]
    assert record["version"] == v2.version
    assert record["previous"] == v1.version
    assert "promoted_at" in record


def test_promoting_a_corrupt_version_fails_and_keeps_the_previous_promotion(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    v1, v2 = _write(reg, 1), _write(reg, 2)
    reg.promote("graphsage", v1.version)
    (tmp_path / "graphsage" / v2.version / "spec.yaml").write_text("hidden: 999\n")

    with pytest.raises(CorruptVersionError, match=r"spec\.yaml"):
        reg.promote("graphsage", v2.version)
    assert reg.promoted("graphsage") == v1


def test_load_without_promotion_says_how_to_promote(registry: ModelRegistry) -> None:
    mv = _write(registry)

    with pytest.raises(RegistryError, match="no promoted version") as info:
        registry.load("graphsage")
    assert f"x0tta6bl4 models promote graphsage {mv.version}" in str(info.value)


def test_unknown_version_is_a_registry_error_listing_the_known_ones(registry: ModelRegistry) -> None:
    mv = _write(registry)

    with pytest.raises(RegistryError, match=rf"no version v0009-20260101T000000 \(versions: {mv.version}\)"):
        registry.get("graphsage", "v0009-20260101T000000")
    with pytest.raises(ConfigError, match="invalid version id"):
        registry.load("graphsage", "latest")


def test_registry_under_a_regular_file_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    uri = str(blocker / "registry")
    reg = ModelRegistry(uri)

    with pytest.raises(RegistryNotWritableError, match="not writable") as info:
        reg.check_writable()
    assert uri in str(info.value)
    assert re.search(r"(NotADirectoryError|FileExistsError)", str(info.value))
    with pytest.raises(RegistryNotWritableError):
        _write(reg)


def test_check_writable_creates_the_registry_and_leaves_no_probe(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "new" / "registry"))

    reg.check_writable()

    assert list((tmp_path / "new" / "registry").iterdir()) == []


def test_invalid_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))

    with pytest.raises(ConfigError, match="invalid model name"):
        reg.write_version("../escape", _tensors(), SPEC, {}, CARD)
    with pytest.raises(ConfigError, match="invalid extra file path"):
        reg.write_version("m", _tensors(), SPEC, {}, CARD, extra_files={"../x": b""})
    with pytest.raises(ConfigError, match="clashes"):
        reg.write_version("m", _tensors(), SPEC, {}, CARD, extra_files={"manifest.json": b"{}"})
    with pytest.raises(ConfigError, match="cannot be stored as YAML"):
        reg.write_version("m", _tensors(), {"obj": object()}, {}, CARD)
    with pytest.raises(ConfigError, match="cannot be stored as JSON"):
        reg.write_version("m", _tensors(), SPEC, {"obj": object()}, CARD)
    with pytest.raises(ConfigError, match=r"not a torch\.Tensor or ndarray"):
        reg.write_version("m", {"w": [1.0, 2.0]}, SPEC, {}, CARD)  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_numpy_values_tied_and_strided_tensors_are_stored(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    tensors = {
        "np": np.arange(4, dtype=np.int64),
        "tied_a": weight,
        "tied_b": weight,  # shares storage: safetensors refuses this unless cloned
        "transposed": weight.T,  # not contiguous
    }
    mv = reg.write_version("m", tensors, {"dims": (np.int64(3), 4)}, {"acc": np.float32(0.75)}, CARD)

    loaded = reg.load("m", mv.version)
    assert torch.equal(loaded.tensors["np"], torch.arange(4))
    assert torch.equal(loaded.tensors["tied_b"], weight)
    assert torch.equal(loaded.tensors["transposed"], weight.T)
    assert loaded.metrics == {"acc": 0.75}
    assert loaded.spec == {"dims": [3, 4]}


def test_spec_yaml_keeps_non_string_keys_and_non_finite_floats(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    spec = {"classes": {0: "healthy", 1: "faulty"}, "floor": float("-inf"), "scale": np.float64(2.5)}

    mv = reg.write_version("m", _tensors(), spec, {}, CARD)

    assert reg.load("m", mv.version).spec == {
        "classes": {0: "healthy", 1: "faulty"},
        "floor": float("-inf"),
        "scale": 2.5,
    }


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nope://x"):
        ModelRegistry("nope://x")


def _cli(reg: ModelRegistry, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="x0tta6bl4 models")
    add_models_arguments(parser)
    return models_main(parser.parse_args([*argv[:1], "--registry", reg.uri, *argv[1:]]))


@pytest.fixture
def provenance_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("X0TTA6BL4_CA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("X0TTA6BL4_LEDGER_DIR", str(tmp_path / "ledger"))
    return tmp_path


def test_cli_lists_shows_and_promotes_versions(
    memory_registry: ModelRegistry, capsys: pytest.CaptureFixture[str], provenance_env: Path
) -> None:
    v1, v2 = _write(memory_registry, 1), _write(memory_registry, 2)
    with pytest.raises(RegistryError, match=r"refused: no signature.*\(unsigned\)"):
        _cli(memory_registry, "promote", "graphsage", v1.version)
    for v in (v1, v2):
        assert _cli(memory_registry, "sign", "graphsage", v.version) == 0
    assert "signed graphsage" in capsys.readouterr().out

    assert _cli(memory_registry, "promote", "graphsage", v1.version) == 0
    assert f"promoted graphsage {v1.version}" in capsys.readouterr().out
    assert _cli(memory_registry, "list") == 0
    assert re.search(
        rf"graphsage\s+2 versions\s+latest {v2.version}\s+promoted {v1.version}", capsys.readouterr().out
    )
    assert _cli(memory_registry, "list", "--model", "graphsage", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["promoted"]) for r in rows] == [(v1.version, True), (v2.version, False)]
    assert _cli(memory_registry, "show", "graphsage") == 0
    out = capsys.readouterr().out
    assert f"graphsage {v1.version}  (promoted)  verified" in out
    assert "signature signed by spiffe://x0tta6bl4.local/trainer" in out
    assert "tensor    conv1.weight (8, 4) torch.float32" in out
    assert _cli(memory_registry, "promote", "graphsage", v2.version) == 0
    assert f"(was {v1.version})" in capsys.readouterr().out


def test_cli_errors_are_platform_errors_for_the_one_line_exit(
    memory_registry: ModelRegistry, provenance_env: Path
) -> None:
    _write(memory_registry)

    with pytest.raises(X0tta6bl4Error, match="invalid version id"):
        _cli(memory_registry, "promote", "graphsage", "v1")
    with pytest.raises(RegistryError, match="no version v0007"):
        _cli(memory_registry, "show", "graphsage", "v0007-20260101T000000")
    with pytest.raises(RegistryError, match="has no versions"):
        _cli(memory_registry, "show", "other")
