"""LoRA adapters (peft) on the detector's linear layers, and the tensors that travel in federated rounds."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from torch import nn

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.models.graphsage import GraphSAGEDetector, LoRASpec

Arrays = dict[str, npt.NDArray[np.float32]]


def with_adapters(detector: GraphSAGEDetector, spec: LoRASpec) -> PeftModel:
    """A copy of ``detector`` with fresh adapters; only adapters (and the error scale) train."""
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
    )
    try:
        return get_peft_model(copy.deepcopy(detector), config)
    except ValueError as exc:
        raise ConfigError(f"LoRA spec does not fit the detector: {exc}") from exc


def full_arrays(model: nn.Module) -> Arrays:
    """Every weight and buffer of a detector, as numpy arrays (what a full-model round sends)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_full_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load :func:`full_arrays` output; names and shapes must match exactly."""
    state = model.state_dict()
    if set(arrays) != set(state):
        raise ConfigError(
            f"weights do not match the detector: missing {sorted(set(state) - set(arrays))[:3]}, "
            f"unexpected {sorted(set(arrays) - set(state))[:3]}"
        )
    for k, v in arrays.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise ConfigError(
                f"weight {k} has shape {tuple(v.shape)}, the detector needs {tuple(state[k].shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def adapter_arrays(model: PeftModel) -> Arrays:
    """Only the adapter tensors (what a LoRA round sends), plus the 26-value error scale."""
    out = {k: v.detach().cpu().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}
    out["error_scale"] = _detector(model).error_scale.detach().cpu().numpy().copy()
    return out


def load_adapter_arrays(model: PeftModel, arrays: Mapping[str, np.ndarray]) -> None:
    arrays = dict(arrays)
    scale = arrays.pop("error_scale", None)
    result = set_peft_model_state_dict(model, {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"unexpected adapter tensors: {result.unexpected_keys[:3]}")
    if scale is not None:
        _detector(model).error_scale.copy_(torch.from_numpy(np.asarray(scale)))


def merged(model: PeftModel) -> GraphSAGEDetector:
    """A plain detector with the adapters folded into its weights (what Serve loads)."""
    out = copy.deepcopy(model).merge_and_unload()
    assert isinstance(out, GraphSAGEDetector)
    return out


def num_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))


def _detector(model: PeftModel) -> GraphSAGEDetector:
    inner = model.get_base_model()
    assert isinstance(inner, GraphSAGEDetector)
    return inner
