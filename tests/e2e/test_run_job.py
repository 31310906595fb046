"""`x0tta6bl4 run` end to end: a small run's report, bad input refused, and `ray job submit`."""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests
import yaml

from tests.e2e.conftest import BIN, REPO
from tests.e2e.raynodes import pids_of_temp_dir
from tests.ports import worker_port_flags

pytestmark = pytest.mark.slow


def _run(args, env, timeout=240):
    return subprocess.run(
        [str(BIN / "x0tta6bl4"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


#: How Ray prefixes a line it forwards to the driver's output: ``(raylet)``, ``(ServeController pid=7)``.
RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|gcs_server|[\w:.-]+ pid=\d+[^)]*)\)")


def test_run_writes_a_report_with_faults_timeline_and_summary(small_run):
    # The session's shared run (tests/e2e/conftest.py): 400 nodes, 4 regions, 100 ticks, seed 3,
    # kept serving behind the mTLS front after the report (--serve-forever) until SIGTERM.
    proc, tmp_path = small_run.proc, small_run.runs_dir
    assert proc.returncode == 0, proc.stderr
    # --json prints the summary as one JSON document. The run then served until SIGTERM, and Ray's
    # log forwarding may add lines of its own processes after it (each prefixed with the process).
    printed, end = json.JSONDecoder().raw_decode(proc.stdout)
    after = proc.stdout[end:].strip().splitlines()
    assert all(RAY_FORWARDED.search(line) for line in after), after
    report = json.loads((tmp_path / "small" / "report.json").read_text())
    assert printed["path"].endswith("small/report.json")
    assert report["topology"]["nodes"] == 400 and report["topology"]["regions"] == 4
    assert len(report["timeline"]) == 100
    assert report["summary"]["faults_injected"] >= 6
    kinds = {f["kind"] for f in report["faults"]}
    assert {
        "node_crash",
        "link_degradation",
        "congestion",
        "cpu_exhaustion",
        "memory_leak",
        "blackhole",
    } <= kinds
    assert all(f["ended_tick"] is None or f["ended_tick"] > f["start_tick"] for f in report["faults"])
    assert 0.5 < report["summary"]["availability"] <= 1.0
    assert report["summary"]["mttr_ticks"] > 0
    assert {"detection", "remediation", "hosts", "actions", "config"} <= report.keys()
    assert "tick 100/100" in proc.stderr  # live progress (plain lines when not on a terminal)
    assert sorted(p.name for p in (tmp_path / "small" / "checkpoints").glob("region-0-*.ckpt")) == [
        "region-0-t00000089.ckpt",
        "region-0-t00000099.ckpt",
    ]
    # The loop closed: served scores, learned thresholds pushed back, incidents healed, figures reported.
    summary = report["summary"]
    for key in ("f1", "mttd_ticks", "mttr_ticks", "false_alarms_per_1000_node_ticks", "precision", "recall"):
        assert key in summary
    assert report["detection"]["faults_evaluated"] >= 1 and report["detection"]["faults_detected"] >= 1
    assert report["remediation"]["pushes"] >= 1 and report["remediation"]["analyses"] >= 50
    assert report["incidents"] and report["remediation"]["actions"] >= 1
    assert report["summary"]["faults_remediated"] >= 1  # healed by the controller (nothing is scripted)
    assert any(a["reason"].startswith("incident ") for a in report["actions"])  # the controller's actions
    assert (tmp_path / "small" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "knowledge.sqlite").exists()


def test_scripted_actions_from_a_yaml_config_heal_their_faults(tmp_path, cli_env):
    config = tmp_path / "run.yaml"
    config.write_text(
        "nodes: 300\nregions: 2\nticks: 40\nfaults_per_1000_ticks: 0\n"
        "faults:\n  - {type: congestion, node: 20, start_tick: 5, duration_ticks: 30}\n"
        "  - {type: cpu_exhaustion, node: 200, start_tick: 5, duration_ticks: 30}\n"
        "actions:\n  - {action: rate_limit, node: 20, tick: 10}\n  - {action: restart_node, node: 200, tick: 10}\n"
    )
    proc = _run(
        [
            "run",
            "--config",
            str(config),
            "--no-ebpf",
            "--no-autonomy",
            "--runs-dir",
            str(tmp_path),
            "--run-id",
            "y",
        ],
        cli_env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "y" / "report.json").read_text())
    congestion, cpu = report["faults"]
    assert congestion["remediated_by"] == "rate_limit" and congestion["ended_tick"] == 10
    assert cpu["remediated_by"] is None and cpu["ended_tick"] == 35  # a restart does not cure CPU exhaustion
    assert [a["name"] for a in report["actions"]] == ["rate_limit", "restart_node"]


