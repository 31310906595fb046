"""Federated LoRA of the RAG embedder through Flower: each region tunes the shared adapters on its incidents.

One ClientApp per region trains the embedder's LoRA adapters on that region's labelled
(incident, runbook) pairs and returns only the adapters; the ServerApp screens the updates
(:func:`~x0tta6bl4.federated.screening.screen_updates`) and averages them with FedAvg,
weighted by each region's pair count. :func:`federate_embedder` runs it on Flower's Ray
simulation in this process.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.federated.client_app import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, from_record, to_record
from x0tta6bl4.federated.outcome import TooFewRepliesError
from x0tta6bl4.federated.screening import DEFAULT_MAX_UPDATE_NORM_RATIO, screen_updates
from x0tta6bl4.federated.server_app import aggregate_metrics

Arrays = dict[str, npt.NDArray[Any]]


@dataclasses.dataclass(frozen=True)
class EmbedderFederation:
    """One federated fine-tuning of the embedder's adapters.

    Args:
        regions: the mesh regions that take part (one client each; their training incidents).
        rounds: federated rounds.
        lr: AdamW learning rate of each client's local epoch.
        epochs: local epochs per round.
        max_pairs: train on at most this many of a region's pairs per round (None: all);
            the FedAvg weight is always the region's whole pair count.
        seed: round ``r`` (from 0) of region ``g`` trains with seed ``seed * r + g``.
        max_update_norm_ratio: the screen's outlier factor.
    """

    regions: tuple[int, ...]
    rounds: int = 2
    lr: float = 1e-3
    epochs: int = 1
    max_pairs: int | None = None
    seed: int = 100
    max_update_norm_ratio: float = DEFAULT_MAX_UPDATE_NORM_RATIO

    def __post_init__(self) -> None:
        if not self.regions or self.rounds < 1 or self.epochs < 1 or not self.lr > 0:
            raise ConfigError("an embedder federation needs regions, rounds >= 1, epochs >= 1 and lr > 0")


@functools.lru_cache(maxsize=1)
def _embedder() -> Any:
    """The client process's embedder (loading MiniLM costs seconds: once per process)."""
    from x0tta6bl4.models.embedder import EmbedderLoRA

    return EmbedderLoRA()


@functools.lru_cache(maxsize=16)
def _pairs(region: int) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """A region's (incident, runbook) training pairs, and every runbook passage as extra negatives."""
    from x0tta6bl4.corpus import load_incidents, load_runbooks
    from x0tta6bl4.models.embedder import runbook_passages, training_pairs

    runbooks = load_runbooks()
    pairs = training_pairs(load_incidents("train", region), runbooks)
    return tuple(pairs), tuple(runbook_passages(runbooks))


def embedder_client_app() -> ClientApp:
    """The ClientApp: its partition id picks its region from the round config's ``regions``."""
    app = ClientApp()

    def train(message: Message, context: Context) -> Message:
        config = message.content.config_records[CONFIG]
        regions = [int(r) for r in config["regions"]]  # type: ignore[union-attr]
        region = regions[int(context.node_config["partition-id"])]
        server_round = int(config["server-round"])
        pairs, negatives = _pairs(region)
        max_pairs = int(config["max-pairs"])
        embedder = _embedder()
        embedder.load_adapter_state(from_record(message.content.array_records[ARRAYS]))
        metrics = embedder.fit(
            list(pairs[:max_pairs] if max_pairs > 0 else pairs),
            epochs=int(config["epochs"]),
            lr=float(config["lr"]),
            seed=int(config["seed"]) * (server_round - 1) + region,
            negatives=list(negatives),
        )
        reply = RecordDict(
            {
                ARRAYS: to_record(embedder.adapter_state()),
                METRICS: MetricRecord(
                    {
                        NUM_EXAMPLES: len(pairs),
                        "region": region,
                        "loss": float(metrics["loss_last_epoch"]),
                        "train_s": float(metrics["seconds"]),
                    }
                ),
            }
        )
        return Message(reply, reply_to=message)

    app.train()(train)
    return app


