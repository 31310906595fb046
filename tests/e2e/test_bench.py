"""Every benchmark suite runs with --quick and prints the output contract of the shared BENCHMARKS.md.

These tests check the contract, not the figures: the rows each suite must report with the
baseline it is compared with, ratios and `met` consistent with the row's own numbers, and a
`met` on every row that declares a target. Targets and figures are the benches' business:
re-asserting their constants here would only make the two drift apart.
"""

import json
import math
import re
import subprocess

import pytest

from tests.e2e.conftest import BIN, REPO

#: pytest-timeout's limit for these tests: above run_quick's longest, so a bench that runs too long
#: fails with its own output rather than pytest's stack dump.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(960)]
NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")

#: Rows each suite must report (BENCHMARKS.md's table) and the baselines each may be measured against
#: (None: a row with no baseline; a tuple: any of these, e.g. the best non-graph detector).
NON_GRAPH = ("zscore_auprc", "isolation_forest_auprc", "mlp_auprc")
CONTRACT: dict[str, dict[str, str | tuple[str, ...] | None]] = {
    "mesh": {
        "pipeline_node_ticks_per_s": "kernel_node_ticks_per_s",
        "peak_memory_bytes": "kernel_peak_memory_bytes",
    },
    "ebpf": {"loopback_throughput_ratio": None, "traced_events_per_s": None, "lost_events": None},
    "federated": {
        "federated_auprc": "centralised_auprc_mean",
        "lora_bytes_per_round": "full_model_bytes_per_round",
        "graphsage_auprc": NON_GRAPH,
        "best_f1": "visible_faults_f1_ceiling",
        "embedder_recall_at_3": "embedder_recall_at_3_before_lora",
    },
    "serve": {
        "anomaly_requests_per_s": "noop_ceiling_requests_per_s",
        "rag_uncached_queries_per_s": "in_process_embedding_per_s",
        "rag_cached_queries_per_s": "noop_ceiling_requests_per_s",
        "hnsw_queries_per_s": "exact_queries_per_s",
        "hnsw_recall_at_10": None,
        "rag_recall_at_3": None,
        "rag_mrr": None,
    },
    "autonomy": {
        "f1": "static_thresholds_f1",
        "mttr_ticks": "no_remediation_mttr_ticks",
        "false_alarms_per_1000_node_ticks": "static_false_alarms_per_1000_node_ticks",
        "controller_ticks_per_s": "mesh_pipeline_ticks_per_s",
    },
    "security": {
        "svid_issuance_per_s": None,
        "mtls_handshake_ms": None,
        "mtls_front_requests_per_s": "plain_loopback_requests_per_s",
        "ray_auth_mesh_ticks_per_s": "no_auth_mesh_ticks_per_s",
        "refused_cases": None,
        "rotation_failed_requests": None,
        "ledger_appends_per_s": "unsigned_durable_appends_per_s",
        "ledger_verify_entries_per_s": "hash_chain_check_entries_per_s",
        "artifact_sign_ms": "write_version_ms",
        "artifact_verify_ms": "verified_load_ms",
    },
    "observability": {
        "instrumented_ticks_per_s": "uninstrumented_ticks_per_s",
        "span_overhead_us": "disabled_span_us",
        "metric_families": None,
        "metric_domains": None,
        "scrape_duration_ms": None,
    },
    "chaos": {
        "chaos_run_completed": None,
        "chaos_report_written": None,
        "chaos_timeline_mismatch_ticks": None,
        "chaos_mttr_ticks": "unharmed_mttr_ticks",
        "fuzz_requests": None,
        "fuzz_5xx": None,
        "fuzz_max_latency_ms": None,
    },
}


