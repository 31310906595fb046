"""x0tta6bl4.connect's environment settings and its port picker: read strictly, never a surprise."""

import socket

import pytest

from x0tta6bl4.connect import DASHBOARD_ENV, _dashboard_wanted, _ephemeral_ports, free_local_port
from x0tta6bl4.errors import ConfigError


@pytest.mark.parametrize(("value", "wanted"), [(None, True), ("on", True), ("OFF", False), (" 0 ", False)])
def test_the_dashboard_is_on_unless_the_environment_turns_it_off(monkeypatch, value, wanted):
    if value is None:
        monkeypatch.delenv(DASHBOARD_ENV, raising=False)
    else:
        monkeypatch.setenv(DASHBOARD_ENV, value)
    assert _dashboard_wanted() is wanted


def test_a_misspelt_dashboard_setting_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(DASHBOARD_ENV, "of")
    with pytest.raises(ConfigError, match=f"{DASHBOARD_ENV} must be on or off, not 'of'"):
        _dashboard_wanted()


def test_free_ports_are_bindable_and_outside_the_kernels_ephemeral_range():
    low, _high = _ephemeral_ports()
    ports = {free_local_port() for _ in range(20)}
    assert len(ports) > 1  # picked at random, not one port handed out again and again
    for port in ports:
        assert port < low or low <= 20_000
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_ports_taken_in_a_row_are_never_the_same_one():
    """A `ray start` names six ports at once: a repeat made ci fail ("used by other components")."""
    ports = [free_local_port() for _ in range(2_000)]
    assert len(set(ports)) == len(ports)
