"""Flower ClientApp: one client per mesh region trains and scores the detector on its shard's windows."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.federated import task
from x0tta6bl4.models.data import GraphSeries
from x0tta6bl4.models.graphsage import DetectorSpec
from x0tta6bl4.observability import tracing

#: Keys of the records in a message's RecordDict (the strategies' defaults for arrays and config).
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
#: The pre-trained full weights, attached to a node's first LoRA-phase message only.
BASE = "base"
#: Where a client keeps the base weights between messages (``Context.state`` persists per node).
STATE_BASE = "lora-base"
#: Weight of a reply in FedAvg: the region's training node-ticks.
NUM_EXAMPLES = "num-examples"
#: Metric that says which region replied (dropped from aggregates; used for personalised models).
REGION = "region"
#: The overall round (full rounds, then LoRA rounds) at which ``crash_region`` raises.
CRASH_ROUND = 2
#: Scale of the ``poison_region`` testing aid's outlying update (after its NaN in overall round 1).
POISON_SCALE = 1000.0
#: SuperNode config key (``flower-supernode --node-config``) naming the file with its region's windows.
DATA_PATH = "data-path"


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as a Flower ArrayRecord (each serialised with ``np.save``)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, npt.NDArray[Any]]:
    """A Flower ArrayRecord as named numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    """Bytes an ArrayRecord puts on the wire: serialised arrays plus their names."""
    return int(record.count_bytes())


def _region(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _series(region: int, spec: DetectorSpec, context: Context) -> GraphSeries:
    """The region's windows: the SuperNode's own file (deployment) or its MeshShard actor (simulation)."""
    path = str(context.node_config.get(DATA_PATH, ""))
    return task.region_series(region, spec, path or None)


def _poisoned(arrays: Mapping[str, np.ndarray], updated: Mapping[str, np.ndarray], overall_round: int) -> Any:
    """The ``poison_region`` testing aid's update: NaN in round 1, then the real update scaled 1000x."""
    if overall_round == 1:
        first = next(iter(updated))
        return {**updated, first: np.full_like(updated[first], np.nan)}
    return {k: (arrays[k] + POISON_SCALE * (v - arrays[k])).astype(v.dtype) for k, v in updated.items()}


def _spec(config: ConfigRecord) -> DetectorSpec:
    return DetectorSpec.model_validate_json(str(config["spec"]))


def _base(message: Message, context: Context, phase: str) -> dict[str, npt.NDArray[Any]] | None:
    """The pre-trained weights for the LoRA phase: from this message (then kept) or from the node's state."""
    if phase != "lora":
        return None
    if BASE in message.content.array_records:
        record = message.content.array_records[BASE]
        context.state[STATE_BASE] = record
        return from_record(record)
    if STATE_BASE in context.state.array_records:
        return from_record(context.state.array_records[STATE_BASE])
    raise ConfigError("LoRA round without base weights: the server did not send them to this node")


def _metrics(values: Mapping[str, float | int]) -> MetricRecord:
    return MetricRecord({k: (int(v) if isinstance(v, int) else float(v)) for k, v in values.items()})


def client_app() -> ClientApp:
    """The ClientApp every SuperNode runs (simulated or a real process); its partition id is its mesh region.

    Everything a round needs comes in the server's message (spec, phase, seed, epochs);
    the node contributes its region (``partition-id``) and, in a deployment, the file of
    that region's windows (``data-path``). Two testing aids also come from the round
    config: ``crash-region`` (that region's client raises RuntimeError in overall round
    :data:`CRASH_ROUND` after loading its data, to show that a round goes on with the
    other replies) and ``poison-region`` (that region returns NaN in overall round 1 and
    a :data:`POISON_SCALE`-times scaled update in every later round, to show that the
    server rejects them).
    """
    app = ClientApp()

    def train(message: Message, context: Context) -> Message:
        """One round of local training on the region's windows; replies updated arrays and metrics."""
        started = time.perf_counter()
        config = message.content.config_records[CONFIG]
        region = _region(context)
        tracing.setup_tracing("federated-client")
        parent = {"traceparent": str(config["traceparent"])} if "traceparent" in config else None
        with tracing.span(
            "federated.fit", {"region": region, "round": int(config["global-round"])}, parent=parent
        ):
            return _train(message, context, config, region, started)

    def _train(message: Message, context: Context, config: Any, region: int, started: float) -> Message:
        spec = _spec(config)
        phase = str(config["phase"])
        overall_round = int(config["global-round"])
        series = _series(region, spec, context)
        load_s = time.perf_counter() - started
        if region == int(config.get("crash-region", -1)) and overall_round == CRASH_ROUND:
            raise RuntimeError(
                f"injected crash: region {region} fails in round {overall_round} (crash-region)"
            )
        arrays = from_record(message.content.array_records[ARRAYS])
        base = _base(message, context, phase)
        fit_config = {
            "local_epochs": int(config["local-epochs"]),
            "proximal_mu": float(config.get("proximal-mu", 0.0)) if phase == "full" else 0.0,
            "seed": int(config["seed"]) + 1000 * overall_round + region,
        }
        updated, fit_metrics = task.fit(spec, series, phase, arrays, fit_config, base)
        if region == int(config.get("poison-region", -1)):
            updated = _poisoned(arrays, updated, overall_round)
        reply = RecordDict(
            {
                ARRAYS: to_record(updated),
                METRICS: _metrics(
                    {
                        NUM_EXAMPLES: series.num_nodes * len(series.valid_ticks),
                        REGION: region,
                        "loss": fit_metrics["loss"],
                        "train_s": fit_metrics["train_s"],
                        "load_s": load_s,
                        "client_s": time.perf_counter() - started,
                    }
                ),
            }
        )
        return Message(reply, reply_to=message)

    def evaluate(message: Message, context: Context) -> Message:
        """Score the round's global model on the region's windows (labels are for evaluation only)."""
        started = time.perf_counter()
        config = message.content.config_records[CONFIG]
        region = _region(context)
        spec = _spec(config)
        phase = str(config["phase"])
        series = _series(region, spec, context)
        base = _base(message, context, phase)
        model = task.detector_from(spec, phase, from_record(message.content.array_records[ARRAYS]), base)
        scores = task.evaluate(model, series)
        reply = RecordDict(
            {
                METRICS: _metrics(
                    {
                        NUM_EXAMPLES: int(scores["node_ticks"]),
                        REGION: region,
                        # Same keys in every reply (Flower checks); NaN when a region saw no fault.
                        "auprc": scores.get("auprc", math.nan),
                        "auroc": scores.get("auroc", math.nan),
                        "best_f1": scores.get("best_f1", math.nan),
                        "eval_s": time.perf_counter() - started,
                    }
                )
            }
        )
        return Message(reply, reply_to=message)

    # Registered by call rather than as decorators: flwr is untyped, so decorators would erase the types.
    app.train()(train)
    app.evaluate()(evaluate)
    return app


#: For Flower's own runners (``flwr run``: ``clientapp = "x0tta6bl4.federated.client_app:app"``).
app = client_app()
