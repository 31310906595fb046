"""SPIFFE IDs: the spec's rules are enforced, every workload kind has its ID, bad ones fail typed."""

import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.security.errors import InvalidSpiffeIdError
from x0tta6bl4.security.identity import (
    WorkloadKind,
    is_operator,
    kind_of,
    parse_spiffe_id,
    parse_trust_domain,
    workload_id,
)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http://x0tta6bl4.local/a",
        "SPIFFE://x0tta6bl4.local/a",
        "spiffe://",
        "spiffe:///a",
        "spiffe://Upper.case/a",
        "spiffe://td:8080/a",
        "spiffe://user@td/a",
        "spiffe://td/a//b",
        "spiffe://td/a/",
        "spiffe://td/./a",
        "spiffe://td/a/..",
        "spiffe://td/a b",
        "spiffe://td/a%20b",
        "spiffe://td/a?q=1",
        "spiffe://td/a#frag",
        "spiffe://td",
        "spiffe://td/" + "a" * 2100,
    ],
)
def test_ids_the_spec_forbids_are_refused_with_a_typed_error(text):
    with pytest.raises(InvalidSpiffeIdError):
        parse_spiffe_id(text)


def test_a_refused_id_is_a_config_error_so_the_cli_exits_2():
    with pytest.raises(ConfigError):
        parse_spiffe_id("spiffe://td")


def test_valid_ids_round_trip():
    sid = parse_spiffe_id("spiffe://example.org/ns/prod-1/sa_x.y")
    assert str(sid) == "spiffe://example.org/ns/prod-1/sa_x.y"
    assert sid.trust_domain.name == "example.org"


def test_every_workload_kind_gets_a_distinct_id_under_the_trust_domain():
    ids = set()
    for kind in WorkloadKind:
        instance = "r1" if kind.needs_instance else None
        sid = workload_id(kind, instance, "mesh.example")
        assert sid.trust_domain.name == "mesh.example"
        assert kind_of(sid) is kind
        ids.add(str(sid))
    assert len(ids) == len(WorkloadKind)
    assert str(workload_id("shard", "region-3")) == "spiffe://x0tta6bl4.local/shard/region-3"
    assert str(workload_id(WorkloadKind.SERVE_GATEWAY)) == "spiffe://x0tta6bl4.local/serve/gateway"


@pytest.mark.parametrize(
    ("kind", "instance"),
    [
        ("shard", None),
        ("controller", "two"),
        ("nope", None),
        ("operator", "a/b"),
        ("operator", ".."),
        ("operator", "x" * 200),
    ],
)
def test_bad_workload_names_are_refused(kind, instance):
    with pytest.raises(InvalidSpiffeIdError):
        workload_id(kind, instance)


def test_only_operator_ids_are_operators():
    assert is_operator(workload_id("operator", "alice"))
    assert not is_operator(workload_id("controller"))
    assert not is_operator(parse_spiffe_id("spiffe://x0tta6bl4.local/operator/alice/extra"))
    assert kind_of(parse_spiffe_id("spiffe://x0tta6bl4.local/elsewhere")) is None


def test_trust_domains_follow_the_spec():
    assert parse_trust_domain("spiffe://a.b/c").name == "a.b"
    for bad in ("", "A.b", "a b", "a" * 300):
        with pytest.raises(InvalidSpiffeIdError):
            parse_trust_domain(bad)
