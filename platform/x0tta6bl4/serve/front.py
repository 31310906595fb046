"""The mTLS front of the Serve apps, built from a ServeConfig (for `x0tta6bl4 serve` and `run`)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from x0tta6bl4.errors import ConfigError

if TYPE_CHECKING:
    from x0tta6bl4.security.front import BackgroundFront
    from x0tta6bl4.serve.config import ServeConfig

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_front_token(config: ServeConfig) -> str:
    """Make the gateway of ``config`` believe caller identities only from the front; the front's secret.

    The secret lives in ``front.token`` (0600) beside the CA; ``config.http.front_token_file`` then
    names it, so a request that reaches Serve's port around the front gets 401.

    Raises:
        ConfigError: Serve would listen beyond loopback (bind the front there instead).
    """
    from x0tta6bl4.security.front_token import load_or_create_token

    if config.http.host not in _LOOPBACK:
        raise ConfigError(
            f"Serve listens on loopback behind the mTLS front; bind the front instead (--front-host), "
            f"not Serve ({config.http.host})"
        )
    token_file = _ca_dir(config).parent / "front.token"
    token = load_or_create_token(token_file)
    config.http.front_token_file = str(token_file.resolve())
    return token


def build_front(config: ServeConfig) -> BackgroundFront | None:
    """The front of ``config``, not yet listening (``None`` when ``config.front.enabled`` is off).

    Call it before deploying: it points the gateway at the front's secret
    (:func:`require_front_token`), and a bad policy or CA fails before Ray starts.
    """
    from x0tta6bl4.security.authz import Policy
    from x0tta6bl4.security.front import BackgroundFront, MtlsFront
    from x0tta6bl4.security.identity import WorkloadKind, workload_id
    from x0tta6bl4.security.source import open_source

    if not config.front.enabled:
        return None
    policy = Policy.load(config.front.policy)
    token = require_front_token(config)
    ips = ["127.0.0.1"] + ([config.front.host] if _is_ip(config.front.host) else [])
    dns = [*config.front.dns_names, socket.gethostname()]
    source = open_source(workload_id(WorkloadKind.FRONT), _ca_dir(config), config.front.svid_ttl_s, dns, ips)
    upstream = f"http://127.0.0.1:{config.http.port}"
    front = MtlsFront(source, policy, upstream, token, max_body_bytes=config.http.score_max_bytes)
    return BackgroundFront(front, config.front.host, config.front.port)


def front_url(config: ServeConfig, port: int) -> str:
    """The HTTPS URL of the apps through a front listening on ``port``."""
    host = "localhost" if config.front.host in ("127.0.0.1", "0.0.0.0") else config.front.host
    return f"https://{host}:{port}{config.route_prefix.rstrip('/')}"


def curl_hint(url: str) -> str:
    """How an operator gets an SVID and calls the front with curl (printed by the commands)."""
    return (
        "an operator's SVID: x0tta6bl4 identity issue operator/$USER --out op; then "
        f"curl --cacert op/bundle.pem --cert op/svid.pem --key op/svid.key {url}/healthz"
    )


def _ca_dir(config: ServeConfig) -> Path:
    from x0tta6bl4.security.ca import default_ca_dir

    return Path(config.front.ca_dir) if config.front.ca_dir else default_ca_dir()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return text not in ("0.0.0.0", "::")
