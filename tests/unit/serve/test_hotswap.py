"""HotSwap keeps the model in use when its successor fails to load, and lets programming errors through."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from x0tta6bl4.models.registry import LoadedModel, ModelRegistry, RegistryError
from x0tta6bl4.serve._private.hotswap import HotSwap

SPEC = {"hidden": 8, "layers": 2, "features": ["rtt_ms", "loss"]}
CARD = "# graphsage\n\nTest model."


def _write(reg: ModelRegistry, seed: int):
    gen = torch.Generator().manual_seed(seed)
    tensors = {"conv1.weight": torch.randn(8, 4, generator=gen), "conv1.bias": torch.randn(8, generator=gen)}
    return reg.write_version("graphsage", tensors, SPEC, {"f1": 0.5 + seed / 100}, CARD)


def test_hot_swap_keeps_the_previous_model_when_the_new_version_is_corrupt(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path))
    v1, v2 = _write(reg, 1), _write(reg, 2)
    reg.promote("graphsage", v1.version)
    swap: HotSwap[LoadedModel] = HotSwap(name="graphsage")
    with pytest.raises(RegistryError, match="no graphsage loaded yet"):
        swap.get()
    assert swap.try_swap(lambda: reg.load("graphsage"))
    reg.promote("graphsage", v2.version)
    (tmp_path / "graphsage" / v2.version / "weights.safetensors").write_bytes(b"truncated")

    assert not swap.try_swap(lambda: reg.load("graphsage"))

    assert swap.get().version == v1
    assert swap.last_error is not None and "corrupt" in swap.last_error


def test_hot_swap_lets_programming_errors_through() -> None:
    swap = HotSwap(1)

    def broken() -> int:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        swap.try_swap(broken)
    assert swap.current == 1
    assert swap.try_swap(lambda: 2)
    assert swap.current == 2
