"""Live streams per owner: nobody evicts another identity's streams; a full table refuses, not displaces."""

import pytest

from x0tta6bl4.serve._private.streams import StreamTable
from x0tta6bl4.serve.errors import RequestError
from x0tta6bl4.serve.snapshot import stream_key


def test_the_same_name_under_two_owners_is_two_streams():
    assert stream_key("spiffe://td/controller", "mapek") != stream_key("spiffe://td/operator/eve", "mapek")
    table = StreamTable()
    a = table.get(stream_key("spiffe://td/controller", "mapek"), object)
    b = table.get(stream_key("spiffe://td/operator/eve", "mapek"), object)
    assert a is not b
    assert table.get(stream_key("spiffe://td/controller", "mapek"), object) is a


def test_an_owner_at_its_cap_evicts_only_its_own_oldest_stream():
    table = StreamTable(max_per_owner=2)
    ctrl = table.get(stream_key("ctrl", "mapek"), object)
    for i in range(50):
        table.get(stream_key("eve", f"s{i}"), object)
    assert table.get(stream_key("ctrl", "mapek"), object) is ctrl
    assert len(table) == 3


def test_a_new_owner_beyond_the_limit_is_refused_until_one_goes_idle():
    now = [0.0]
    table = StreamTable(max_per_owner=1, max_owners=2, idle_owner_s=60, clock=lambda: now[0])
    ctrl = table.get(stream_key("ctrl", "mapek"), object)
    table.get(stream_key("eve", "x"), object)
    with pytest.raises(RequestError) as info:
        table.get(stream_key("mallory", "x"), object)
    assert info.value.status == 429
    now[0] = 50.0
    table.get(stream_key("ctrl", "mapek"), object)  # the controller keeps using its stream
    now[0] = 100.0
    table.get(stream_key("mallory", "x"), object)  # eve has been idle for 100 s: her slot is taken
    assert table.get(stream_key("ctrl", "mapek"), object) is ctrl
