"""bench chaos rows: how a killed run is compared with the unharmed run of the same seed."""

from x0tta6bl4.bench.chaos import _case

PARAMS = {"nodes": 10, "regions": 2, "ticks": 3, "kill_tick": 1, "seed": 1}


def _report(healed_nodes, mttr=4.0, ticks=3, status="completed"):
    faults = [
        {
            "kind": "congestion",
            "node": n,
            "start_tick": 1,
            "remediated_by": "reroute" if n in healed_nodes else None,
        }
        for n in (1, 2, 3)
    ]
    timeline = [{"tick": t, "serviceable": 10} for t in range(ticks)]
    return {"status": status, "timeline": timeline, "faults": faults, "summary": {"mttr_ticks": mttr}}


def _rows(target, report, base):
    return {r["name"]: r for r in _case(target, report, base, PARAMS)}


def test_a_resumed_loop_that_lost_a_healed_fault_misses_its_target():
    base = _report({1, 2})
    rows = _rows("driver_loop", _report({1}), base)
    lost = rows["chaos_healed_faults_lost"]
    assert lost["value"] == 1.0 and lost["met"] is False and lost["params"]["healed_unharmed"] == 2
    assert _rows("driver_loop", _report({1, 2, 3}), base)["chaos_healed_faults_lost"]["met"] is True


def test_mesh_only_cases_compare_timelines_and_a_short_run_is_not_completed():
    base = _report(set())
    rows = _rows("shard", _report(set(), ticks=2), base)
    assert rows["chaos_run_completed"]["value"] == 0.0 and rows["chaos_run_completed"]["met"] is False
    assert rows["chaos_timeline_mismatch_ticks"]["value"] == 1.0
    assert "chaos_healed_faults_lost" not in rows
    assert rows["chaos_mttr_ticks"]["ratio"] == 1.0
