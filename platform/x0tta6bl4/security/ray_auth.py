"""Ray token authentication: the platform's token, token mode for this process, a probe of a cluster.

Ray 2.52+ turns token authentication on with ``RAY_AUTH_MODE=token`` in the environment of every
Ray process (GCS, raylets, dashboard, workers, drivers, ``ray job submit``). Each process loads its
token once, first from ``RAY_AUTH_TOKEN``, then from the file named by ``RAY_AUTH_TOKEN_PATH``, then
from ``~/.ray/auth_token``; servers reject gRPC calls without the right ``authorization: Bearer``
metadata (``UNAUTHENTICATED``) and HTTP requests to the dashboard with 401 (no token) or 403 (wrong
token). Every Ray process a driver starts inherits the driver's environment, so setting these
variables in ``os.environ`` before ``ray.init()`` covers the whole local cluster and its jobs.

The platform keeps its own token in :data:`DEFAULT_TOKEN_PATH` (relative to the working directory,
like the CA; 0600, created with :mod:`secrets` on first use) and points ``RAY_AUTH_TOKEN_PATH`` at it,
so the token itself never sits in an environment variable, a log line or an error message.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import stat
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from x0tta6bl4.durable import fsync_dir
from x0tta6bl4.security.errors import RayTokenError

log = logging.getLogger(__name__)

#: The platform's switch: unset or ``token`` turns Ray token authentication on; ``off`` leaves Ray
#: as it is configured (the benchmarks' baseline) and never joins a cluster it cannot authenticate.
AUTH_SWITCH_ENV = "X0TTA6BL4_RAY_AUTH"
#: Where the platform keeps its Ray token when neither ``RAY_AUTH_TOKEN`` nor ``RAY_AUTH_TOKEN_PATH``
#: names one (relative to the working directory; made absolute before children see it).
DEFAULT_TOKEN_PATH = Path(".x0tta6bl4") / "security" / "ray_auth_token"
#: Ray's own default token file, also accepted when joining a cluster (``ray get-auth-token --generate``).
RAY_DEFAULT_TOKEN_PATH = Path("~") / ".ray" / "auth_token"

_RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_OFF = {"off", "0", "false", "no", "disabled"}
_ON = {"", "token", "on", "1", "true", "yes"}


class ClusterAuth(enum.Enum):
    """What a cluster's GCS answered to a call without a token and to calls with the candidates."""

    #: accepts calls without a token: no authentication at all
    OPEN = "open"
    #: refuses calls without a token and accepted one of the candidates
    TOKEN_ACCEPTED = "token-accepted"
    #: refuses calls without a token and refused every candidate (or there was none)
    TOKEN_REFUSED = "token-refused"
    #: did not answer as a GCS (down, wrong port, TLS mismatch)
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class TokenSource:
    """Where a Ray token comes from; holds the place, never the token (safe to log and print)."""

    kind: str  # "env" (RAY_AUTH_TOKEN) or "file"
    path: Path | None = None

    def describe(self) -> str:
        """``RAY_AUTH_TOKEN`` or the file's path, for messages."""
        return "RAY_AUTH_TOKEN" if self.path is None else str(self.path)

    def read(self) -> str:
        """The token (first line, whitespace trimmed, as Ray reads it).

        Raises:
            RayTokenError: the variable or file is empty or the file cannot be read.
        """
        if self.path is None:
            value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        else:
            try:
                with open(self.path, encoding="utf-8") as fh:
                    value = fh.readline().strip()
            except OSError as exc:
                raise RayTokenError(f"cannot read the Ray token file {self.path}: {exc.strerror}") from None
        if not value:
            raise RayTokenError(f"the Ray token in {self.describe()} is empty")
        return value


@dataclass(frozen=True)
class ProbeResult:
    """A cluster's answer to :func:`probe_cluster`: its mode and the candidate it accepted."""

    auth: ClusterAuth
    source: TokenSource | None = None
    detail: str = ""


