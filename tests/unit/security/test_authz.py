"""Route policy: first matching rule decides, IDs match by segment patterns, anything unlisted is refused."""

import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.security.authz import DEFAULT_POLICY_PATH, Policy, authorise, matches
from x0tta6bl4.security.errors import AuthorizationError

OP = "spiffe://x0tta6bl4.local/operator/alice"
CTRL = "spiffe://x0tta6bl4.local/controller"


def allowed(policy, who, method, path):
    try:
        authorise(policy, who, method, path)
    except AuthorizationError:
        return False
    return True


def test_patterns_match_whole_segments():
    assert matches("spiffe://td/operator/*", "spiffe://td/operator/alice")
    assert not matches("spiffe://td/operator/*", "spiffe://td/operator/alice/x")
    assert not matches("spiffe://td/operator/*", "spiffe://td/operator/")
    assert matches("/v1/**", "/v1/rag/query") and matches("/v1/**", "/v1")
    assert not matches("/v1/**", "/v10/x")
    assert not matches("spiffe://td/a.b", "spiffe://td/aXb")  # dots are literal


def test_the_shipped_policy_keeps_runbook_writes_for_operators():
    policy = Policy.load(DEFAULT_POLICY_PATH)
    assert allowed(policy, OP, "POST", "/v1/rag/documents")
    assert not allowed(policy, CTRL, "POST", "/v1/rag/documents")
    assert allowed(policy, CTRL, "POST", "/v1/anomaly/score")
    assert not allowed(policy, "spiffe://x0tta6bl4.local/shard/r1", "POST", "/v1/anomaly/score")
    assert not allowed(policy, "spiffe://partner.example/operator/alice", "POST", "/v1/rag/query")
    assert allowed(policy, "spiffe://x0tta6bl4.local/shard/r1", "GET", "/healthz")
    assert not allowed(policy, OP, "GET", "/admin")


def test_methods_narrow_a_rule_and_the_next_rule_may_decide():
    policy = Policy.model_validate(
        {
            "rules": [
                {"path": "/x", "methods": ["get"], "allow": [CTRL]},
                {"path": "/x", "allow": [OP]},
            ]
        }
    )
    assert allowed(policy, CTRL, "GET", "/x") and not allowed(policy, CTRL, "POST", "/x")
    assert allowed(policy, OP, "POST", "/x")


@pytest.mark.parametrize(
    "text",
    [
        "rules: [{path: x, allow: []}]",
        "rules: [{path: /x, allow: [http://a/b]}]",
        "rules: [{path: /x, methods: [FETCH], allow: []}]",
        "rules: [{path: /x, allow: [], extra: 1}]",
        "rules: [",
        "[]",
    ],
)
def test_invalid_policies_are_one_config_error(tmp_path, text):
    path = tmp_path / "authz.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        Policy.load(path)


def test_a_missing_policy_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Policy.load(tmp_path / "none.yaml")
