"""Flower ServerApp: full-model rounds (FedAvg/FedProx), then LoRA rounds where only adapters travel."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from x0tta6bl4.errors import ConfigError
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
from x0tta6bl4.federated.config import RUN_CONFIG_KEYS
from x0tta6bl4.federated.outcome import (
    Arrays,
    FederationOutcome,
    RoundCallback,
    RoundRecord,
    TooFewRepliesError,
    round_writer,
    write_outcome,
)
from x0tta6bl4.federated.screening import (
    DEFAULT_MAX_UPDATE_NORM_RATIO,
    norm_ratios,
    screen_updates,
    update_norm,
)
from x0tta6bl4.models import lora
from x0tta6bl4.models.graphsage import DetectorSpec
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics

#: Federated round metrics (recorded once per round).
_METRICS = domain_metrics("federated")


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
        max_update_norm_ratio: the outlier factor of :func:`screen_updates`.
        crash_region: testing aid, sent in every round's config (see the ClientApp).
        poison_region: testing aid, sent in every round's config (see the ClientApp).
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
    max_update_norm_ratio: float = DEFAULT_MAX_UPDATE_NORM_RATIO
    crash_region: int | None = None
    poison_region: int | None = None


def settings_from_run_config(run_config: Mapping[str, Any]) -> ServerSettings:
    """The ServerApp's settings from a Flower run config (every key of ``config.RUN_CONFIG_KEYS``).

    ``spec`` is a detector spec path ("" = the packaged one); ``crash-region`` and
    ``poison-region`` are -1 when unused.

    Raises:
        ConfigError: a missing key or a value out of range.
    """
    missing = [k for k in RUN_CONFIG_KEYS if k not in run_config]
    if missing:
        raise ConfigError(f"the run config lacks {', '.join(missing)}")
    c = run_config
    strategy = str(c["strategy"])
    if strategy not in ("fedavg", "fedprox"):
        raise ConfigError(f"run config strategy {strategy!r}: use fedavg or fedprox")
    ints = {k: int(c[k]) for k in ("rounds", "lora-rounds", "local-epochs", "min-clients", "seed")}
    floats = {k: float(c[k]) for k in ("proximal-mu", "round-timeout-s", "max-update-norm-ratio")}
    lows = {"rounds": 1, "lora-rounds": 0, "local-epochs": 1, "min-clients": 1, "seed": 0}
    for key, low in lows.items():
        if ints[key] < low:
            raise ConfigError(f"run config {key}={ints[key]}: must be at least {low}")
    if floats["round-timeout-s"] <= 0 or floats["proximal-mu"] < 0 or floats["max-update-norm-ratio"] <= 1:
        raise ConfigError(
            "run config: round-timeout-s must be > 0, proximal-mu >= 0, max-update-norm-ratio > 1"
        )
    spec_path = str(c["spec"])
    spec = DetectorSpec.load(Path(spec_path)) if spec_path else DetectorSpec.load()
    crash, poison = int(c["crash-region"]), int(c["poison-region"])
    return ServerSettings(
        spec=spec,
        rounds=ints["rounds"],
        lora_rounds=ints["lora-rounds"],
        local_epochs=ints["local-epochs"],
        strategy=strategy,
        proximal_mu=floats["proximal-mu"],
        min_clients=ints["min-clients"],
        seed=ints["seed"],
        round_timeout_s=floats["round-timeout-s"],
        max_update_norm_ratio=floats["max-update-norm-ratio"],
        crash_region=crash if crash >= 0 else None,
        poison_region=poison if poison >= 0 else None,
    )


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

    Before aggregation every training reply is screened (:func:`screen_updates`): an update
    with NaN/inf, arrays that do not fit the model, or an outlying norm is left out and
    counted in the round record; the round then needs ``min_clients`` accepted updates.

    Args:
        inner: the Flower strategy that samples, configures and aggregates.
        phase: ``"full"`` or ``"lora"``.
        round_offset: overall rounds before this phase.
        min_clients: accepted training updates a round needs.
        outcome: where round records and personalised adapters go.
        on_round: called with each finished round.
        base: the pre-trained weights (LoRA phase only).
        max_update_norm_ratio: the outlier factor of :func:`screen_updates`.
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
        max_update_norm_ratio: float = DEFAULT_MAX_UPDATE_NORM_RATIO,
    ) -> None:
        self.inner = inner
        self.max_update_norm_ratio = max_update_norm_ratio
        self._global: Arrays = {}
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
        #: The open ``federated.round`` span (configure_train to aggregate_train).
        self._round_span: Any = None

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

    def _who(self, reply: Message) -> str:
        node = int(reply.metadata.src_node_id)
        return f"region {self.node_region[node]}" if node in self.node_region else f"node {node}"

    def _failure(self, reply: Message) -> str:
        return f"{self._who(reply)}: {_reason(reply)}"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started = time.perf_counter()
        config["global-round"] = self.round_offset + server_round
        self._round_span = tracing.start_span(
            "federated.round", {"round": self.round_offset + server_round, "phase": self.phase}
        )
        carrier = tracing.carrier_of(self._round_span)
        if carrier:  # the clients' fit spans continue the round's trace
            config["traceparent"] = carrier["traceparent"]
        self._global = from_record(arrays)
        planned = self.inner.configure_train(server_round, arrays, config, grid)
        messages = [self._with_base(m) for m in planned]
        self._record = RoundRecord(
            round=self.round_offset + server_round,
            phase=self.phase,
            phase_round=server_round,
            sampled=len(messages),
            bytes_down=sum(_message_bytes(m) for m in messages),
        )
        _METRICS["sent_bytes"].inc(self._record.bytes_down, tags={"stage": "train"})
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        try:
            return self._aggregate_train(server_round, replies)
        finally:
            if self._round_span is not None:
                self._round_span.end()
                self._round_span = None

    def _aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        aggregating = time.perf_counter()
        replies = list(replies)
        valid, bad = self._note_replies(replies)
        rec = self._record
        assert rec is not None
        rec.bytes_up = sum(_message_bytes(r) for r in valid)
        updates = [from_record(r.content.array_records[ARRAYS]) if ARRAYS in r.content else {} for r in valid]
        reasons = screen_updates(updates, self._global, self.max_update_norm_ratio)
        ok = [r for r, why in zip(valid, reasons, strict=True) if why is None]
        ratios = norm_ratios(
            [update_norm(u, self._global) for u, why in zip(updates, reasons, strict=True) if not why]
        )
        finite = [x for x in ratios if x is not None and math.isfinite(x)]
        rec.norm_ratio_max = max(finite) if finite else None
        rec.rejections = [
            f"{self._who(r)}: {why}" for r, why in zip(valid, reasons, strict=True) if why is not None
        ]
        rec.replied, rec.rejected = len(ok), len(valid) - len(ok)
        rec.failed = rec.sampled - len(valid)
        rec.failures = [self._failure(r) for r in bad]
        if len(replies) < rec.sampled:
            rec.failures.append(f"{rec.sampled - len(replies)} client(s) did not reply in time")
        rec.regions = sorted(int(r.content.metric_records[METRICS][REGION]) for r in ok)  # type: ignore[arg-type]
        _observe_replies("train", rec.replied, rec.failed, rec.rejected)
        if len(ok) < self.min_clients:
            detail = "; ".join(rec.failures + [f"rejected {x}" for x in rec.rejections]) or "no replies"
            raise TooFewRepliesError(
                f"round {rec.round} ({self.phase}): {len(ok)} of {rec.sampled} clients replied, "
                f"min_clients is {self.min_clients} ({detail})"
            )
        if self.base is not None:  # LoRA phase: each region's latest adapters are its personalised model
            for reply in ok:
                region = int(reply.content.metric_records[METRICS][REGION])  # type: ignore[arg-type]
                self.personal[region] = reply.content.array_records[ARRAYS]
        # A weighted float32 sum depends on its order: in region order, the same updates give the same
        # model whichever client finished first, in the simulation and in a deployment alike.
        ok.sort(key=lambda r: int(r.content.metric_records[METRICS][REGION]))  # type: ignore[arg-type]
        arrays, metrics = self.inner.aggregate_train(server_round, ok)
        rec.train_wall_s = time.perf_counter() - self._started
        seconds = _METRICS["round_seconds"]
        seconds.observe(aggregating - self._started, tags={"stage": "train", "part": "clients"})
        seconds.observe(
            self._started + rec.train_wall_s - aggregating, tags={"stage": "train", "part": "aggregate"}
        )
        _METRICS["rounds"].inc(tags={"stage": "train"})
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
            _METRICS["sent_bytes"].inc(self._record.bytes_eval, tags={"stage": "evaluate"})
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        ok, bad = self._note_replies(replies)
        metrics = self.inner.aggregate_evaluate(server_round, replies) if ok else None
        rec = self._record
        assert rec is not None
        rec.failures.extend(f"evaluate {self._failure(r)}" for r in bad)
        _observe_replies("evaluate", len(ok), len(bad), 0)
        rec.auprc, rec.auroc, rec.best_f1 = (_metric(metrics, k) for k in ("auprc", "auroc", "best_f1"))
        now = time.perf_counter()
        rec.eval_s = now - self._eval_started
        rec.round_s = now - self._started
        _METRICS["round_seconds"].observe(rec.eval_s, tags={"stage": "evaluate", "part": "clients"})
        _METRICS["rounds"].inc(tags={"stage": "evaluate"})
        self.outcome.rounds.append(rec)
        if self.on_round is not None:
            self.on_round(rec)
        return metrics


def _observe_replies(stage: str, replied: int, failed: int, rejected: int) -> None:
    """Export one round's client replies by outcome (per round, not per client)."""
    for outcome, count in (("replied", replied), ("failed", failed), ("rejected", rejected)):
        _METRICS["client_replies"].inc(count, tags={"stage": stage, "outcome": outcome})


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
    tracing.setup_tracing("federated-server")
    spec = settings.spec
    config: dict[str, Any] = {
        "spec": spec.model_dump_json(),
        "local-epochs": settings.local_epochs,
        "seed": settings.seed,
    }
    for key, region in (("crash-region", settings.crash_region), ("poison-region", settings.poison_region)):
        if region is not None:  # testing aids only: a normal round config does not mention them
            config[key] = region
    initial = task.initial_arrays(spec, "full", settings.seed)
    outcome.full_bytes = lora.num_bytes(initial)
    ratio = settings.max_update_norm_ratio
    full = TrackedStrategy(
        _inner(settings, settings.strategy),
        "full",
        0,
        settings.min_clients,
        outcome,
        on_round,
        max_update_norm_ratio=ratio,
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
        max_update_norm_ratio=ratio,
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
    outcome: FederationOutcome | None = None,
    on_round: RoundCallback | None = None,
    on_done: Callable[[], None] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> ServerApp:
    """The ServerApp of a training run, built from its run config (simulation and deployment alike).

    The settings come from ``context.run_config`` (what ``flwr run`` fuses from the app's
    ``pyproject.toml`` and ``--run-config``), on top of ``run_config`` (the simulation's:
    ``run_simulation`` passes an empty one). When the run config names an
    ``outcome-dir``, the rounds and final weights are also written there
    (:func:`write_outcome`): that is how a deployment's driver, another process, gets them.

    Args:
        outcome: filled with round records and final weights (default: a fresh one).
        on_round: live progress, called after every round.
        on_done: called when the ServerApp ends, successful or not, while Ray is still
            connected (Flower's Ray backend shuts Ray down right after).
        run_config: the run config to start from (keys of ``context.run_config`` win).
    """
    app = ServerApp()

    def main(grid: Grid, context: Context) -> None:
        try:
            config = {**(run_config or {}), **dict(context.run_config)}
            out_dir = str(config.get("outcome-dir") or "")
            target = outcome if outcome is not None else FederationOutcome()
            callbacks = [c for c in (on_round, round_writer(out_dir) if out_dir else None) if c is not None]

            def each_round(rec: RoundRecord) -> None:
                for callback in callbacks:
                    callback(rec)

            try:
                run_federation(grid, settings_from_run_config(config), target, each_round)
            except Exception as exc:
                if out_dir:
                    write_outcome(out_dir, target, exc)
                raise
            if out_dir:
                write_outcome(out_dir, target)
        finally:
            if on_done is not None:
                on_done()

    app.main()(main)  # by call: flwr is untyped, a decorator would erase the type
    return app


#: For Flower's own runners (``flwr run``: ``serverapp = "x0tta6bl4.federated.server_app:app"``).
app = server_app()


def as_float32(arrays: Arrays) -> Arrays:
    """Aggregated arrays back in float32 (FedAvg's weighted sums may widen the dtype)."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
