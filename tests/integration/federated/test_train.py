"""Federated training: round bookkeeping and fault tolerance of the strategy, and a whole run on Ray."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------- strategy, with a fake grid (no Ray)


class FakeGrid:
    """Two nodes; node 2 fails its training in the rounds listed in ``fail_rounds``."""

    def __init__(self, fail_rounds=()):
        self.fail_rounds = set(fail_rounds)
        self.sent = []

    def get_node_ids(self):
        return [1, 2]

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message, MetricRecord, RecordDict

        messages = list(messages)
        self.sent.extend(messages)
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            config = m.content.config_records["config"]
            train = m.metadata.message_type == "train"
            if train and node == 2 and config["server-round"] in self.fail_rounds:
                replies.append(Message(Error(code=0, reason="boom"), reply_to=m))
                continue
            metrics = {"num-examples": 10 * node, "region": node - 1, "loss": float(node), "train_s": 1e-4}
            records = {"metrics": MetricRecord(metrics if train else {**metrics, "auprc": 0.5})}
            if train:
                records["arrays"] = m.content.array_records["arrays"]
            replies.append(Message(RecordDict(records), reply_to=m))
        return replies


@pytest.fixture
def task_identity():
    # Set by run_simulation in real runs; messages cannot be built without it.
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _strategy(min_clients, base=None):
    from flwr.serverapp.strategy import FedAvg

    from x0tta6bl4.federated.server_app import FederationOutcome, TrackedStrategy, aggregate_metrics

    inner = FedAvg(
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
    )
    outcome = FederationOutcome()
    return TrackedStrategy(inner, "lora" if base else "full", 0, min_clients, outcome, base=base), outcome


def _start(strategy, grid, rounds):
    from flwr.app import ConfigRecord

    from x0tta6bl4.federated.client_app import to_record

    return strategy.start(
        grid,
        to_record({"w": np.ones(4, np.float32)}),
        num_rounds=rounds,
        train_config=ConfigRecord({"phase": "full"}),
        evaluate_config=ConfigRecord({"phase": "full"}),
    )


def _replies(outcome):
    from x0tta6bl4.observability.metrics import REGISTRY

    labels = {"stage": "train", "outcome": outcome}
    return REGISTRY.get_sample_value("x0tta6bl4_federated_client_replies_total", labels) or 0.0


def test_a_failed_client_costs_its_reply_but_not_the_round(task_identity, prometheus_client_pipeline):
    from x0tta6bl4.observability.metrics import REGISTRY

    strategy, outcome = _strategy(min_clients=1)
    before = (_replies("replied"), _replies("failed"))
    rounds = REGISTRY.get_sample_value("x0tta6bl4_federated_rounds_total", {"stage": "train"}) or 0.0
    _start(strategy, FakeGrid(fail_rounds={2}), rounds=2)
    first, second = outcome.rounds
    # Exported once per round (prometheus-client here: this strategy runs without Ray).
    assert (_replies("replied"), _replies("failed")) == (before[0] + 3, before[1] + 1)
    assert REGISTRY.get_sample_value("x0tta6bl4_federated_rounds_total", {"stage": "train"}) == rounds + 2
    assert (first.replied, first.failed, first.regions) == (2, 0, [0, 1])
    assert (second.replied, second.failed, second.regions) == (1, 1, [0])
    assert second.failures == ["region 1: boom"]  # the node's region is known from round 1
    assert second.bytes_up < first.bytes_up and second.bytes_down == first.bytes_down
    assert first.loss == pytest.approx((1 * 10 + 2 * 20) / 30)  # weighted by num-examples
    assert first.local_train_s == 1e-4 and first.overhead_s == pytest.approx(first.train_wall_s - 1e-4)


def test_a_round_below_min_clients_stops_the_run(task_identity):
    from x0tta6bl4.federated.server_app import TooFewRepliesError

    strategy, _ = _strategy(min_clients=2)
    with pytest.raises(
        TooFewRepliesError, match=r"round 1 \(full\): 1 of 2 clients replied, min_clients is 2"
    ):
        _start(strategy, FakeGrid(fail_rounds={1}), rounds=1)


def test_lora_phase_ships_the_base_weights_once_per_node(task_identity):
    from x0tta6bl4.federated.client_app import BASE, to_record

    base = to_record({"big": np.zeros(1000, np.float32)})
    strategy, outcome = _strategy(min_clients=1, base=base)
    grid = FakeGrid(fail_rounds={1})  # node 2 fails round 1: it gets the base again in its next message
    _start(strategy, grid, rounds=2)
    with_base = [(m.metadata.message_type, m.metadata.dst_node_id) for m in grid.sent if BASE in m.content]
    assert sorted(with_base) == [("evaluate", 2), ("train", 1), ("train", 2)]
    first, second = outcome.rounds
    assert first.bytes_down > 2 * 4000 > second.bytes_down
    assert sorted(strategy.personal) == [0, 1]  # last adapters of each region


# ----------------------------------------------------------------- a whole run against the session's Ray


def _table_rows(text):
    """Cells of every row of the rich tables printed on stdout."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


