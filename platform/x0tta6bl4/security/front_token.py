"""The contract between the mTLS front and the app behind it: two headers and a shared secret.

The front forwards the SPIFFE ID it verified in :data:`PEER_ID_HEADER` and proves it is the
front with :data:`FRONT_TOKEN_HEADER`; the app believes the first only with the second. The
token lives in a 0600 file on the host that runs both (never in a config, a log or git).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from x0tta6bl4.durable import write_atomic
from x0tta6bl4.security.errors import CaError

#: Header carrying the verified SPIFFE ID to the app.
PEER_ID_HEADER = "X-X0tta6bl4-Peer-Id"
#: Header carrying the front's secret, without which the app ignores :data:`PEER_ID_HEADER`.
FRONT_TOKEN_HEADER = "X-X0tta6bl4-Front-Token"

_MIN_TOKEN_CHARS = 32


def load_or_create_token(path: str | os.PathLike[str]) -> str:
    """The front's secret in ``path``, created (0600, directory 0700) on first use."""
    p = Path(path)
    if p.exists():
        return load_token(p)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    write_atomic(p, token + "\n", mode=0o600)
    return token


def load_token(path: str | os.PathLike[str]) -> str:
    """The front's secret in ``path``; CaError when missing, too short or readable by others."""
    p = Path(path)
    try:
        if p.stat().st_mode & 0o077:
            raise CaError(f"{p} is readable by other users; it must be 0600")
        token = p.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaError(f"cannot read the front token {p}: {exc}") from None
    if len(token) < _MIN_TOKEN_CHARS:
        raise CaError(f"the front token in {p} is too short")
    return token


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of a presented front token with the expected one."""
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())
