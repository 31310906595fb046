"""Closed-loop HTTP load: N concurrent clients posting bodies for a fixed time, in a separate process."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


async def _drive(
    url: str,
    bodies: Sequence[bytes],
    content_type: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    extra_headers: dict[str, str] | None = None,
    svid_dir: str | None = None,
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connection_errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, ssl=_client_tls(svid_dir))
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"content-type": content_type, **(extra_headers or {})}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop = measure_from + duration_s

        async def client(i: int) -> None:
            nonlocal connection_errors
            j = i
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                try:
                    async with session.post(url, data=bodies[j % len(bodies)], headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientConnectionError:
                    # A closed keep-alive connection or a refused one: counted like wrk's socket
                    # errors, not fatal; the next request opens a new connection.
                    connection_errors += 1
                    j += concurrency
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    statuses[status] = statuses.get(status, 0) + 1
                j += concurrency

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - measure_from
    lat = np.asarray(latencies) * 1000.0
    ok = statuses.get(200, 0) + statuses.get(201, 0)
    return {
        "requests_per_s": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "requests": int(lat.size),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "connection_errors": connection_errors,
    }


def _client_tls(svid_dir: str | None) -> Any:
    """A TLS 1.3 client context presenting the SVID saved in ``svid_dir`` (with its bundle.pem), or False."""
    if svid_dir is None:
        return False
    from pathlib import Path

    from x0tta6bl4.security.bundle import TrustBundle
    from x0tta6bl4.security.svid import Svid
    from x0tta6bl4.security.tls import client_context

    svid = Svid.load(svid_dir)
    from cryptography import x509

    authorities = tuple(x509.load_pem_x509_certificates((Path(svid_dir) / "bundle.pem").read_bytes()))
    domain = svid.spiffe_id.trust_domain.name
    return client_context(svid, {domain: TrustBundle(domain, authorities, 0, 0)})


def _child(conn: Any) -> None:
    """The load process: one load per request received (None ends it); each answer or error sent back."""
    try:
        while (args := conn.recv()) is not None:
            try:
                conn.send(asyncio.run(_drive(*args)))
            except Exception as exc:  # report, never hang the parent
                conn.send({"error": repr(exc)})
    except (EOFError, OSError):  # the parent went away
        pass
    finally:
        conn.close()


class LoadProcess:
    """A child process that runs loads one after another (:func:`run_load`'s, without a process start
    per load); use it as a context manager."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child, args=(child,), daemon=True)
        self._proc.start()
        child.close()

    def run(
        self,
        url: str,
        bodies: Sequence[bytes],
        *,
        content_type: str = "application/json",
        concurrency: int = 32,
        duration_s: float = 10.0,
        warmup_s: float = 2.0,
        headers: dict[str, str] | None = None,
        svid_dir: str | None = None,
    ) -> dict[str, Any]:
        """One load, as :func:`run_load` describes (same arguments, result and errors)."""
        args = (url, list(bodies), content_type, concurrency, duration_s, warmup_s, headers, svid_dir)
        try:
            self._conn.send(args)
            if not self._conn.poll(duration_s + warmup_s + 180):
                self._proc.kill()
                raise RuntimeError(f"load against {url} did not finish")
            out: dict[str, Any] = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"load against {url} failed: the load process died") from None
        if "error" in out:
            raise RuntimeError(f"load against {url} failed: {out['error']}")
        if out["requests"] == 0 and out["connection_errors"]:
            errors = out["connection_errors"]
            raise RuntimeError(f"load against {url} failed: {errors} connection errors and no answer")
        return out

    def close(self) -> None:
        """End the child process (killed when it does not end within 10 s)."""
        with contextlib.suppress(OSError):  # it is gone already
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_load(
    url: str,
    bodies: Sequence[bytes],
    *,
    content_type: str = "application/json",
    concurrency: int = 32,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    headers: dict[str, str] | None = None,
    svid_dir: str | None = None,
) -> dict[str, Any]:
    """Post ``bodies`` (round robin) to ``url`` from ``concurrency`` clients for ``duration_s`` seconds.

    The clients run in a child process, so the caller's interpreter does not slow them (started for
    this load; :class:`LoadProcess` keeps one for several). Keep-alive connections, as real clients
    use; ``svid_dir`` (``svid.pem``, ``svid.key``, ``bundle.pem``) makes them mTLS clients of an
    ``https://`` URL; ``headers`` are added to every request.

    Returns:
        ``requests_per_s`` (answered 2xx per second), ``p50_ms``, ``p95_ms``, ``requests``,
        ``statuses`` and ``connection_errors`` (requests whose connection failed; they are
        not answers, so they only lower ``requests_per_s``).

    Raises:
        RuntimeError: the load process failed, or no request got an answer.
    """
    with LoadProcess() as load:
        return load.run(
            url,
            bodies,
            content_type=content_type,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            headers=headers,
            svid_dir=svid_dir,
        )
