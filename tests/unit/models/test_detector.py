"""GraphSAGE detector: spec validation, masking, self-supervised training, LoRA adapters, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import random_schedule
from x0tta6bl4.mesh.pipeline import LocalMesh
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import TopologySpec
from x0tta6bl4.models import lora
from x0tta6bl4.models.data import GraphSeries, ScenarioSpec, simulate, visible_faults
from x0tta6bl4.models.evaluate import detection_metrics, f1_ceiling, zscore_scores
from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector, mask_groups
from x0tta6bl4.models.training import calibrate, score_series, train_detector

SPEC = DetectorSpec.load()
QUICK = SPEC.train.model_copy(update={"epochs": 2, "steps_per_epoch": 8})


@pytest.fixture(scope="module")
def series() -> GraphSeries:
    return simulate(ScenarioSpec(nodes=300, regions=2, ticks=70, seed=4), SPEC.window)[0]


def test_spec_with_an_unknown_field_names_it() -> None:
    with pytest.raises(ConfigError, match="hidden_chanels"):
        DetectorSpec.parse({"hidden_chanels": 32})


def test_spec_with_impossible_shapes_is_refused(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("hidden_channels: 4\n")
    with pytest.raises(ConfigError, match="cannot carry"):
        DetectorSpec.load(path)


def test_mask_groups_never_put_neighbours_together(series: GraphSeries) -> None:
    groups = mask_groups(series.edge_index, series.num_nodes)
    src, dst = series.edge_index
    assert (groups[src] != groups[dst]).all()
    assert groups.max() < 12


def test_a_masked_node_is_reconstructed_without_its_own_input(series: GraphSeries) -> None:
    model = GraphSAGEDetector(SPEC).eval()
    x, _ = series.tensors(series.valid_ticks[0])
    edges = series.edge_tensor()
    mask = torch.zeros(series.num_nodes, dtype=torch.bool)
    mask[7] = True
    changed = x.clone()
    changed[7] += 100.0
    with torch.no_grad():
        assert torch.equal(model(x, edges, mask)[7], model(changed, edges, mask)[7])
        assert not torch.equal(model(x, edges)[7], model(changed, edges)[7])


@pytest.mark.parametrize("adapted", [False, True])
def test_leave_one_out_equals_masking_each_node_on_its_own(series: GraphSeries, adapted: bool) -> None:
    torch.manual_seed(1)
    model: torch.nn.Module = GraphSAGEDetector(SPEC).eval()
    if adapted:  # adapters with non-zero B, so they change the output
        model = lora.with_adapters(model, SPEC.lora)  # type: ignore[arg-type]
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_()
    detector = model.get_base_model() if adapted else model  # type: ignore[operator]
    x, _ = series.tensors(series.valid_ticks[0])
    edges = series.edge_tensor()
    with torch.no_grad():
        fast = detector.leave_one_out(x, edges)
        for node in (0, 17, series.num_nodes - 1):
            mask = torch.zeros(series.num_nodes, dtype=torch.bool)
            mask[node] = True
            torch.testing.assert_close(fast[node], model(x, edges, mask)[node], atol=1e-5, rtol=1e-5)


def test_reset_parameters_restores_an_untrained_model(series: GraphSeries) -> None:
    model = GraphSAGEDetector(SPEC)
    train_detector(model, [series], QUICK)
    assert not torch.equal(model.error_scale, torch.ones_like(model.error_scale))
    model.reset_parameters()
    assert torch.equal(model.error_scale, torch.ones_like(model.error_scale))


def test_training_uses_no_labels_and_lowers_the_loss(series: GraphSeries) -> None:
    unlabelled = series.subgraph(np.arange(series.num_nodes))
    unlabelled.labels = None
    model = GraphSAGEDetector(SPEC)
    losses: list[float] = []
    train_detector(
        model,
        [unlabelled],
        QUICK.model_copy(update={"epochs": 4}),
        progress=lambda _epoch, loss: losses.append(loss),
    )
    assert losses[-1] < losses[0]
    scores = score_series(model, series)
    assert scores.shape == (len(series.valid_ticks), series.num_nodes) and np.isfinite(scores).all()


def test_training_on_a_series_shorter_than_the_warm_up_is_refused() -> None:
    short = simulate(
        ScenarioSpec(nodes=100, regions=1, ticks=SPEC.window.warmup_ticks + 1, seed=1), SPEC.window
    )[0]
    short.inputs.levels = short.inputs.levels[:-2]
    short.inputs.z = short.inputs.z[:-2]
    with pytest.raises(ConfigError, match="warm-up"):
        train_detector(GraphSAGEDetector(SPEC), [short], QUICK)


def test_adapters_are_a_small_fraction_of_the_model_and_merge_exactly(series: GraphSeries) -> None:
    model = GraphSAGEDetector(SPEC)
    adapted = lora.with_adapters(model, SPEC.lora)
    train_detector(adapted, [series], QUICK)
    adapters, full = lora.adapter_arrays(adapted), lora.full_arrays(model)
    assert lora.num_bytes(adapters) <= 0.10 * lora.num_bytes(full)
    assert all("lora_" in k for k in adapters if k != "error_scale")
    np.testing.assert_allclose(
        score_series(adapted, series), score_series(lora.merged(adapted), series), atol=5e-3
    )


def test_weights_of_another_shape_are_refused_by_name() -> None:
    arrays = lora.full_arrays(GraphSAGEDetector(SPEC.model_copy(update={"hidden_channels": 32})))
    with pytest.raises(ConfigError, match="shape"):
        lora.load_full_arrays(GraphSAGEDetector(SPEC), arrays)


def test_metrics_of_a_perfect_and_a_useless_score() -> None:
    labels = np.zeros((10, 50), dtype=np.int8)
    labels[3:6, 4] = 3  # congestion
    labels[2:9, 9] = 6  # blackhole
    perfect = detection_metrics(labels.astype(float), labels)
    assert perfect["best_f1"] == pytest.approx(1.0) and perfect["auprc"] == pytest.approx(1.0)
    assert set(perfect["by_fault"]) == {"congestion", "blackhole"}
    useless = detection_metrics(np.random.default_rng(0).random(labels.shape), labels)
    assert useless["auprc"] < 0.2


def test_the_zscore_baseline_scores_every_valid_node_tick(series: GraphSeries) -> None:
    scores = zscore_scores(series)
    assert scores.shape == (len(series.valid_ticks), series.num_nodes) and (scores >= 0).all()


def test_calibration_scales_each_output_by_the_tail_of_its_training_errors(series: GraphSeries) -> None:
    torch.manual_seed(0)
    model = GraphSAGEDetector(SPEC).eval()
    ticks = list(series.valid_ticks)
    with torch.no_grad():
        errors = np.concatenate(
            [
                model.errors(*series.tensors(t), series.edge_tensor(), series.group_tensor()).numpy()
                for t in ticks
            ]
        )
    scales = {}
    for q in (0.9, 0.998):
        calibrate(model, [series], node_ticks=len(ticks) * series.num_nodes, quantile=q)
        scales[q] = model.error_scale.clone()
        np.testing.assert_allclose(scales[q].numpy() ** 2, np.quantile(errors, q, axis=0), rtol=1e-4)
    assert (scales[0.998] >= scales[0.9]).all() and (scales[0.998] > scales[0.9]).any()


def test_a_spec_quantile_outside_the_upper_half_is_refused() -> None:
    with pytest.raises(ConfigError, match="calibration_quantile"):
        DetectorSpec.parse({"train": {"calibration_quantile": 0.3}})


def test_a_degraded_link_no_route_uses_is_invisible_and_a_crash_never_is() -> None:
    scenario = ScenarioSpec(
        nodes=300, regions=2, ticks=90, seed=4, fault_types=("link_degradation", "node_crash")
    )
    visible = visible_faults(scenario, SPEC.window)
    labels = simulate(scenario, SPEC.window)[0].labels
    assert labels is not None
    assert not (visible & (labels == 0)).any()
    assert visible[labels == 1].all()  # node_crash
    link = labels == 2
    assert 0 < visible[link].mean() < 1
    # Independently of the counterfactual runs: an invisible degraded link is no route's uplink.
    topo_spec = TopologySpec(scenario.nodes, scenario.regions, seed=scenario.seed)
    topology = topo_spec.build()
    faults = random_schedule(
        topology, scenario.ticks, scenario.seed, scenario.faults_per_1000_ticks, scenario.fault_types,
        warmup_ticks=SPEC.window.warmup_ticks,
    )  # fmt: skip
    mesh = LocalMesh(topology, MeshSpec(topo_spec, seed=scenario.seed, faults=tuple(faults)))
    checked = 0
    for t in range(scenario.ticks):
        mesh.step()
        uplinks = set(mesh.control.routing()[1].uplink.tolist())
        for f in faults:
            if f.kind == "link_degradation" and f.start_tick <= t + 1 < f.end_tick and labels[t, f.node] == 2:
                assert f.peer is not None
                if not visible[t, f.node]:
                    assert topology.link_id(f.node, f.peer) not in uplinks
                    checked += 1
    mesh.close()
    assert checked > 0


def test_the_f1_ceiling_flags_exactly_the_visible_positives() -> None:
    labels = np.array([[0, 2, 2, 1], [0, 0, 2, 1]])
    visible = np.array([[False, True, False, True], [False, False, False, True]])
    ceiling = f1_ceiling(visible, labels)
    assert ceiling["recall"] == pytest.approx(0.6)
    assert ceiling["f1"] == pytest.approx(2 * 0.6 / 1.6)
    assert ceiling["invisible_node_ticks"] == 2
    assert ceiling["visible_share_by_fault"] == {"node_crash": 1.0, "link_degradation": pytest.approx(1 / 3)}