def test_a_run_stopped_by_term_mid_run_exits_as_interrupted_and_reports_the_ticks_it_ran(tmp_path, cli_env):
    # Sharded on a local Ray: the driver has Ray's fatal-signal handler, which aborted on TERM (exit -6).
    args = ["run", "--nodes", "300", "--regions", "2", "--ticks", "400", "--tick-interval-s", "0.1"]
    args += ["--no-ebpf", "--no-autonomy", "--runs-dir", str(tmp_path), "--run-id", "termed"]
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [str(BIN / "x0tta6bl4"), *args], env=cli_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err
        )
        ticks = tmp_path / "termed" / "ticks.jsonl"
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            if ticks.exists() and ticks.read_text().count("\n") >= 5:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        finally:
            proc.kill()
    stderr = err_path.read_text()
    assert code == 130, stderr[-3000:]
    assert "x0tta6bl4: interrupted" in stderr and "SIGTERM received" not in stderr
    assert "--resume termed" in stderr  # how to go on
    report = json.loads((tmp_path / "termed" / "report.json").read_text())
    assert report["status"] == "interrupted" and report["error"].startswith("KeyboardInterrupt")
    assert 5 <= len(report["timeline"]) < 400


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "nodes"),
        (["--nodes", "10", "--regions", "20"], "regions (20) cannot exceed nodes (10)"),
        (["--nodes", "abc"], "invalid int value"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["--mode", "psychic"], "invalid choice"),
        (["--serve-port", "0"], "serve_port"),
        (["--resume", "never-ran"], "no run to resume"),
        (["--resume", "../x"], "must be a plain name"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_starts(tmp_path, cli_env, args, message):
    proc = _run(["run", *args, "--runs-dir", str(tmp_path / "runs")], cli_env, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("faults:\n  - {type: meteor, node: 1, start_tick: 2}\n", "unknown fault type 'meteor'"),
        ("actions:\n  - {action: pray, node: 1, tick: 2}\n", "unknown action 'pray'"),
        ("nodes: 50\nfaults:\n  - {type: node_crash, node: 77, start_tick: 2}\n", "fault on node 77"),
        ("nodes: 50\nfaults:\n  - {type: link_degradation, node: 0, peer: 49, start_tick: 2}\n", "no link"),
        ("nodes: [1, 2\n", "not valid YAML"),
        ("colour: blue\n", "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_config_files_are_refused_with_the_reason(tmp_path, cli_env, yaml_text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    proc = _run(["run", "--config", str(config), "--runs-dir", str(tmp_path / "runs")], cli_env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_serve_forever_keeps_the_apps_up_behind_the_mtls_front_only(small_run):
    """After the run, `--serve-forever` opens the mTLS front; Serve's own port refuses callers around it.

    The session's shared run (tests/e2e/conftest.py) ran with `--serve-forever`; these are the
    answers it gave once its report was written, before SIGTERM stopped it.
    """
    front, err = small_run.front, small_run.proc.stderr
    health = front.health
    assert isinstance(health, requests.Response) and health.status_code == 200, (
        f"the front never answered: {health}; {err[-3000:]}"
    )
    assert health.json()["status"] == "ok"
    assert isinstance(front.rag_stats, requests.Response) and front.rag_stats.status_code == 200
    direct = front.direct
    assert isinstance(direct, requests.Response), direct
    assert direct.status_code == 401 and direct.json()["error"] == "unauthenticated"
    # No client SVID: the front hangs up.
    assert isinstance(front.anonymous, requests.exceptions.ConnectionError), front.anonymous
    assert small_run.proc.returncode == 0, err[-3000:]  # SIGTERM: a clean stop
    assert (small_run.runs_dir / "small" / "report.json").exists()
    assert f"serving through the mTLS front: https://localhost:{small_run.front_port}" in err
    assert "curl --cacert" in err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(temp_dir):
    """Kill the Ray head started with ``--temp-dir temp_dir`` and only it (``ray stop`` would stop every
    Ray on the machine): nothing of it is needed any more, so no graceful shutdown to wait for."""
    for _ in range(3):  # a dying raylet's children may still be forking
        for pid in pids_of_temp_dir(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _ask_at_once(env, *commands):
    """Run ``commands`` concurrently; their CompletedProcess each, in order."""
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    done = []
    for command, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return done


def test_the_job_runs_through_ray_job_submit_on_a_real_head_and_uses_its_declarative_serve_app(
    tmp_path, cli_env
):
    # The head runs with Ray token authentication; `ray job submit` and `ray list` carry the token,
    # and the job's driver (connect_ray through RAY_ADDRESS) inherits it from the head.
    # The Serve app was deployed declaratively (`serve deploy`, as a RayService does): the job uses it
    # as it is and leaves it running.
    token_file = tmp_path / "ray_auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    cli_env["RAY_AUTH_MODE"] = "token"
    cli_env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    port, dash, serve_port = _free_port(), _free_port(), _free_port()
    ray = str(BIN / "ray")
    temp_dir = tempfile.mkdtemp(prefix="x0job", dir="/tmp")  # short: Ray's socket paths
    start = subprocess.run(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            *worker_port_flags(),
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
            # Not the default 52365: the suite's own local Ray may hold it, and a head whose agent
            # cannot bind refuses every job ("No available agent to submit job").
            f"--dashboard-agent-listen-port={_free_port()}",
            "--disable-usage-stats",
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert start.returncode == 0, start.stderr
    address = f"http://127.0.0.1:{dash}"
    try:
        serve_config = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())
        serve_config["http_options"]["port"] = serve_port
        args = serve_config["applications"][0]["args"]
        args["anomaly"]["registry"] = str(REPO / "models" / "registry")
        args["rag"]["retriever"]["data_dir"] = str(tmp_path / "rag")
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_config))
        deploy = subprocess.run(
            [str(BIN / "serve"), "deploy", str(tmp_path / "serve.yaml"), "-a", address],
            env=cli_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stderr[-2000:]
        submit = subprocess.run(
            [
                ray,
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                str(REPO),
                "--",
                "python",
                "jobs/autonomy.py",
                "--nodes",
                "300",
                "--regions",
                "3",
                "--ticks",
                "30",
                "--no-ebpf",
                "--runs-dir",
                str(tmp_path),
                "--run-id",
                "submitted",
                "--serve-port",
                str(_free_port()),
                "--keep-mesh",
            ],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
        assert "succeeded" in submit.stdout.lower()
        report = json.loads((tmp_path / "submitted" / "report.json").read_text())
        assert len(report["timeline"]) == 30
        assert "f1" in report["summary"] and report["remediation"]["analyses"] >= 15
        assert report["serve_apps"] == {"app_name": "x0tta6bl4", "owner": "declarative"}
        # Three read-only questions to the head, asked at once (each CLI takes seconds to start).
        status, deployed, listed = _ask_at_once(
            cli_env,
            [str(BIN / "serve"), "status", "-a", address],
            [str(BIN / "serve"), "config", "-a", address],
            [ray, "list", "actors", "--address", address, "--filter", "state=ALIVE", "--format", "json",
             "--limit", "500"],
        )  # fmt: skip
        # Still the operator's: running, and `serve deploy`'s config is what the cluster reports.
        assert status.returncode == 0, status.stderr
        apps = yaml.safe_load(status.stdout).get("applications") or {}
        assert {name: app["status"] for name, app in apps.items()} == {"x0tta6bl4": "RUNNING"}
        assert deployed.returncode == 0 and "x0tta6bl4.serve.app:build_app" in deployed.stdout, (
            deployed.stderr
        )
        # What the dashboard shows: the controller and the shards by name in Ray's state API.
        assert listed.returncode == 0, listed.stderr
        names = {a.get("name") for a in json.loads(listed.stdout)}
        assert {"mapek-controller", "mesh-shard-0", "mesh-shard-2"} <= names
    finally:
        _stop_head(temp_dir)
