"""The platform's Ray token: one private file, made once, never printed; token mode set up by environment."""

import logging
import os
import stat
import subprocess
import sys

import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.security import ray_auth

_RAY_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", ray_auth.AUTH_SWITCH_ENV)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """A working directory and HOME of our own, and none of Ray's authentication variables.

    Afterwards the variables, and Ray's configuration in this process if Ray is imported, are
    back as they were, so a later test's Ray does not start in token mode.
    """
    before = ray_auth.auth_env_snapshot()
    for name in _RAY_VARS:
        monkeypatch.setenv(name, "")  # recorded, so whatever the test sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield tmp_path
    ray_auth.restore_auth_env(before)


def test_the_token_file_is_created_once_private_and_random(clean_env):
    path = ray_auth.ensure_token_file()
    assert path == clean_env / ".x0tta6bl4" / "security" / "ray_auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex
    assert ray_auth.ensure_token_file() == path and path.read_text().strip() == token  # generated once
    assert [p.name for p in path.parent.iterdir()] == ["ray_auth_token"]  # no temporary left behind
    other = ray_auth.ensure_token_file(clean_env / "elsewhere" / "token")
    assert other.read_text().strip() != token


def test_a_token_file_others_can_read_is_refused_without_showing_the_token(clean_env):
    path = ray_auth.ensure_token_file()
    token = path.read_text().strip()
    path.chmod(0o640)
    with pytest.raises(ray_auth.RayTokenError, match="readable by others") as err:
        ray_auth.ensure_token_file()
    assert isinstance(err.value, ConfigError) and token not in str(err.value)
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(ray_auth.RayTokenError, match="empty"):
        ray_auth.ensure_token_file()


def test_the_switch_is_on_by_default_and_refuses_unknown_words(clean_env, monkeypatch):
    assert ray_auth.auth_enabled()
    monkeypatch.setenv(ray_auth.AUTH_SWITCH_ENV, "off")
    assert not ray_auth.auth_enabled()
    monkeypatch.setenv(ray_auth.AUTH_SWITCH_ENV, "token")
    assert ray_auth.auth_enabled()
    monkeypatch.setenv(ray_auth.AUTH_SWITCH_ENV, "maybe")
    with pytest.raises(ConfigError, match="X0TTA6BL4_RAY_AUTH"):
        ray_auth.auth_enabled()


def test_token_mode_names_the_file_and_never_puts_the_token_in_the_environment(clean_env, caplog):
    caplog.set_level(logging.DEBUG)
    before = ray_auth.auth_env_snapshot()
    source = ray_auth.use_token_auth()
    token = source.read()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(source.path) and source.path.is_absolute()
    assert not any(token in value for value in os.environ.values())
    assert token not in repr(source) and token not in caplog.text
    ray_auth.use_no_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    ray_auth.restore_auth_env(before)  # what disconnect_ray does
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ


def test_a_configured_token_wins_and_a_missing_configured_file_is_an_error(clean_env, monkeypatch):
    named = clean_env / "cluster-token"
    named.write_text("abc123\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert ray_auth.join_candidates() == [ray_auth.TokenSource("file", named)]
    assert ray_auth.use_token_auth().path == named
    assert not (clean_env / ".x0tta6bl4").exists()  # no platform file made when one is configured
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert ray_auth.configured_source() == ray_auth.TokenSource("env")  # Ray's own precedence
    assert ray_auth.configured_source().read() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_env / "missing"))
    with pytest.raises(ray_auth.RayTokenError, match="cannot read the Ray token file"):
        ray_auth.join_candidates()


def test_joining_offers_existing_tokens_only(clean_env):
    assert ray_auth.join_candidates() == []  # nothing created just to join
    assert not (clean_env / ".x0tta6bl4").exists()
    ours = ray_auth.ensure_token_file()
    ray_default = clean_env / "home" / ".ray" / "auth_token"
    ray_default.parent.mkdir(parents=True)
    ray_default.write_text("ray-generated\n")
    assert [c.path for c in ray_auth.join_candidates()] == [ours, ray_default]


def test_the_command_prints_the_exports_but_not_the_token(clean_env):
    env = {k: v for k, v in os.environ.items() if k not in _RAY_VARS}
    proc = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4.security.ray_auth"],
        cwd=clean_env,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    path = clean_env / ".x0tta6bl4" / "security" / "ray_auth_token"
    assert proc.stdout.strip() == f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={path}"
    token = path.read_text().strip()
    assert token not in proc.stdout + proc.stderr
