"""The experiment notebooks run end to end at a small size and report sane results.

Each notebook reads its size from ``X0_NB_*`` environment variables; the test shrinks
them, runs every cell in a fresh kernel of this virtualenv's Python (nbclient), then
appends one cell that prints the notebook's ``results`` dictionary as JSON.
"""

import json
import math
import sys
import time
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SMALL = {
    "X0_NB_NODES": "300",
    "X0_NB_TICKS": "80",
    "X0_NB_EPOCHS": "1",
    "X0_NB_ROUNDS": "2",
    "X0_NB_TRAIN_SCENARIOS": "2",
    # One intra-op thread: on a busy 2-core machine two torch threads spin against
    # each other and make these small runs many times slower.
    "X0_NB_THREADS": "1",
    "X0_NB_VECTORS": "600",
    "X0_NB_QUERIES": "40",
    "X0_NB_CHUNK_SIZES": "120,240",
    # The embeddings cache `bench serve --quick` fills (600 vectors, seed 0): embedded once per checkout.
    "X0TTA6BL4_CACHE_DIR": str(Path(__file__).resolve().parents[2] / ".x0tta6bl4" / "cache"),
}
MARKER = "X0_NB_RESULTS="
PROBE = f"""
import json as _json, sys as _sys
print({MARKER!r} + _json.dumps({{"results": results, "prefix": _sys.prefix}}, default=float))
"""


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A "python3" kernelspec that runs this interpreter, first on JUPYTER_PATH; small sizes."""
    kernels = tmp_path / "jupyter" / "kernels"
    kernelspec.write_kernel_spec(path=str(kernels / "python3"))
    spec = json.loads((kernels / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "work"
    work.mkdir()
    return work


def execute(name, cwd):
    """Run a notebook plus the probe cell; returns the executed notebook, its results and seconds taken."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        startup_timeout=180,
        resources={"metadata": {"path": str(cwd)}},
    )
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    errors = [
        (i, o.get("ename"), o.get("evalue"))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors, errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "a code cell did not run"
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith(MARKER))
    doc = json.loads(line[len(MARKER) :])
    assert doc["prefix"] == sys.prefix, "the notebook ran in another Python environment"
    print(f"{name}: {seconds:.1f} s")
    return nb, doc["results"], seconds


def images(nb):
    return sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})
    )


def is_auprc(value):
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.mark.parametrize(
    ("name", "size_var"),
    [
        ("01_graphsage_anomaly.ipynb", "X0_NB_NODES"),
        ("02_federated_lora.ipynb", "X0_NB_NODES"),
        ("03_rag.ipynb", "X0_NB_VECTORS"),
        ("04_autonomy.ipynb", "X0_NB_NODES"),
    ],
)
def test_notebook_is_saved_clean(name, size_var):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert size_var in code[0].source


@pytest.mark.slow
def test_graphsage_notebook_runs_small(kernel_env):
    nb, results, _ = execute("01_graphsage_anomaly.ipynb", kernel_env)
    assert results["sizes"]["nodes"] == 300 and results["sizes"]["epochs"] == 1
    models = results["models"]
    assert set(models) == {"GraphSAGE", "MLP (no graph)", "z-score", "IsolationForest"}
    for name, m in models.items():
        assert is_auprc(m["auprc"]), (name, m)
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["best_f1"] <= 1.0, (name, m)
        assert m["by_fault"], name
        for fault, v in m["by_fault"].items():
            assert is_auprc(v["auprc"]) and 0.0 <= v["recall"] <= 1.0, (name, fault, v)
    assert 0.0 < results["base_rate"] < 1.0
    # loss curve, score histograms, per-fault bars, PR curves
    assert images(nb) >= 4


@pytest.mark.slow
def test_federated_notebook_runs_small(kernel_env):
    nb, results, _ = execute("02_federated_lora.ipynb", kernel_env)
    assert results["sizes"]["nodes"] == 300 and results["sizes"]["rounds"] == 2
    for key in ("fedavg_auprc", "fedprox_auprc", "lora_auprc"):
        assert len(results[key]) == 2, key
        assert all(is_auprc(v) for v in results[key]), (key, results[key])
    assert is_auprc(results["central"]["auprc"])
    sizes = results["bytes"]
    assert 0 < sizes["lora"] < sizes["full"]
    assert sizes["ratio"] == pytest.approx(sizes["full"] / sizes["lora"])
    personal = results["personalisation"]
    assert len(personal) == 4
    scored = [v for r in personal.values() for v in (r["before"], r["after"]) if v is not None]
    assert scored and all(is_auprc(v) for v in scored)
    # AUPRC per round, bytes per round, personalisation bars
    assert images(nb) >= 3