def validate(doc, suite):
    """The output object of one suite, row by row."""
    assert doc["suite"] == suite
    assert isinstance(doc["version"], str)
    assert {"cpus", "memory_gib", "python", "ray"} <= doc["machine"].keys()
    assert doc["results"]
    for row in doc["results"]:
        assert NAME.match(row["name"]), row["name"]
        assert isinstance(row["params"], dict)
        assert isinstance(row["value"], float)
        assert isinstance(row["unit"], str) and row["unit"]
        if "baseline" in row:
            assert NAME.match(row["baseline"]["name"])
            if row["baseline"]["value"]:
                assert row["ratio"] == pytest.approx(row["value"] / row["baseline"]["value"], nan_ok=True)
        if "target" in row:
            target = row["target"]
            assert target["metric"] in ("value", "ratio") and target["op"] in (">=", "<=")
            assert target["metric"] == "value" or "baseline" in row, (
                f"{row['name']}: a ratio target needs a baseline"
            )
            assert "met" in row, f"{row['name']} declares a target but carries no met"
            observed = row[target["metric"]]
            expected = observed >= target["value"] if target["op"] == ">=" else observed <= target["value"]
            assert row["met"] is bool(expected), row
        else:
            assert "met" not in row, f"{row['name']}: met without a target"
    reported: dict[str, set[str | None]] = {}
    for row in doc["results"]:
        reported.setdefault(row["name"], set()).add(row.get("baseline", {}).get("name"))
    for name, baseline in CONTRACT[suite].items():
        assert name in reported, f"bench {suite} lacks {name}"
        allowed = set(baseline) if isinstance(baseline, tuple) else {baseline}
        assert reported[name] <= allowed, f"{name}: baselines {reported[name]}, contract says {baseline}"


