"""Flower ServerApp: full-model rounds (FedAvg/FedProx), then LoRA rounds where only adapters travel."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.federated import task
from x0tta6bl4.federated.client_app import (
    ARRAYS,
    BASE,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    REGION,
    from_record,
    record_bytes,
    to_record,
)
from x0tta6bl4.models import lora
from x0tta6bl4.models.graphsage import DetectorSpec

Arrays = dict[str, npt.NDArray[Any]]


class TooFewRepliesError(X0tta6bl4Error):
    """A round got fewer successful client replies than ``min_clients``: the run stops."""


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What the ServerApp needs to run both phases (taken from the TrainConfig by the driver).

    Args:
        spec: detector spec (sent to every client in the round config).
        rounds: full-model rounds.
        lora_rounds: adapter-only rounds (0: none).
        local_epochs: local epochs per round.
        strategy: ``"fedavg"`` or ``"fedprox"`` for the full-model rounds.
        proximal_mu: FedProx coefficient.
        min_clients: successful replies a training round needs.
        seed: seed of the initial weights and the clients' per-round seeds.
        round_timeout_s: how long a round waits for replies.
    """

    spec: DetectorSpec
    rounds: int
    lora_rounds: int
    local_epochs: int
    strategy: str
    proximal_mu: float
    min_clients: int
    seed: int
    round_timeout_s: float


@dataclasses.dataclass
class RoundRecord:
    """What one federated round did, cost and reached.

    Times are wall-clock seconds measured by the server; ``local_train_s`` is the
    slowest successful client's training loop (the round waits for it) and
    ``overhead_s`` the rest of the training half of the round (transport,
    serialisation, scheduling, data loading, aggregation, and queueing when there are
    more regions than client actors). Bytes are serialised ArrayRecords (``np.save``
    payloads plus names) that travel: ``bytes_down`` server to clients, ``bytes_up``
    clients to server, ``bytes_eval`` the arrays sent for evaluation.
    """

    round: int
    phase: str
    phase_round: int
    sampled: int = 0
    replied: int = 0
    failed: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    regions: list[int] = dataclasses.field(default_factory=list)
    train_wall_s: float = 0.0
    local_train_s: float = 0.0
    load_s: float = 0.0
    overhead_s: float = 0.0
    eval_s: float = 0.0
    round_s: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    bytes_eval: int = 0
    loss: float | None = None
    auprc: float | None = None
    auroc: float | None = None
    best_f1: float | None = None

    @property
    def bytes_train(self) -> int:
        """Bytes of the training exchange (both directions)."""
        return self.bytes_down + self.bytes_up

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bytes_train"] = self.bytes_train
        return out


@dataclasses.dataclass
class FederationOutcome:
    """What the ServerApp hands back to the driver (filled while it runs)."""

    rounds: list[RoundRecord] = dataclasses.field(default_factory=list)
    base: Arrays | None = None
    adapters: Arrays | None = None
    personal: dict[int, Arrays] = dataclasses.field(default_factory=dict)
    full_bytes: int = 0
    adapter_bytes: int = 0


RoundCallback = Callable[[RoundRecord], None]


