"""`x0tta6bl4 train` refuses bad input with one line and exit status 2, before Ray or the mesh start."""

import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--strategy", "fedsgd"], "strategy: Input should be 'fedavg' or 'fedprox'"),
        (["--regions", "2", "--min-clients", "3"], "min_clients (3) cannot exceed regions (2)"),
        (["--registry", "{tmp}/a-file/registry"], "is not writable"),
        (["--rogue-supernode"], "rogue_supernode needs deployment"),
        (["--deployment", "--regions", "2", "--poison-region", "2"], "poison_region 2 is not a region"),
        (
            ["--deployment", "--max-update-norm-ratio", "0.5"],
            "max_update_norm_ratio: Input should be greater than 1",
        ),
        (["--deployment", "--ca-dir", "{tmp}/a-file/ca"], "deployment: cannot open the CA in"),
    ],
    ids=[
        "unknown-strategy",
        "min-clients-above-regions",
        "unwritable-registry",
        "rogue-without-deployment",
        "poison-region-out-of-range",
        "norm-ratio-not-above-1",
        "ca-dir-unusable",
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_ray_starts(args, expected, tmp_path, cli_env):
    (tmp_path / "a-file").write_text("a file where the registry directory would go\n")
    args = [a.format(tmp=tmp_path) for a in args]
    # Any attempt to reach Ray would fail differently (and slowly): nothing listens there.
    args += ["--ray-address", "127.0.0.1:9", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4.cli", "train", *args],
        env=cli_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("x0tta6bl4: error: "), proc.stderr
    assert expected in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()  # no mesh was started
