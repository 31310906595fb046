"""Every benchmark suite runs with --quick and prints the output contract of ../shared/BENCHMARKS.md."""

import json
import re
import subprocess

import pytest
from tests.e2e.conftest import BIN, REPO

pytestmark = pytest.mark.slow
NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")


def validate(doc, suite):
    assert doc["suite"] == suite
    assert isinstance(doc["version"], str)
    assert {"cpus", "memory_gib", "python", "ray"} <= doc["machine"].keys()
    assert doc["results"]
    for row in doc["results"]:
        assert NAME.match(row["name"]), row["name"]
        assert isinstance(row["params"], dict)
        assert isinstance(row["value"], float)
        assert isinstance(row["unit"], str)
        if "baseline" in row:
            assert NAME.match(row["baseline"]["name"])
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"]["value"])
        if "target" in row:
            target = row["target"]
            assert target["metric"] in ("value", "ratio") and target["op"] in (">=", "<=")
            observed = row[target["metric"]]
            assert row["met"] == (
                observed >= target["value"] if target["op"] == ">=" else observed <= target["value"]
            )


def run_quick(suite, env, timeout):
    """Run `x0tta6bl4 bench <suite> --quick --json`; the parsed report (exit status 0 asserted)."""
    proc = subprocess.run(
        [str(BIN / "x0tta6bl4"), "bench", suite, "--quick", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_mesh_quick_follows_the_contract(cli_env):
    doc = run_quick("mesh", cli_env, timeout=300)
    validate(doc, "mesh")
    names = {(r["name"], r["params"].get("nodes")) for r in doc["results"]}
    assert ("pipeline_node_ticks_per_s", 2000) in names and ("kernel_node_ticks_per_s", 2000) in names
    pipeline = next(r for r in doc["results"] if r["name"] == "pipeline_node_ticks_per_s")
    assert pipeline["baseline"]["name"] == "kernel_node_ticks_per_s"
    assert any(r["name"] == "peak_memory_bytes" for r in doc["results"])


def test_bench_federated_quick_reports_every_figure_the_issue_names(cli_env):
    doc = run_quick("federated", cli_env, timeout=900)
    validate(doc, "federated")
    rows = {r["name"]: r for r in doc["results"]}
    assert rows["federated_auprc"]["baseline"]["name"] == "centralised_auprc_mean"
    central = rows["federated_auprc"]["params"]
    assert central["centralised_auprc_min"] <= rows["federated_auprc"]["baseline"]["value"]
    assert rows["federated_auprc"]["baseline"]["value"] <= central["centralised_auprc_max"]
    ceiling = rows["best_f1"]["baseline"]
    assert ceiling["name"] == "visible_faults_f1_ceiling" and 0 < ceiling["value"] <= 1
    assert rows["lora_bytes_per_round"]["baseline"]["name"] == "full_model_bytes_per_round"
    assert rows["lora_bytes_per_round"]["value"] < rows["lora_bytes_per_round"]["baseline"]["value"]
    faults = {r["params"]["fault_type"] for r in doc["results"] if r["name"] == "graphsage_auprc"}
    assert {"all", "congestion", "blackhole"} <= faults
    assert rows["embedder_recall_at_3"]["baseline"]["name"] == "embedder_recall_at_3_before_lora"
    personalised = [r for r in doc["results"] if r["name"] == "lora_personalised_auprc"]
    assert {r["params"]["evaluation"] for r in personalised} <= {"training_mesh_later_ticks", "heldout_mesh"}
    for name in ("best_f1", "detector_node_scores_per_s", "round_wall_s", "round_local_train_s"):
        assert 0 <= rows[name]["value"] < float("inf")


def test_bench_serve_quick_reports_every_figure_the_issue_names(cli_env):
    doc = run_quick("serve", cli_env, timeout=900)
    validate(doc, "serve")
    rows = {(r["name"], r["params"].get("encoding")): r for r in doc["results"]}
    for encoding in ("json", "npz"):
        row = rows[("anomaly_requests_per_s", encoding)]
        assert row["baseline"]["name"] == "noop_ceiling_requests_per_s" and row["value"] > 0
        assert (
            rows[("anomaly_latency_p95_ms", encoding)]["value"]
            >= rows[("anomaly_latency_p50_ms", encoding)]["value"]
        )
        assert rows[("anomaly_mean_batch_size", encoding)]["value"] >= 1.0
    assert rows[("rag_uncached_queries_per_s", None)]["baseline"]["name"] == "in_process_embedding_per_s"
    assert rows[("rag_cached_queries_per_s", None)]["baseline"]["name"] == "noop_ceiling_requests_per_s"
    assert rows[("hnsw_queries_per_s", None)]["baseline"]["name"] == "exact_queries_per_s"
    assert 0.9 <= rows[("hnsw_recall_at_10", None)]["value"] <= 1.0
    assert rows[("rag_recall_at_3", None)]["value"] >= 0.9


def test_bench_autonomy_quick_compares_the_three_modes_in_one_run(cli_env):
    doc = run_quick("autonomy", cli_env, timeout=900)
    validate(doc, "autonomy")
    rows = {(r["name"], r["params"].get("scenario")): r for r in doc["results"]}
    f1 = rows[("f1", "all")]
    assert f1["baseline"]["name"] == "static_thresholds_f1" and 0.0 <= f1["value"] <= 1.0
    assert rows[("f1_gain", "all")]["target"] == {"metric": "value", "op": ">=", "value": 0.1}
    mttr = rows[("mttr_ticks", "all")]
    assert mttr["baseline"]["name"] == "no_remediation_mttr_ticks" and mttr["value"] > 0
    assert mttr["target"] == {"metric": "ratio", "op": "<=", "value": 0.5}
    assert rows[("false_alarms_per_1000_node_ticks", "all")]["value"] >= 0
    assert {key[1] for key in rows} >= {"seed-101", "seed-102", "all"}
    throughput = rows[("controller_ticks_per_s", None)]
    assert throughput["baseline"]["name"] == "mesh_pipeline_ticks_per_s" and throughput["value"] > 0
