"""The ``x0tta6bl4`` command line: run, train, serve, bench, telemetry, doctor, models, identity."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from x0tta6bl4 import __version__
from x0tta6bl4.errors import X0tta6bl4Error

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one readable line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


Handler = Callable[[argparse.Namespace], int]


def _cmd_run(args: argparse.Namespace) -> int:
    from x0tta6bl4.autonomy.job import main_from_args

    return main_from_args(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from x0tta6bl4.bench import run_suite

    return run_suite(args.suite, quick=args.quick, as_json=args.json)


def _cmd_telemetry(args: argparse.Namespace) -> int:
    from x0tta6bl4.telemetry.cli import telemetry_main

    return telemetry_main(args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from x0tta6bl4.telemetry.cli import doctor_main

    return doctor_main(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from x0tta6bl4.models.cli import models_main

    return models_main(args)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the README's option table)."""
    parser = _Parser(prog="x0tta6bl4", description="Self-healing mesh platform on Ray.")
    parser.add_argument("--version", action="version", version=f"x0tta6bl4 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from x0tta6bl4.autonomy.config import add_run_arguments
    from x0tta6bl4.bench import SUITES

    run = sub.add_parser("run", help="run the autonomy job on a local or existing Ray cluster")
    add_run_arguments(run)
    run.set_defaults(handler=_cmd_run)

    bench = sub.add_parser("bench", help="run a benchmark suite")
    bench.add_argument("suite", choices=list(SUITES), help="which suite")
    bench.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    bench.add_argument("--quick", action="store_true", help="reduced sizes (used by the tests)")
    bench.set_defaults(handler=_cmd_bench)

    tel = sub.add_parser("telemetry", help="live kernel telemetry of this host (eBPF or procfs)")
    tel.add_argument(
        "--seconds", type=float, default=10.0, help="how long to run (default 10; 0 = until Ctrl-C)"
    )
    tel.add_argument("--interval", type=float, default=1.0, help="poll interval in seconds (default 1)")
    tel.add_argument("--programs", default="all", help="comma-separated eBPF programs to load (default all)")
    tel.add_argument("--procfs", action="store_true", help="force the procfs fallback")
    tel.add_argument("--json", action="store_true", help="print one JSON line per interval")
    tel.set_defaults(handler=_cmd_telemetry)

    doc = sub.add_parser("doctor", help="explain whether eBPF telemetry can run here and how to fix it")
    doc.set_defaults(handler=_cmd_doctor)
    from x0tta6bl4.models.cli import add_models_arguments

    models = sub.add_parser("models", help="list, inspect and promote versions in the model registry")
    add_models_arguments(models)
    models.set_defaults(handler=_cmd_models)

    from x0tta6bl4.federated.cli import add_train_command

    add_train_command(sub)

    from x0tta6bl4.serve.cli import add_serve_command

    add_serve_command(sub)

    from x0tta6bl4.security.cli import add_identity_command, add_ledger_command

    add_identity_command(sub)
    add_ledger_command(sub)

    from x0tta6bl4.rag.cli import add_runbook_command

    add_runbook_command(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except X0tta6bl4Error as exc:
        sys.stderr.write(f"x0tta6bl4: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("x0tta6bl4: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
