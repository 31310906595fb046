"""`x0tta6bl4 models list|show|promote`: inspect the model registry and promote a version for Serve."""

from __future__ import annotations

import argparse
import json
from typing import Any

from x0tta6bl4.models.registry import (
    REGISTRY_ENV,
    ModelRegistry,
    RegistryError,
    UnservableVersionError,
    check_servable,
    default_registry_uri,
)
from x0tta6bl4.models.versions import ModelVersion, check_model_name, check_version_id


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``list``, ``show`` and ``promote`` subcommands to the ``models`` command's parser.

    Args:
        parser: The parser of ``x0tta6bl4 models``; its subparsers use the same parser class.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        metavar="URI",
        default=None,
        help=f"registry path or fsspec URI (default ${REGISTRY_ENV}, else models/registry)",
    )
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="{list,show,promote,sign}")

    ls = sub.add_parser("list", parents=[common], help="list models, or the versions of one model")
    ls.add_argument("--model", metavar="NAME", help="list this model's versions (default: all models)")
    ls.add_argument("--json", action="store_true", help="print JSON on stdout")

    show = sub.add_parser("show", parents=[common], help="verify a version and print its manifest and card")
    show.add_argument("model", help="model name")
    show.add_argument("version", nargs="?", help="version id (default: the promoted one, else the latest)")
    show.add_argument("--json", action="store_true", help="print JSON on stdout")

    promote = sub.add_parser(
        "promote", parents=[common], help="verify a version (files and signature) and make Serve use it"
    )
    promote.add_argument("model", help="model name")
    promote.add_argument("version", help="version id, e.g. v0003-20260101T120000")
    promote.add_argument("--as", dest="actor", default="operator/local", help="who promotes (ledger entry)")

    sign = sub.add_parser(
        "sign", parents=[common], help="sign a version (e.g. one written before signing existed)"
    )
    sign.add_argument("model", help="model name")
    sign.add_argument("version", help="version id")
    sign.add_argument("--as", dest="actor", default="trainer", help="signing identity (default: trainer)")


def _record(v: ModelVersion, promoted: str | None) -> dict[str, Any]:
    return {
        "model": v.model,
        "version": v.version,
        "created_at": v.created_at.isoformat(),
        "parent": v.parent,
        "promoted": v.version == promoted,
        "metrics": dict(v.metrics),
        "uri": v.uri,
    }


def _fmt_metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    items = [(k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit])
    return text + (" …" if len(items) > limit else "")


def _list(registry: ModelRegistry, model: str | None, as_json: bool) -> int:
    if model is None:
        rows = []
        for name in registry.models():
            versions = registry.versions(name)
            promoted = registry.promoted_id(name)
            rows.append(
                {
                    "model": name,
                    "versions": len(versions),
                    "latest": versions[-1].version if versions else None,
                    "promoted": promoted,
                }
            )
        if as_json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no models in {registry.uri}")
        else:
            for row in rows:
                plural = "" if row["versions"] == 1 else "s"
                print(
                    f"{row['model']:<24} {row['versions']:>4} version{plural}  latest {row['latest'] or '-'}"
                    f"  promoted {row['promoted'] or '-'}"
                )
        return 0

    check_model_name(model)
    promoted_id = registry.promoted_id(model)
    records = [_record(v, promoted_id) for v in registry.versions(model)]
    if as_json:
        print(json.dumps(records, indent=2))
    elif not records:
        print(f"model {model} has no versions in {registry.uri}")
    else:
        for r in records:
            mark = "*" if r["promoted"] else " "
            print(f"{mark} {r['version']}  {r['created_at']}  {_fmt_metrics(r['metrics'])}")
    return 0


def _show(registry: ModelRegistry, model: str, version: str | None, as_json: bool) -> int:
    check_model_name(model)
    promoted = registry.promoted_id(model)
    if version is None:
        latest = registry.latest(model)
        version = promoted or (latest.version if latest else None)
        if version is None:
            raise RegistryError(f"model {model} has no versions in {registry.uri}")
    check_version_id(version)
    loaded = registry.load(model, version, servable=False)  # shown even when it cannot serve
    record = _record(loaded.version, promoted)
    try:
        check_servable(f"{model} version {version}", loaded.tensors, loaded.metrics, loaded._manifest)
        record["servable"] = "yes"
    except UnservableVersionError as exc:
        record["servable"] = f"no: {exc}"
    record["tensors"] = {
        n: {"shape": list(t.shape), "dtype": str(t.dtype)} for n, t in loaded.tensors.items()
    }
    record["spec"] = loaded.spec
    record["files"] = list(loaded.files)
    record["signature"] = _signature_state(registry, model, version)
    if as_json:
        record["card"] = loaded.card
        print(json.dumps(record, indent=2, default=str))
        return 0
    print(f"{model} {version}{'  (promoted)' if record['promoted'] else ''}  verified")
    print(f"  uri       {record['uri']}")
    print(f"  created   {record['created_at']}")
    print(f"  parent    {record['parent'] or '-'}")
    print(f"  signature {record['signature']}")
    print(f"  servable  {record['servable']}")
    for key, value in record["metrics"].items():
        print(f"  metric    {key} = {value}")
    for name, info in record["tensors"].items():
        print(f"  tensor    {name} {tuple(info['shape'])} {info['dtype']}")
    for path in record["files"]:
        print(f"  file      {path}")
    print()
    print(loaded.card.rstrip())
    return 0


def models_main(args: argparse.Namespace) -> int:
    """Run ``x0tta6bl4 models list|show|promote``; failures raise RegistryError or ConfigError."""
    registry = ModelRegistry(args.registry or default_registry_uri())
    command: str = args.models_command
    if command == "list":
        return _list(registry, args.model, args.json)
    if command == "show":
        return _show(registry, args.model, args.version, args.json)
    check_model_name(args.model)
    check_version_id(args.version)
    from x0tta6bl4.models.signing import check_signature, sign_version
    from x0tta6bl4.security.provenance import ProvenancePolicy

    policy = ProvenancePolicy()
    audit = policy.recorder(args.actor)
    subject = f"{args.model}/{args.version}"
    if command == "sign":
        registry.get(args.model, args.version)
        signed_as = sign_version(registry, args.model, args.version, audit.signer)
        audit.record("model.train", subject, {"registry": registry.uri, "signed_later": True})
        print(f"signed {subject} as {signed_as}")
        return 0
    try:
        before = registry.promoted_id(args.model)
    except RegistryError:  # an unreadable PROMOTED.json must not block promoting a good version
        before = None
    signer_id = check_signature(registry, args.model, args.version, policy)
    registry.promote(args.model, args.version)
    audit.record(
        "model.promote", subject, {"registry": registry.uri, "signed_by": signer_id, "previous": before}
    )
    print(
        f"promoted {args.model} {args.version} (signed by {signer_id})"
        + (f" (was {before})" if before else "")
    )
    return 0


def _signature_state(registry: ModelRegistry, model: str, version: str) -> str:
    """``signed by <id>`` or ``refused: <why>`` under this machine's provenance policy."""
    from x0tta6bl4.models.signing import UntrustedVersionError, check_signature
    from x0tta6bl4.security.provenance import ProvenancePolicy

    try:
        return f"signed by {check_signature(registry, model, version, ProvenancePolicy())}"
    except UntrustedVersionError as exc:
        return f"refused ({exc.reason}): {exc}"