class ScreenedFedAvg(FedAvg):  # type: ignore[misc]
    """FedAvg that screens every training update first and stops when fewer than ``min_clients`` pass.

    Args:
        min_clients: accepted updates a round needs.
        max_update_norm_ratio: the screen's outlier factor.
        kwargs: FedAvg's.
    """

    def __init__(self, min_clients: int, max_update_norm_ratio: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_clients = min_clients
        self.max_update_norm_ratio = max_update_norm_ratio
        self.rounds: list[dict[str, Any]] = []
        self._global: Arrays = {}
        self._started = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = from_record(arrays)
        self._started = time.perf_counter()
        messages: Iterable[Message] = super().configure_train(server_round, arrays, config, grid)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [r for r in replies if not r.has_error() and ARRAYS in r.content]
        updates = [from_record(r.content.array_records[ARRAYS]) for r in valid]
        reasons = screen_updates(updates, self._global, self.max_update_norm_ratio)
        ok = [r for r, why in zip(valid, reasons, strict=True) if why is None]
        ok.sort(key=lambda r: int(r.content.metric_records[METRICS]["region"]))  # type: ignore[arg-type]
        record = {
            "round": server_round,
            "replied": len(ok),
            "rejected": len(valid) - len(ok),
            "rejections": [why for why in reasons if why is not None],
        }
        if len(ok) < self.min_clients:
            raise TooFewRepliesError(
                f"embedder round {server_round}: {len(ok)} accepted updates, "
                f"min_clients is {self.min_clients}"
            )
        arrays, metrics = super().aggregate_train(server_round, ok)
        record["round_s"] = time.perf_counter() - self._started
        record["loss"] = float(metrics["loss"]) if metrics is not None and "loss" in metrics else None
        self.rounds.append(record)
        return arrays, metrics


def embedder_server_app(
    fed: EmbedderFederation, initial: Mapping[str, np.ndarray], result: dict[str, Any]
) -> ServerApp:
    """The ServerApp: ``fed.rounds`` FedAvg rounds over every region; the final adapters go to ``result``."""
    app = ServerApp()

    def main(grid: Grid, context: Context) -> None:
        n = len(fed.regions)
        strategy = ScreenedFedAvg(
            min_clients=n,
            max_update_norm_ratio=fed.max_update_norm_ratio,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=n,
            weighted_by_key=NUM_EXAMPLES,
            arrayrecord_key=ARRAYS,
            configrecord_key=CONFIG,
            train_metrics_aggr_fn=aggregate_metrics,
        )
        config = ConfigRecord(
            {
                "regions": list(fed.regions),
                "lr": fed.lr,
                "epochs": fed.epochs,
                "max-pairs": fed.max_pairs or 0,
                "seed": fed.seed,
            }
        )
        out = strategy.start(grid, to_record(dict(initial)), num_rounds=fed.rounds, train_config=config)
        result["adapters"] = {k: np.asarray(v, np.float32) for k, v in from_record(out.arrays).items()}
        result["rounds"] = strategy.rounds

    app.main()(main)
    return app


def federate_embedder(
    fed: EmbedderFederation,
    initial: Mapping[str, np.ndarray],
    client_cpus: float = 1.0,
    ray_address: str | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Fine-tune the embedder's adapters over ``fed.regions`` with Flower's Ray simulation.

    Flower's Ray backend shuts Ray down when the run ends, so this process must not be
    connected to Ray already (run it in its own driver, as ``x0tta6bl4 train``).

    Args:
        fed: regions, rounds and local training.
        initial: the adapters to start from (``EmbedderLoRA.adapter_state()``).
        client_cpus: CPUs of each client actor.
        ray_address: the cluster (default: RAY_ADDRESS, or a new local one in token mode).

    Returns:
        the averaged adapters, and one record per round (accepted, rejected, loss, wall time).

    Raises:
        ConfigError: this process is already connected to Ray.
        TooFewRepliesError: a round had an update rejected or lost.
    """
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        raise ConfigError("federate_embedder needs its own driver: this process is connected to Ray")
    from flwr.simulation import run_simulation

    from x0tta6bl4 import RAY_NAMESPACE
    from x0tta6bl4.connect import connect_ray, disconnect_ray

    result: dict[str, Any] = {}
    conn = connect_ray(ray_address)
    try:
        run_simulation(
            server_app=embedder_server_app(fed, initial, result),
            client_app=embedder_client_app(),
            num_supernodes=len(fed.regions),
            backend_config={
                "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
                "init_args": {"address": conn.address, "namespace": RAY_NAMESPACE},
            },
        )
    finally:
        disconnect_ray(conn)
    if "adapters" not in result:
        raise TooFewRepliesError("the embedder federation ended without adapters (see Flower's log)")
    return result["adapters"], list(result["rounds"])