def auth_enabled() -> bool:
    """Whether the platform runs Ray with token authentication (``$X0TTA6BL4_RAY_AUTH``, default on).

    Raises:
        RayTokenError: the variable holds something other than on/off words.
    """
    value = os.environ.get(AUTH_SWITCH_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise RayTokenError(f"{AUTH_SWITCH_ENV} must be 'token' or 'off', not {value!r}")


def default_token_path() -> Path:
    """The platform's token file, absolute (from :data:`DEFAULT_TOKEN_PATH` and the working directory)."""
    return DEFAULT_TOKEN_PATH.absolute()


def ensure_token_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The platform's token file, created with a fresh 256-bit token (mode 0600) when missing.

    Creation is atomic and exclusive (written to a private temporary file, then hard-linked into
    place), so concurrent first uses agree on one token and nobody ever reads a partial file. An
    existing file is kept, after checking that it is a regular file of this user that nobody else
    can read.

    Args:
        path: the file (default :func:`default_token_path`).

    Raises:
        RayTokenError: the file exists but is not private, not this user's, or empty.
    """
    target = Path(path).absolute() if path is not None else default_token_path()
    if not target.exists():
        _create_token_file(target)
    _check_private(target)
    TokenSource("file", target).read()  # refuse an empty file now, not in Ray's C++ loader
    return target


def _create_token_file(target: Path) -> None:
    if not target.parent.exists():
        target.parent.mkdir(parents=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)  # exactly 0600, whatever the umask
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)  # fails when another process created it first: keep theirs
        except FileExistsError:
            return
        fsync_dir(target.parent)
        log.info("created a Ray token file at %s", target)
    finally:
        tmp.unlink(missing_ok=True)


def _check_private(path: Path) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise RayTokenError(f"cannot read the Ray token file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RayTokenError(f"the Ray token file {path} is not a regular file")
    if st.st_uid != os.getuid():
        raise RayTokenError(f"the Ray token file {path} belongs to another user (uid {st.st_uid})")
    if st.st_mode & 0o077:
        raise RayTokenError(
            f"the Ray token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
            "its token is no secret any more; delete the file to get a new one"
        )


def configured_source() -> TokenSource | None:
    """The token the user named: ``RAY_AUTH_TOKEN`` if set, else the file in ``RAY_AUTH_TOKEN_PATH``.

    Raises:
        RayTokenError: ``RAY_AUTH_TOKEN_PATH`` names a missing or empty file.
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return TokenSource("env")
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if named:
        source = TokenSource("file", Path(named).expanduser().absolute())
        source.read()
        return source
    return None


def join_candidates() -> list[TokenSource]:
    """Tokens to offer a cluster this process joins: the configured one alone, else the existing
    platform file and Ray's ``~/.ray/auth_token`` (never creates a file).

    Raises:
        RayTokenError: a configured or platform token file is unusable.
    """
    configured = configured_source()
    if configured is not None:
        return [configured]
    out: list[TokenSource] = []
    platform_file = default_token_path()
    if platform_file.exists():
        out.append(TokenSource("file", ensure_token_file(platform_file)))
    ray_file = RAY_DEFAULT_TOKEN_PATH.expanduser()
    if ray_file.is_file() and ray_file.stat().st_size > 0:
        out.append(TokenSource("file", ray_file))
    return out


def use_token_auth(source: TokenSource | None = None) -> TokenSource:
    """Put this process (and every process it starts from now on) in Ray token mode.

    Sets ``RAY_AUTH_MODE=token`` and, for a file, ``RAY_AUTH_TOKEN_PATH`` (absolute, so workers with
    another working directory find it); the token itself is never put in the environment. Call it
    before ``ray.init()`` starts or joins a cluster.

    Args:
        source: the token to use (default: the configured one, else the platform's file, created
            when missing).

    Raises:
        RayTokenError: the token is unusable.
    """
    chosen = source or configured_source() or TokenSource("file", ensure_token_file())
    chosen.read()
    os.environ["RAY_AUTH_MODE"] = "token"
    if chosen.path is not None and os.environ.get("RAY_AUTH_TOKEN_PATH") != str(chosen.path):
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(chosen.path)
    _reset_ray_token_cache()
    return chosen


def use_no_auth() -> None:
    """Leave token mode in this process (to join a cluster that runs without authentication)."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
        os.environ["RAY_AUTH_MODE"] = "disabled"
    _reset_ray_token_cache()


def auth_env_snapshot() -> dict[str, str | None]:
    """Ray's authentication variables of this process (for :func:`restore_auth_env`)."""
    return {name: os.environ.get(name) for name in _RAY_AUTH_VARS}


def restore_auth_env(snapshot: dict[str, str | None]) -> None:
    """Put Ray's authentication variables back as :func:`auth_env_snapshot` saw them."""
    for name, value in snapshot.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reset_ray_token_cache()


def _reset_ray_token_cache() -> None:
    """Make this process's Ray see the new variables, as Ray's own tests do.

    Ray reads ``RAY_AUTH_MODE`` into its C++ configuration once, when the first Ray call of the
    process touches it, and caches the first token it loads; both would keep a mode or token
    the environment no longer names. Skipped while connected: a live connection keeps its mode.
    """
    raylet = sys.modules.get("ray._raylet")
    ray_module = sys.modules.get("ray")
    if raylet is None or ray_module is None or ray_module.is_initialized():
        return
    raylet.AuthenticationTokenLoader.instance().reset_cache()
    raylet.Config.initialize("")  # re-reads every RAY_* variable, RAY_AUTH_MODE among them


def shell_exports(source: TokenSource) -> str:
    """The shell lines that give ``ray job submit`` and other Ray clients this token (never the token)."""
    if source.path is None:
        return "export RAY_AUTH_MODE=token  # the token is in RAY_AUTH_TOKEN"
    return f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={source.path}"


def probe_cluster(address: str, candidates: Sequence[TokenSource], timeout_s: float = 3.0) -> ProbeResult:
    """Ask a cluster's GCS whether it needs a token, and which candidate it accepts.

    One ``GetClusterId`` call without credentials, then one per candidate with its token as
    ``authorization: Bearer`` metadata. A cluster that answers the first call is :attr:`ClusterAuth.OPEN`:
    accepting any token proves nothing there. Uses TLS when ``RAY_USE_TLS`` is set, like Ray.

    Args:
        address: the GCS as ``host:port``.
        candidates: tokens to try, in order.
        timeout_s: per call.
    """
    import grpc  # type: ignore[import-untyped]

    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        chain, key, ca = (_read_bytes(f"RAY_TLS_{part}") for part in ("SERVER_CERT", "SERVER_KEY", "CA_CERT"))
        creds = grpc.ssl_channel_credentials(certificate_chain=chain, private_key=key, root_certificates=ca)
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    # GetClusterIdRequest has no fields: its encoding is empty, and the reply is not read, so the
    # probe needs no Ray import (and runs before this process's Ray reads its configuration).
    call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
    request = b""
    try:
        try:
            call(request, timeout=timeout_s)
            return ProbeResult(ClusterAuth.OPEN)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                return ProbeResult(ClusterAuth.UNREACHABLE, detail=str(exc.code().name))
        for source in candidates:
            metadata = (("authorization", f"Bearer {source.read()}"),)
            try:
                call(request, timeout=timeout_s, metadata=metadata)
                return ProbeResult(ClusterAuth.TOKEN_ACCEPTED, source)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    return ProbeResult(ClusterAuth.UNREACHABLE, detail=str(exc.code().name))
        return ProbeResult(ClusterAuth.TOKEN_REFUSED)
    finally:
        channel.close()


def _read_bytes(variable: str) -> bytes:
    path = os.environ.get(variable)
    if not path:
        raise RayTokenError(f"RAY_USE_TLS is set but {variable} is not")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RayTokenError(f"cannot read {variable} ({path}): {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m x0tta6bl4.security.ray_auth``: create the token file if needed, print the exports."""
    del argv
    try:
        source = configured_source() or TokenSource("file", ensure_token_file())
    except RayTokenError as exc:
        sys.stderr.write(f"x0tta6bl4: error: {exc}\n")
        return 2
    sys.stdout.write(shell_exports(source) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