def aggregate_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Metrics of a round: timings (``*_s``) are the maximum, the rest a weighted mean of finite values.

    Used for both training and evaluation replies; the region id is dropped.
    """
    weights = [float(next(iter(r.metric_records.values()))[weighted_by_key]) for r in records]  # type: ignore[arg-type]
    keys = {k for r in records for m in r.metric_records.values() for k in m} - {weighted_by_key, REGION}
    out = MetricRecord()
    for key in sorted(keys):
        values = [float(next(iter(r.metric_records.values()))[key]) for r in records]  # type: ignore[arg-type]
        if key.endswith("_s"):
            out[key] = max(values)
            continue
        pairs = [(v, w) for v, w in zip(values, weights, strict=True) if math.isfinite(v) and w > 0]
        total = sum(w for _, w in pairs)
        out[key] = sum(v * w for v, w in pairs) / total if total > 0 else math.nan
    return out


def _metric(record: MetricRecord | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    value = float(record[key])  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


def _message_bytes(message: Message) -> int:
    return sum(record_bytes(r) for r in message.content.array_records.values())


def _reason(message: Message) -> str:
    """A failed reply's error on one short line (Flower wraps the client's exception text)."""
    reason = str(message.error.reason)
    if "Message:" in reason:
        reason = reason.split("Message:", 1)[1]
    return " ".join(reason.replace("'>", "").split())[:200]


class TrackedStrategy(Strategy):  # type: ignore[misc]
    """Wraps FedAvg/FedProx: records each round, enforces ``min_clients``, ships base weights once.

    Flower 1.42's FedAvg turns client exceptions into error replies and aggregates
    whatever valid replies arrive, even none (the global model then silently stays
    unchanged). This wrapper makes a round with fewer than ``min_clients`` valid
    replies fail the run, and lets it go on otherwise.

    In the LoRA phase a node's first message also carries the pre-trained full weights
    (:data:`~x0tta6bl4.federated.client_app.BASE`); the client keeps them in its
    ``Context.state`` and later messages carry adapters only.

    Args:
        inner: the Flower strategy that samples, configures and aggregates.
        phase: ``"full"`` or ``"lora"``.
        round_offset: overall rounds before this phase.
        min_clients: successful training replies a round needs.
        outcome: where round records and personalised adapters go.
        on_round: called with each finished round.
        base: the pre-trained weights (LoRA phase only).
    """

    def __init__(
        self,
        inner: FedAvg,
        phase: str,
        round_offset: int,
        min_clients: int,
        outcome: FederationOutcome,
        on_round: RoundCallback | None = None,
        base: ArrayRecord | None = None,
    ) -> None:
        self.inner = inner
        self.phase = phase
        self.round_offset = round_offset
        self.min_clients = min_clients
        self.outcome = outcome
        self.on_round = on_round
        self.base = base
        self.has_base: set[int] = set()
        self.node_region: dict[int, int] = {}
        self.personal: dict[int, ArrayRecord] = {}
        self._record: RoundRecord | None = None
        self._started = 0.0
        self._eval_started = 0.0

    def summary(self) -> None:
        self.inner.summary()

    def _with_base(self, message: Message) -> Message:
        """The message, plus the base weights if its node has not confirmed having them."""
        node = int(message.metadata.dst_node_id)
        if self.base is None or node in self.has_base:
            return message
        content = RecordDict(
            {
                ARRAYS: message.content.array_records[ARRAYS],
                CONFIG: message.content.config_records[CONFIG],
                BASE: self.base,
            }
        )
        return Message(content, dst_node_id=node, message_type=message.metadata.message_type)

    def _note_replies(self, replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
        ok: list[Message] = []
        bad: list[Message] = []
        for reply in replies:
            (bad if reply.has_error() else ok).append(reply)
        for reply in ok:
            node = int(reply.metadata.src_node_id)
            self.node_region[node] = int(reply.content.metric_records[METRICS][REGION])  # type: ignore[arg-type]
            if self.base is not None:
                self.has_base.add(node)
        return ok, bad

    def _failure(self, reply: Message) -> str:
        node = int(reply.metadata.src_node_id)
        who = f"region {self.node_region[node]}" if node in self.node_region else f"node {node}"
        return f"{who}: {_reason(reply)}"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started = time.perf_counter()
        config["global-round"] = self.round_offset + server_round
        planned = self.inner.configure_train(server_round, arrays, config, grid)
        messages = [self._with_base(m) for m in planned]
        self._record = RoundRecord(
            round=self.round_offset + server_round,
            phase=self.phase,
            phase_round=server_round,
            sampled=len(messages),
            bytes_down=sum(_message_bytes(m) for m in messages),
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok, bad = self._note_replies(replies)
        rec = self._record
        assert rec is not None
        rec.replied, rec.failed = len(ok), rec.sampled - len(ok)
        rec.failures = [self._failure(r) for r in bad]
        if len(replies) < rec.sampled:
            rec.failures.append(f"{rec.sampled - len(replies)} client(s) did not reply in time")
        rec.regions = sorted(int(r.content.metric_records[METRICS][REGION]) for r in ok)  # type: ignore[arg-type]
        rec.bytes_up = sum(_message_bytes(r) for r in ok)
        if len(ok) < self.min_clients:
            detail = "; ".join(rec.failures) or "no replies"
            raise TooFewRepliesError(
                f"round {rec.round} ({self.phase}): {len(ok)} of {rec.sampled} clients replied, "
                f"min_clients is {self.min_clients} ({detail})"
            )
        if self.base is not None:  # LoRA phase: each region's latest adapters are its personalised model
            for reply in ok:
                region = int(reply.content.metric_records[METRICS][REGION])  # type: ignore[arg-type]
                self.personal[region] = reply.content.array_records[ARRAYS]
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        rec.train_wall_s = time.perf_counter() - self._started
        rec.local_train_s = _metric(metrics, "train_s") or 0.0
        rec.load_s = _metric(metrics, "load_s") or 0.0
        rec.overhead_s = max(0.0, rec.train_wall_s - rec.local_train_s)
        rec.loss = _metric(metrics, "loss")
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._eval_started = time.perf_counter()
        config["global-round"] = self.round_offset + server_round
        planned = self.inner.configure_evaluate(server_round, arrays, config, grid)
        messages = [self._with_base(m) for m in planned]
        if self._record is not None:
            self._record.bytes_eval = sum(_message_bytes(m) for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        ok, bad = self._note_replies(replies)
        metrics = self.inner.aggregate_evaluate(server_round, replies) if ok else None
        rec = self._record
        assert rec is not None
        rec.failures.extend(f"evaluate {self._failure(r)}" for r in bad)
        rec.auprc, rec.auroc, rec.best_f1 = (_metric(metrics, k) for k in ("auprc", "auroc", "best_f1"))
        now = time.perf_counter()
        rec.eval_s = now - self._eval_started
        rec.round_s = now - self._started
        self.outcome.rounds.append(rec)
        if self.on_round is not None:
            self.on_round(rec)
        return metrics


def _inner(settings: ServerSettings, strategy: str) -> FedAvg:
    kwargs: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": settings.min_clients,
        "min_evaluate_nodes": settings.min_clients,
        "min_available_nodes": settings.min_clients,
        "weighted_by_key": NUM_EXAMPLES,
        "arrayrecord_key": ARRAYS,
        "configrecord_key": CONFIG,
        "train_metrics_aggr_fn": aggregate_metrics,
        "evaluate_metrics_aggr_fn": aggregate_metrics,
    }
    if strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **kwargs)
    return FedAvg(**kwargs)


def run_federation(
    grid: Grid, settings: ServerSettings, outcome: FederationOutcome, on_round: RoundCallback | None = None
) -> None:
    """Both phases on ``grid``; results go into ``outcome``.

    Phase 1 trains every weight with ``settings.strategy``. Phase 2 freezes the result
    (the base) and trains LoRA adapters with FedAvg; FedAvg of the adapters' A and B
    matrices is the usual federated-LoRA aggregation. The last adapters each region
    trained are kept as its personalised model.
    """
    spec = settings.spec
    config = {"spec": spec.model_dump_json(), "local-epochs": settings.local_epochs, "seed": settings.seed}
    initial = task.initial_arrays(spec, "full", settings.seed)
    outcome.full_bytes = lora.num_bytes(initial)
    full = TrackedStrategy(
        _inner(settings, settings.strategy), "full", 0, settings.min_clients, outcome, on_round
    )
    result = full.start(
        grid,
        to_record(initial),
        num_rounds=settings.rounds,
        timeout=settings.round_timeout_s,
        train_config=ConfigRecord({**config, "phase": "full"}),
        evaluate_config=ConfigRecord({**config, "phase": "full"}),
    )
    base = from_record(result.arrays)
    outcome.base = base
    if settings.lora_rounds == 0:
        return
    adapters = task.initial_arrays(spec, "lora", settings.seed, base)
    outcome.adapter_bytes = lora.num_bytes(adapters)
    tuned = TrackedStrategy(
        _inner(settings, "fedavg"),
        "lora",
        settings.rounds,
        settings.min_clients,
        outcome,
        on_round,
        base=to_record(base),
    )
    result = tuned.start(
        grid,
        to_record(adapters),
        num_rounds=settings.lora_rounds,
        timeout=settings.round_timeout_s,
        train_config=ConfigRecord({**config, "phase": "lora"}),
        evaluate_config=ConfigRecord({**config, "phase": "lora"}),
    )
    outcome.adapters = from_record(result.arrays)
    outcome.personal = {r: from_record(a) for r, a in sorted(tuned.personal.items())}


def server_app(
    settings: ServerSettings,
    outcome: FederationOutcome,
    on_round: RoundCallback | None = None,
    on_done: Callable[[], None] | None = None,
) -> ServerApp:
    """The ServerApp of one training run.

    Args:
        settings: both phases' settings.
        outcome: filled with round records and final weights (read by the driver after the run).
        on_round: live progress, called after every round.
        on_done: called when the ServerApp ends, successful or not, while Ray is still
            connected (Flower's Ray backend shuts Ray down right after).
    """
    app = ServerApp()

    def main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, settings, outcome, on_round)
        finally:
            if on_done is not None:
                on_done()

    app.main()(main)  # by call: flwr is untyped, a decorator would erase the type
    return app


def as_float32(arrays: Arrays) -> Arrays:
    """Aggregated arrays back in float32 (FedAvg's weighted sums may widen the dtype)."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
