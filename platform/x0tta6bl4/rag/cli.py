"""``x0tta6bl4 runbook``: sign runbooks as an operator, check a signed runbook before it is ingested, and
measure how well the retriever ranks the runbooks of labelled incidents."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from x0tta6bl4.errors import ConfigError

#: Largest runbook file the command reads (the retriever's own limit is 200,000 characters).
MAX_RUNBOOK_BYTES = 1 << 20


def add_runbook_command(sub: Any) -> None:
    """Register ``runbook`` on the top-level subparsers."""
    p = sub.add_parser(
        "runbook",
        help="sign runbooks (operators), verify signed ones, measure retrieval on labelled incidents",
        description="Runbooks drive remediation: the controller acts only on runbooks whose signature "
        "verifies. `sign` writes the POST /v1/rag/documents body with the signature.",
    )
    p.add_argument("--ca-dir", type=Path, help="the CA (default $X0TTA6BL4_CA_DIR or .x0tta6bl4/security/ca)")
    actions = p.add_subparsers(dest="action", required=True)
    sign = actions.add_parser("sign", help="sign runbook Markdown files; print the ingest body")
    sign.add_argument("files", nargs="+", type=Path, help="runbook files (front matter + Markdown)")
    sign.add_argument(
        "--as", dest="signer", default="operator/local", help="signing identity (operator/NAME)"
    )
    sign.add_argument("--out", type=Path, help="write the JSON body here instead of stdout")
    verify = actions.add_parser("verify", help="check the signatures of an ingest body written by sign")
    verify.add_argument("body", type=Path, help="the JSON body")
    ev = actions.add_parser(
        "eval",
        help="recall@k and MRR of the fault runbooks on the labelled incidents",
        description="Ask the retriever for every labelled incident of a split (uncached) and count, as "
        "`bench serve` does, whether a passage of the incident's fault type is among the k answered.",
    )
    ev.add_argument(
        "--split",
        choices=["train", "test", "all"],
        default="train",
        help="incidents to ask (default train: tune on it; report test)",
    )
    ev.add_argument("--k", type=int, default=3, help="passages per incident (default 3)")
    ev.add_argument(
        "--data-dir",
        type=Path,
        help="measure this store, ingested documents included (default: the packaged runbooks in a "
        "fresh temporary store)",
    )
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=runbook_main)


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_RUNBOOK_BYTES:
            raise ConfigError(f"{path} is over {MAX_RUNBOOK_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _eval(args: argparse.Namespace) -> int:
    """Print recall@k and MRR, overall and per fault type."""
    from x0tta6bl4.rag.config import RetrieverConfig
    from x0tta6bl4.rag.evaluation import evaluate_retrieval
    from x0tta6bl4.rag.retriever import Retriever

    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    retriever = None
    if args.data_dir is not None:
        if not args.data_dir.is_dir():
            raise ConfigError(f"--data-dir {args.data_dir} is not a directory")
        retriever = Retriever.open(RetrieverConfig(data_dir=args.data_dir, sign_packaged_as=None))
    split = None if args.split == "all" else args.split
    result = evaluate_retrieval(retriever, split=split, k=args.k)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
        return 0
    rows = [("all", result.overall), *result.by_fault.items()]
    sys.stdout.write(
        f"split {args.split}, k={result.k}\n{'fault type':<18} {'n':>4} {'recall@k':>9} {'MRR':>6}\n"
    )
    for name, score in rows:
        sys.stdout.write(f"{name:<18} {score.incidents:>4} {score.recall_at_k:>9.3f} {score.mrr:>6.3f}\n")
    return 0


def runbook_main(args: argparse.Namespace) -> int:
    """Sign, verify or eval; bad input is a ConfigError (one line, exit 2), a failed check exits 1."""
    if args.action == "eval":
        return _eval(args)
    from x0tta6bl4.rag.errors import RetrievalInputError
    from x0tta6bl4.rag.provenance import document_claim
    from x0tta6bl4.rag.store import parse_document
    from x0tta6bl4.security.provenance import RUNBOOK_CONTEXT, ProvenanceConfig, ProvenancePolicy
    from x0tta6bl4.security.signing import SignatureError

    policy = ProvenancePolicy(ProvenanceConfig(ca_dir=str(args.ca_dir) if args.ca_dir else None))
    if args.action == "sign":
        signer = policy.signer(args.signer)
        documents: list[dict[str, Any]] = []
        for path in args.files:
            text = _read(path)
            try:
                doc = parse_document(text, len(documents), MAX_RUNBOOK_BYTES, 120, 0)
            except RetrievalInputError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            sig = signer.sign(document_claim(doc), RUNBOOK_CONTEXT)
            documents.append({"text": text, "signature": sig.to_dict()})
            sys.stderr.write(f"signed {doc.id} (action {doc.action}) as {signer.spiffe_id}\n")
        body = json.dumps({"documents": documents}, indent=1) + "\n"
        if args.out:
            args.out.write_text(body, encoding="utf-8")
        else:
            sys.stdout.write(body)
        return 0
    try:
        body = json.loads(_read(args.body))
        items: list[Any] = body["documents"]
        if not isinstance(items, list):
            raise TypeError("documents must be a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{args.body}: not an ingest body ({exc})") from None
    failed = 0
    for i, item in enumerate(items):
        try:
            doc = parse_document(item["text"], i, MAX_RUNBOOK_BYTES, 120, 0)
            signer_id = policy.check_runbook(item.get("signature"), document_claim(doc))
            sys.stdout.write(f"ok {doc.id}: signed by {signer_id}\n")
        except (SignatureError, RetrievalInputError, KeyError, TypeError, AttributeError) as exc:
            failed += 1
            reason = getattr(exc, "reason", type(exc).__name__)
            sys.stdout.write(f"FAILED document {i}: {reason}: {exc}\n")
    return 1 if failed else 0
