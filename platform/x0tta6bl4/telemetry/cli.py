"""`x0tta6bl4 telemetry` (live host telemetry) and `x0tta6bl4 doctor` (why eBPF can or cannot run)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.jsonsafe import json_safe
from x0tta6bl4.telemetry.ebpf import EbpfError, load_program, parse_program_list, program_sources
from x0tta6bl4.telemetry.frame import FEATURES, TelemetryFrame
from x0tta6bl4.telemetry.source import HostTelemetry, TelemetryPollError, ebpf_blockers


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "—"
    if value == int(value) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.3f}"


def _table(frame: TelemetryFrame, telemetry: HostTelemetry, extra: dict[str, Any]) -> Any:
    from rich.table import Table

    procfs_cols = set(telemetry.columns_from_procfs())
    title = f"{frame.host} node {int(frame.node_ids[0])} — source {frame.source}, poll {frame.tick}"
    table = Table(title=title, title_justify="left")
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("from")
    from x0tta6bl4.telemetry.source import EBPF_FEATURES

    for name in FEATURES:
        origin = (
            "ebpf"
            if frame.source == "ebpf" and name in EBPF_FEATURES and name not in procfs_cols
            else "procfs"
        )
        table.add_row(name, _fmt(float(frame.column(name)[0])), origin)
    if frame.source == "ebpf":
        table.add_section()
        for key in (
            "events_per_s",
            "lost_events",
            "rtt_p50_ms",
            "rtt_p99_ms",
            "runqueue_latency_p50_ms",
            "socket_rx_bytes_per_s",
            "socket_tx_bytes_per_s",
        ):
            if key in extra:
                table.add_row(key, _fmt(float(extra[key])), "ebpf")
        reasons = sorted(extra.get("drop_reasons", {}).items(), key=lambda kv: -kv[1])[:5]
        for reason, rate in reasons:
            table.add_row(f"drops/s {reason}", _fmt(rate), "ebpf")
    return table


def telemetry_main(args: argparse.Namespace) -> int:
    """Poll this host every ``args.interval`` s for ``args.seconds`` s (0: until Ctrl-C): table or JSON."""
    if args.interval <= 0:
        raise ConfigError(f"--interval must be > 0, got {args.interval}")
    if args.seconds < 0:
        raise ConfigError(f"--seconds must be >= 0, got {args.seconds}")
    programs = parse_program_list(args.programs)
    telemetry = HostTelemetry(0, programs=programs, force_procfs=args.procfs)
    if telemetry.ebpf_off_reason:
        sys.stderr.write(f"x0tta6bl4 telemetry: eBPF off, using procfs: {telemetry.ebpf_off_reason}\n")
    if telemetry.ebpf is not None:
        for name, err in telemetry.ebpf.errors.items():
            sys.stderr.write(f"x0tta6bl4 telemetry: {name}: {err}\n")
    start = time.monotonic()
    deadline = start + args.seconds if args.seconds > 0 else math.inf
    live = None
    try:
        if not args.json:
            from rich.live import Live

            live = Live(auto_refresh=False)
            live.start()
        next_at = start + args.interval
        while next_at <= deadline + 1e-6:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += args.interval
            try:
                frame = telemetry.poll()
            except TelemetryPollError as exc:
                sys.stderr.write(f"x0tta6bl4 telemetry: {exc}\n")
                continue
            extra = telemetry.extra_features()
            if args.json:
                row = frame.to_dict()["nodes"][0]
                line = {
                    "tick": frame.tick,
                    "time": time.time(),
                    "host": frame.host,
                    "source": frame.source,
                    "features": {k: v for k, v in row.items() if k != "node_id"},
                    "extra": extra,
                }
                sys.stdout.write(json.dumps(json_safe(line), allow_nan=False) + "\n")
                sys.stdout.flush()
            elif live is not None:
                live.update(_table(frame, telemetry, extra), refresh=True)
    except KeyboardInterrupt:
        if args.seconds > 0:
            raise
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python's exit flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if live is not None:
            live.stop()
        telemetry.close()
    return 0


def doctor_main(args: argparse.Namespace) -> int:
    """List what blocks eBPF here with fix commands, then try every program; 0 when all load."""
    blockers = ebpf_blockers()
    print("eBPF prerequisites:")
    if not blockers:
        print("  ok: privileges, tracefs, BCC and kernel headers are in place")
    for b in blockers:
        print(f"  BLOCKED [{b.check}] {b.reason}")
        print(f"      fix: {b.fix}")
    print("eBPF programs:")
    refused = 0
    for source in program_sources(None):
        try:
            program = load_program(source)
        except EbpfError as exc:
            refused += 1
            print(f"  refused {source.name}: {type(exc).__name__}: {exc.reason}")
            continue
        skipped = (
            f"; optional tracepoints absent: {', '.join(program.skipped_tracepoints)}"
            if (program.skipped_tracepoints)
            else ""
        )
        print(f"  ok      {source.name}: attached to {', '.join(sorted(program.handlers))}{skipped}")
        program.close()
    _print_tls_groups()
    return 0 if not blockers and not refused else 1


def _print_tls_groups() -> None:
    """Which key-exchange groups the mTLS front can negotiate here (one real handshake per group)."""
    import tempfile

    from x0tta6bl4.security.ca import EmbeddedCA
    from x0tta6bl4.security.identity import WorkloadKind, workload_id
    from x0tta6bl4.security.tls import key_exchange_groups

    with tempfile.TemporaryDirectory(prefix="x0doctor-") as d:
        ca = EmbeddedCA.open(d)
        groups = key_exchange_groups(
            ca.issue_svid(workload_id(WorkloadKind.FRONT)), {ca.trust_domain: ca.bundle()}
        )
    import ssl

    print(f"mTLS key exchange ({ssl.OPENSSL_VERSION}, TLS 1.3):")
    for group, ok in groups.items():
        print(f"  {'ok     ' if ok else 'absent '} {group}")
    if not groups.get("X25519MLKEM768"):
        print("      the post-quantum hybrid needs OpenSSL 3.5+ under Python's ssl; classical X25519 is used")