@pytest.mark.slow
def test_rag_notebook_runs_small(kernel_env):
    nb, results, _ = execute("03_rag.ipynb", kernel_env)
    assert results["sizes"] == {"vectors": 600, "queries": 40, "chunk_sizes": [120, 240]}
    assert 0.0 <= results["mrr"] <= results["recall_at_3"] <= 1.0
    sweep = results["ef_sweep"]
    assert [r["ef"] for r in sweep] == [8, 16, 32, 64, 128]
    assert all(0.0 <= r["recall_at_k"] <= 1.0 for r in sweep)
    assert sweep[-1]["recall_at_k"] >= sweep[0]["recall_at_k"]  # a wider beam never finds less here
    rows = results["cache_thresholds"]
    assert [r["hit_rate"] for r in rows] == sorted((r["hit_rate"] for r in rows), reverse=True)
    assert [r["chunk_words"] for r in results["chunk_sizes"]] == [120, 240]
    # recall per fault, ef sweep, cache thresholds, chunk sizes
    assert images(nb) >= 4


@pytest.mark.slow
def test_autonomy_notebook_runs_every_mode_on_both_workloads(kernel_env, monkeypatch):
    monkeypatch.setenv("X0_NB_TUNING_GRID", "1.0,1.25")
    nb, results, _ = execute("04_autonomy.ipynb", kernel_env)
    assert results["sizes"]["nodes"] == 300 and results["sizes"]["ticks"] == 80
    assert results["drift"]["max_absent_nodes"] > 0  # nodes left or had not joined yet
    low, high = results["drift"]["demand_multiplier_range"]
    assert low < 1.0 < high  # the daily cycle swings both ways
    for workload in ("stationary", "drift"):
        tuned = results["tuned"][workload]
        assert tuned["multiple"] in (1.0, 1.25) and tuned["threshold"] > 0
        assert tuned["tuning_seed"] not in results["sizes"]["seeds"].values()
        for mode in ("no_remediation", "static", "static_tuned", "learning"):
            run = results["runs"][f"{workload}/{mode}"]
            assert 0.0 <= run["f1"] <= 1.0 and 0.0 < run["availability"] <= 1.0, (workload, mode, run)
            assert run["false_alarms_per_1000_node_ticks"] >= 0.0
    # drift, availability over time, recall and MTTR per fault type, F1 and MTTR
    assert images(nb) >= 4


@pytest.mark.slow
def test_make_notebook_serves_every_notebook_with_this_kernel(tmp_path):
    """`make notebook` starts JupyterLab, which lists the notebooks behind a token and offers
    this virtualenv's Python as its kernel."""
    import os
    import secrets
    import signal
    import subprocess

    import requests

    from x0tta6bl4.connect import free_local_port

    root = NOTEBOOKS.parent
    port, token = free_local_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
    }
    env.pop("JUPYTER_PATH", None)
    args = f"--no-browser --port={port} --ip=127.0.0.1 --IdentityProvider.token={token}"
    server = subprocess.Popen(
        ["make", "-s", "notebook", f"NOTEBOOK_ARGS={args}"], cwd=root, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else "make notebook exited"
            try:
                if requests.get(f"{base}/api/status", headers=headers, timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "jupyter lab did not answer in 90 s"
            time.sleep(0.5)
        assert requests.get(f"{base}/api/contents", timeout=5).status_code == 403  # no token, no files
        listed = requests.get(f"{base}/api/contents", headers=headers, timeout=10).json()
        names = {item["name"] for item in listed["content"]}
        assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} <= names
        specs = requests.get(f"{base}/api/kernelspecs", headers=headers, timeout=10).json()
        python = specs["kernelspecs"][specs["default"]]["spec"]["argv"][0]
        assert Path(python).resolve().is_relative_to(Path(sys.prefix).resolve()) or python == "python"
        lab = requests.get(f"{base}/lab", headers=headers, timeout=10)
        assert lab.ok and "JupyterLab" in lab.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the jupyter server it started
        server.wait(timeout=30)
