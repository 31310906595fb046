"""Poisoned client updates: NaN/inf, misshapen arrays and outlying norms are rejected and counted (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from x0tta6bl4.federated.screening import norm_ratios, screen_updates, update_norm

GLOBAL = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def _update(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def test_honest_updates_of_similar_size_are_all_accepted() -> None:
    updates = [_update(0.1 * (1 + i), seed=i) for i in range(4)]  # norms within 4x of each other
    assert screen_updates(updates, GLOBAL) == [None] * 4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_update_is_rejected(bad: float) -> None:
    poisoned = _update(0.1, seed=1)
    poisoned["b"][1] = bad
    reasons = screen_updates([_update(0.1), poisoned, _update(0.1, seed=2)], GLOBAL)
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1] == "non-finite values (NaN/inf) in b"
    assert not math.isfinite(update_norm(poisoned, GLOBAL))


def test_arrays_that_do_not_fit_the_model_are_rejected() -> None:
    missing = {"w": GLOBAL["w"]}
    reshaped = {"w": np.zeros((3, 4), np.float32), "b": GLOBAL["b"]}
    reasons = screen_updates([missing, reshaped, _update(0.1)], GLOBAL)
    assert reasons[:2] == ["arrays do not match the global model (names or shapes)"] * 2
    assert reasons[2] is None


def test_an_outlying_norm_is_rejected_even_between_two_clients() -> None:
    honest, scaled = _update(0.1), _update(0.1 * 1000, seed=1)
    reasons = screen_updates([honest, scaled], GLOBAL)
    assert reasons[0] is None
    assert reasons[1] is not None and "more than 10x the median" in reasons[1]
    # The median is of the *other* updates, so the outlier cannot shield itself: with three
    # honest clients and one scaled one, only the scaled one goes.
    reasons = screen_updates([_update(0.1, seed=i) for i in range(3)] + [scaled], GLOBAL)
    assert [r is None for r in reasons] == [True, True, True, False]


def test_the_factor_is_configurable_and_a_lone_update_has_nothing_to_compare_with() -> None:
    a, b = _update(0.1), _update(0.5, seed=1)
    assert screen_updates([a, b], GLOBAL, max_norm_ratio=2.0)[1] is not None
    assert screen_updates([a, b], GLOBAL, max_norm_ratio=20.0) == [None, None]
    assert screen_updates([_update(1e6)], GLOBAL) == [None]
    # Rejected updates (NaN) do not count in the others' median.
    nan = _update(0.1)
    nan["w"][0, 0] = np.nan
    assert screen_updates([nan, _update(0.1)], GLOBAL)[1] is None


def test_norm_ratios_compare_each_norm_with_the_median_of_the_others() -> None:
    assert norm_ratios([1.0, 2.0, 4.0]) == [1 / 3, 2 / 2.5, 4 / 1.5]
    assert norm_ratios([1.0, None, 3.0]) == [1 / 3, None, 3.0]
    assert norm_ratios([5.0]) == [None]
    assert norm_ratios([1.0, 0.0]) == [math.inf, 0.0]


# ------------------------------------------------------------------- the strategy, with a fake grid


class PoisoningGrid:
    """Three nodes; node 3 replies with ``poison(arrays)`` in its training replies."""

    def __init__(self, poison):
        self.poison = poison

    def get_node_ids(self):
        return [1, 2, 3]

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Message, MetricRecord, RecordDict

        from x0tta6bl4.federated.client_app import from_record, to_record

        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            train = m.metadata.message_type == "train"
            metrics = {"num-examples": 10, "region": node - 1, "loss": 1.0, "train_s": 1e-4}
            records = {"metrics": MetricRecord(metrics if train else {**metrics, "auprc": 0.5})}
            if train:
                arrays = {
                    k: v + 0.01 * node for k, v in from_record(m.content.array_records["arrays"]).items()
                }
                records["arrays"] = to_record(self.poison(arrays) if node == 3 else arrays)
            replies.append(Message(RecordDict(records), reply_to=m))
        return replies


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _run(poison, min_clients: int):
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from x0tta6bl4.federated.client_app import from_record, to_record
    from x0tta6bl4.federated.outcome import FederationOutcome
    from x0tta6bl4.federated.server_app import TrackedStrategy, aggregate_metrics

    inner = FedAvg(
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
    )
    outcome = FederationOutcome()
    result = TrackedStrategy(inner, "full", 0, min_clients, outcome).start(
        PoisoningGrid(poison),
        to_record({"w": np.zeros(4, np.float32)}),
        num_rounds=1,
        train_config=ConfigRecord({"phase": "full"}),
        evaluate_config=ConfigRecord({"phase": "full"}),
    )
    return from_record(result.arrays), outcome


def _nan(arrays):
    return {k: np.full_like(v, np.nan) for k, v in arrays.items()}


def _scaled(arrays):
    return {k: v * 1e4 for k, v in arrays.items()}


@pytest.mark.parametrize("poison", [_nan, _scaled], ids=["nan", "scaled"])
def test_a_poisoned_reply_is_left_out_of_the_average_and_counted(task_identity, poison) -> None:
    arrays, outcome = _run(poison, min_clients=2)
    (rec,) = outcome.rounds
    assert (rec.sampled, rec.replied, rec.rejected, rec.failed) == (3, 2, 1, 0)
    assert rec.regions == [0, 1] and len(rec.rejections) == 1 and rec.rejections[0].startswith("region 2: ")
    np.testing.assert_allclose(arrays["w"], np.full(4, 0.015), rtol=1e-6)  # mean of nodes 1 and 2 only
    assert rec.to_dict()["rejected"] == 1
    assert rec.norm_ratio_max == pytest.approx(2.0)  # the accepted updates: 0.02 against 0.01


def test_rejections_count_against_min_clients(task_identity) -> None:
    from x0tta6bl4.federated.outcome import TooFewRepliesError

    with pytest.raises(
        TooFewRepliesError, match=r"2 of 3 clients replied, min_clients is 3 \(rejected region 2"
    ):
        _run(_nan, min_clients=3)


def test_the_embedder_federation_screens_its_updates_too(task_identity) -> None:
    from flwr.app import ConfigRecord

    from x0tta6bl4.federated.client_app import from_record, to_record
    from x0tta6bl4.federated.embedder import ScreenedFedAvg

    strategy = ScreenedFedAvg(
        min_clients=2,
        max_update_norm_ratio=10.0,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_available_nodes=1,
    )
    result = strategy.start(
        PoisoningGrid(_scaled),
        to_record({"w": np.zeros(4, np.float32)}),
        num_rounds=1,
        train_config=ConfigRecord(),
    )
    np.testing.assert_allclose(from_record(result.arrays)["w"], np.full(4, 0.015), rtol=1e-6)
    (rnd,) = strategy.rounds
    assert (rnd["replied"], rnd["rejected"]) == (2, 1) and "more than 10x the median" in rnd["rejections"][0]