def run_quick(suite, env, timeout):
    """Run `x0tta6bl4 bench <suite> --quick --json`; the parsed report (exit status 0 asserted)."""
    try:
        proc = subprocess.run(
            [str(BIN / "x0tta6bl4"), "bench", suite, "--quick", "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"bench {suite} --quick ran over {timeout} s; its stderr ends:\n{err[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    validate(doc, suite)
    return doc


def test_the_contract_check_refuses_a_target_without_met_and_a_wrong_ratio():
    # The validator itself must be able to fail, or every test below passes vacuously.
    row = {
        "name": "f1",
        "params": {},
        "value": 0.5,
        "unit": "f1",
        "baseline": {"name": "static_thresholds_f1", "value": 0.4},
    }
    doc = {
        "suite": "autonomy",
        "version": "x",
        "machine": dict.fromkeys(("cpus", "memory_gib", "python", "ray")),
    }
    with pytest.raises(AssertionError, match="declares a target"):
        validate(
            {
                **doc,
                "results": [{**row, "ratio": 1.25, "target": {"metric": "value", "op": ">=", "value": 0.1}}],
            },
            "autonomy",
        )
    with pytest.raises(AssertionError):
        validate({**doc, "results": [{**row, "ratio": 2.0}]}, "autonomy")
    with pytest.raises(AssertionError, match="lacks"):
        validate({**doc, "results": [{**row, "ratio": 1.25}]}, "autonomy")


def test_bench_mesh_quick_follows_the_contract(cli_env):
    doc = run_quick("mesh", cli_env, timeout=300)
    sizes = {r["params"].get("nodes") for r in doc["results"] if r["name"] == "pipeline_node_ticks_per_s"}
    assert len(sizes) >= 2, "the pipeline is measured at more than one size"


@pytest.mark.root
def test_bench_ebpf_quick_follows_the_contract(cli_env, ebpf_host):
    doc = run_quick("ebpf", cli_env, timeout=600)
    rows = {r["name"]: r for r in doc["results"]}
    assert rows["lost_events"]["value"] >= 0 and rows["traced_events_per_s"]["value"] > 0


def test_bench_federated_quick_follows_the_contract(cli_env):
    doc = run_quick("federated", cli_env, timeout=900)
    rows = {r["name"]: r for r in doc["results"]}
    central = rows["federated_auprc"]["params"]
    assert central["centralised_auprc_min"] <= rows["federated_auprc"]["baseline"]["value"]
    assert rows["federated_auprc"]["baseline"]["value"] <= central["centralised_auprc_max"]
    assert 0 < rows["best_f1"]["baseline"]["value"] <= 1
    assert rows["lora_bytes_per_round"]["value"] < rows["lora_bytes_per_round"]["baseline"]["value"]
    recalls = [r for r in doc["results"] if r["name"] == "recall_at_best_f1"]
    assert recalls and all(r["params"]["visible_share"] > 0 and "met" in r for r in recalls)
    faults = {r["params"]["fault_type"] for r in doc["results"] if r["name"] == "graphsage_auprc"}
    assert "all" in faults and len(faults) > 1, "AUPRC overall and per fault type"
    personalised = [r for r in doc["results"] if r["name"] == "lora_personalised_auprc"]
    assert {r["params"]["evaluation"] for r in personalised} <= {"training_mesh_later_ticks", "heldout_mesh"}
    for name in ("best_f1", "detector_node_scores_per_s", "round_wall_s", "round_local_train_s"):
        assert 0 <= rows[name]["value"] < math.inf


def test_bench_serve_quick_follows_the_contract(cli_env):
    doc = run_quick("serve", cli_env, timeout=900)
    rows = {(r["name"], r["params"].get("encoding")): r for r in doc["results"]}
    for encoding in ("json", "npz"):
        assert rows[("anomaly_requests_per_s", encoding)]["value"] > 0
        p50, p95 = (rows[(f"anomaly_latency_{q}_ms", encoding)]["value"] for q in ("p50", "p95"))
        assert 0 < p50 <= p95
        assert rows[("anomaly_mean_batch_size", encoding)]["value"] >= 1.0
    for name in ("hnsw_recall_at_10", "rag_recall_at_3", "rag_mrr"):
        assert 0.0 <= rows[(name, None)]["value"] <= 1.0


def test_bench_autonomy_quick_compares_the_three_modes_in_one_run(cli_env):
    doc = run_quick("autonomy", cli_env, timeout=900)
    rows = {(r["name"], r["params"].get("scenario")): r for r in doc["results"]}
    assert 0.0 <= rows[("f1", "all")]["value"] <= 1.0
    assert rows[("mttr_ticks", "all")]["value"] > 0
    assert rows[("false_alarms_per_1000_node_ticks", "all")]["value"] >= 0
    scenarios = {key[1] for key in rows if key[1] not in (None, "all")}
    assert len(scenarios) >= 2, "every seed is reported beside the aggregate"
    assert rows[("controller_ticks_per_s", None)]["value"] > 0


def test_bench_security_quick_follows_the_contract(cli_env):
    doc = run_quick("security", cli_env, timeout=900)
    rows = {r["name"]: r for r in doc["results"]}
    handshake = rows["mtls_handshake_ms"]["params"]
    assert 0 < handshake["p50_ms"] <= handshake["p95_ms"]
    assert rows["rotation_failed_requests"]["params"]["front_rotations"] >= 1, "the run spans a rotation"
    mesh = rows["ray_auth_mesh_ticks_per_s"]["params"]
    assert (mesh["ray_auth_mode"], mesh["baseline_ray_auth_mode"]) == ("token", "disabled")


def test_bench_chaos_quick_survives_each_kill_and_resumes_the_killed_driver(cli_env):
    doc = run_quick("chaos", cli_env, timeout=900)
    by_target: dict[str, dict[str, dict]] = {}
    for row in doc["results"]:
        by_target.setdefault(row["params"].get("target", ""), {})[row["name"]] = row
    for target in ("shard", "driver", "controller"):  # each SIGKILLed mid-run; the driver resumed
        rows = by_target[target]
        assert rows["chaos_run_completed"]["value"] == 1.0, target
        assert rows["chaos_report_written"]["value"] == 1.0, target
    for target in ("shard", "driver"):  # the mesh without the controller is deterministic
        assert by_target[target]["chaos_timeline_mismatch_ticks"]["value"] == 0.0, target
    for target in ("shard", "driver", "controller"):  # MTTR against the unharmed run of the same kind
        assert by_target[target]["chaos_mttr_ticks"]["baseline"]["value"] > 0, target
    assert by_target["controller"]["chaos_controller_failures"]["value"] == 2.0  # killed twice, both counted
    assert by_target[""]["fuzz_5xx"]["value"] == 0.0 and by_target[""]["fuzz_requests"]["value"] > 0


# Alone: beside the parallel phase's tests its two Rays and scrapes cost more than it does alone (the
# phase grew by 159 s when it ran there, against its own ~120 s).
@pytest.mark.serial
def test_bench_observability_quick_measures_the_loop_both_ways_and_scrapes_a_real_run(cli_env):
    doc = run_quick("observability", cli_env, timeout=900)
    rows = {r["name"]: r for r in doc["results"]}
    loop = rows["instrumented_ticks_per_s"]
    assert loop["value"] > 0 and loop["baseline"]["value"] > 0
    assert loop["params"]["otlp_exports"] > 0, "the instrumented runs exported their spans"
    params = rows["metric_domains"]["params"]
    domains = params["domains"]
    assert "trained" in params["events"]
    # Every agent answered to the end: the venv's backport of ray-project/ray#64946 holds.
    assert params["wedged_agents"] == [] and params["training_runs"] == 1, params
    # The scraped platform's run lost a shard and served its front, and its training job ran rounds.
    assert {"mesh", "recovery", "security", "federated"} <= set(domains), domains
    assert rows["metric_families"]["value"] >= len(domains)
    assert rows["scrape_duration_ms"]["value"] > 0 and rows["span_overhead_us"]["value"] > 0
