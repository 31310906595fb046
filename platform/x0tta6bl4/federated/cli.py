"""`x0tta6bl4 train`: federated GraphSAGE + LoRA training over the mesh regions with Flower."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.federated.config import add_train_arguments, config_from_args
from x0tta6bl4.models.registry import RegistryError

EXIT_FAILED = 1

HELP = "federated training of the anomaly detector (Flower, one client per mesh region)"


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` command to the top-level parser's subparsers.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers`` returned.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser("train", help=HELP, description=HELP)
    add_train_arguments(parser)
    parser.set_defaults(handler=train_cli)
    return parser


def train_cli(args: argparse.Namespace) -> int:
    """Validate, train, write the registry version, print the report.

    Bad input (ConfigError, RegistryError) propagates to the caller, which prints one line
    and exits 2; a run that fails once started (too few accepted client updates, a
    deployment process or its ServerApp failing) prints one line and returns 1.
    """
    config = config_from_args(args)  # before the heavy imports (torch, flwr): bad flags fail fast
    from x0tta6bl4.federated.report import print_result
    from x0tta6bl4.federated.run import train_main

    try:
        result = train_main(config)
    except (ConfigError, RegistryError):
        raise
    except X0tta6bl4Error as exc:
        from x0tta6bl4.federated.deployment import DeploymentError
        from x0tta6bl4.federated.outcome import FederationFailedError, TooFewRepliesError

        if not isinstance(exc, TooFewRepliesError | DeploymentError | FederationFailedError):
            raise
        sys.stderr.write(f"x0tta6bl4 train: failed: {exc}\n")
        return EXIT_FAILED
    print_result(result, as_json=bool(getattr(args, "print_json", False)))
    return 0