@pytest.mark.ray
def test_training_run_survives_a_crashing_client_and_writes_a_version(ray_local, tmp_path):
    """Two regions, region 1 crashes in round 2, min_clients 1: the run completes and the
    table it prints holds the numbers of the version's metrics.json."""
    from x0tta6bl4 import RAY_NAMESPACE
    from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector
    from x0tta6bl4.models.registry import ModelRegistry

    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    registry = tmp_path / "registry"
    args = "--nodes 400 --regions 2 --ticks 60 --rounds 2 --lora-rounds 1 --min-clients 1 --crash-region 1"
    args += " --eval-nodes 200 --eval-ticks 48 --round-timeout-s 120"
    started = time.monotonic()
    args += f" --registry {registry} --runs-dir {tmp_path / 'runs'} --run-id t"
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train_federated.py"), *args.split()],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]

    reg = ModelRegistry(str(registry))
    (version,) = reg.versions("graphsage-anomaly")
    loaded = reg.load("graphsage-anomaly", version.version)  # verifies every file's sha256
    m = loaded.metrics
    detector = GraphSAGEDetector(DetectorSpec.parse(loaded.spec))
    detector.load_state_dict(loaded.tensors)  # the merged weights are a plain detector

    rounds = m["round_table"]
    assert [(r["phase"], r["replied"], r["sampled"]) for r in rounds] == [
        ("full", 2, 2),
        ("full", 1, 2),
        ("lora", 2, 2),
    ]
    assert "injected crash: region 1 fails in round 2" in rounds[1]["failures"][0]
    assert "round 2/3 full  clients 1/2 (1 failed)" in proc.stderr
    assert m["failed_replies"] == 1 and m["run_id"] == "t"
    # Only adapters travel back in the LoRA phase (the base goes out once, in its first round).
    assert rounds[2]["bytes_up"] * 5 < rounds[0]["bytes_up"]
    assert m["adapter_bytes"] * 5 < m["model_bytes"]
    assert 0 <= m["auprc"] <= 1 and set(m["heldout"]["regions"]) == {"0", "1"}
    assert "personalised" in m["heldout"]["regions"]["1"]
    # Personalisation is also scored on the training mesh after its training window.
    later = m["heldout"]["regions_later"]
    assert set(later) == {"0", "1"} and "personalised" in later["1"]
    assert later["1"]["global"]["node_ticks"] == later["1"]["personalised"]["node_ticks"] > 0

    rows = _table_rows(proc.stdout)
    round_rows = [r for r in rows if len(r) == 9]
    assert round_rows == [
        [
            str(r["round"]),
            r["phase"],
            f"{r['replied']}/{r['sampled']}",
            f"{r['loss']:.4f}",
            f"{r['auprc']:.4f}",
            str(r["bytes"]),
            f"{r['local_train_s']:.2f}",
            f"{r['overhead_s']:.2f}",
            f"{r['round_s']:.2f}",
        ]
        for r in rounds
    ]
    figures = {r[0]: r[1] for r in rows if len(r) == 2}
    for key in ("auprc", "auroc", "best_f1", "pretrained_auprc"):
        assert figures[f"held-out {key}"] == f"{m[key]:.4f}"
    assert figures["bytes per round lora"] == f"{m['bytes_per_round_lora']:.0f}"
    assert version.version in proc.stdout

    # The shard actors the run started are gone again (no --keep-mesh).
    for _ in range(50):
        try:
            ray_local.get_actor("mesh-shard-0", namespace=RAY_NAMESPACE)
        except ValueError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("mesh-shard-0 is still alive after training")
    print(f"training run: {elapsed:.1f} s")
