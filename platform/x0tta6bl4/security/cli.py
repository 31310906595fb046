"""``x0tta6bl4 identity``: issue, rotate, revoke and inspect SVIDs, and print the trust bundle."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from x0tta6bl4.errors import ConfigError


def add_identity_command(sub: Any) -> None:
    """Register ``identity`` on the top-level subparsers."""
    p = sub.add_parser(
        "identity",
        help="SPIFFE identities from the embedded CA: issue, rotate, revoke, inspect, bundle",
        description="Manage X509-SVIDs of the embedded CA ($X0TTA6BL4_CA_DIR or .x0tta6bl4/security/ca).",
    )
    p.add_argument("--ca-dir", type=Path, help="the CA's directory (default $X0TTA6BL4_CA_DIR or the above)")
    actions = p.add_subparsers(dest="action", required=True)

    issue = actions.add_parser("issue", help="issue an SVID (key generated here, saved 0600)")
    issue.add_argument("id", help="SPIFFE ID, or <kind>[/<instance>] such as operator/alice")
    issue.add_argument(
        "--out", type=Path, help="directory for svid.pem, svid.key, bundle.pem (default ./<id path>)"
    )
    issue.add_argument("--ttl", type=int, help="lifetime in seconds (default: the CA's, 1 h)")
    issue.add_argument("--dns", action="append", default=[], help="add a DNS SAN (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="add an IP SAN (repeatable)")

    rotate = actions.add_parser("rotate", help="renew the SVID saved in a directory, or the CA's signing key")
    rotate.add_argument("--out", type=Path, help="directory of the SVID to renew")
    rotate.add_argument("--ttl", type=int, help="lifetime of the renewed SVID in seconds")
    rotate.add_argument("--authority", action="store_true", help="rotate the CA's signing authority instead")

    revoke = actions.add_parser("revoke", help="revoke an SVID (CRL) or a whole authority (bundle)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--svid", type=Path, help="directory or PEM file of the SVID to revoke")
    which.add_argument("--serial", help="serial number (hex) of the SVID to revoke")
    which.add_argument("--authority", help="fingerprint (or unique prefix) of an authority to drop")

    inspect = actions.add_parser("inspect", help="show an SVID's ID, validity and state")
    inspect.add_argument("svid", type=Path, help="SVID directory or PEM file")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    bundle = actions.add_parser("bundle", help="print the trust bundle")
    bundle.add_argument(
        "--format", choices=["pem", "jwks"], default="pem", help="output format (default pem)"
    )
    bundle.add_argument("--authorities", action="store_true", help="list the authorities instead")
    p.set_defaults(handler=identity_main)


def add_ledger_command(sub: Any) -> None:
    """Register ``ledger`` on the top-level subparsers."""
    p = sub.add_parser(
        "ledger",
        help="the signed audit ledger: show entries, verify chain, signatures and head",
        description="Read and verify the audit ledger ($X0TTA6BL4_LEDGER_DIR, else ledger/ beside the CA: "
        ".x0tta6bl4/security/ledger).",
    )
    p.add_argument("--ledger-dir", type=Path, help="the ledger's directory (default as above)")
    p.add_argument("--ca-dir", type=Path, help="the CA whose signers are trusted (default $X0TTA6BL4_CA_DIR)")
    actions = p.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="print entries (newest last)")
    show.add_argument("--kind", help="only entries of this kind (e.g. remediation.action)")
    show.add_argument("--since", type=int, default=0, help="first sequence number (default 0)")
    show.add_argument("--until", type=int, help="last sequence number (default: the end)")
    show.add_argument("--last", type=int, help="only the last N entries shown")
    show.add_argument("--json", action="store_true", help="one JSON entry per line (signatures included)")
    show.add_argument("--head", action="store_true", help="print only the current head SEQ:HASH")
    verify = actions.add_parser("verify", help="verify every entry; exit 1 naming the first bad one")
    verify.add_argument(
        "--against",
        help="a head published earlier, SEQ:HASH, or a run report (report.json) whose ledger range to check",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument(
        "--metrics-textfile",
        type=Path,
        help="also write the result as Prometheus metrics to this file (node_exporter's textfile collector)",
    )
    p.set_defaults(handler=ledger_main)


def _head_from(text: str) -> Any:
    from x0tta6bl4.security.ledger import LedgerHead

    path = Path(text)
    if ":" not in text or path.exists():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            return LedgerHead.parse(str(report["ledger"]["head"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"--against {text[:80]!r}: not SEQ:HASH nor a run report with a ledger range ({exc})"
            ) from None
    return LedgerHead.parse(text)


def ledger_main(args: argparse.Namespace) -> int:
    """Show or verify the ledger; verify exits 1 when any entry or the head fails."""
    from x0tta6bl4.security.ca import default_ca_dir
    from x0tta6bl4.security.ledger import Ledger, default_ledger_dir
    from x0tta6bl4.security.signing import SignatureVerifier

    ledger = Ledger(args.ledger_dir or default_ledger_dir(args.ca_dir))
    if not ledger.directory.is_dir():
        raise ConfigError(f"no ledger in {ledger.directory} (set --ledger-dir or $X0TTA6BL4_LEDGER_DIR)")
    out = sys.stdout
    if args.action == "show":
        if args.head:
            out.write(f"{ledger.current()}\n")
            return 0
        rows = []
        for _, entry in ledger.lines():
            if isinstance(entry, str):
                rows.append({"error": entry})
                continue
            seq = entry.get("seq")
            if not isinstance(seq, int) or seq < args.since or (args.until is not None and seq > args.until):
                continue
            if args.kind and entry.get("kind") != args.kind:
                continue
            rows.append(entry)
        if args.last is not None:
            rows = rows[-max(0, args.last) :] if args.last > 0 else []
        for entry in rows:
            if args.json:
                out.write(json.dumps(entry, sort_keys=True) + "\n")
            elif "error" in entry:
                out.write(f"!! {entry['error']}\n")
            else:
                data = json.dumps(entry.get("data", {}), sort_keys=True)
                out.write(
                    f"{entry['seq']:>6} {str(entry.get('time', ''))[:19]} {entry.get('kind', ''):<19} "
                    f"{entry.get('actor', '')}  {entry.get('subject', '')}  {data[:160]}\n"
                )
        return 0
    against = _head_from(args.against) if args.against else None
    report = ledger.verify(SignatureVerifier(args.ca_dir or default_ca_dir()), against)
    if args.metrics_textfile is not None:
        from x0tta6bl4.observability.metrics import write_textfile

        write_textfile(args.metrics_textfile)
    if args.json:
        out.write(json.dumps(report.to_dict(), indent=1) + "\n")
    elif report.ok:
        signers = ", ".join(f"{k} {v}" for k, v in sorted(report.signers.items()))
        out.write(
            f"ok: {report.entries} entries, head {report.head}, checked against {report.against}; {signers}\n"
        )
    else:
        out.write(f"FAILED after {report.entries} good entries: {report.problem}\n")
    return 0 if report.ok else 1


def _resolve_id(text: str, trust_domain: str) -> str:
    from x0tta6bl4.security.identity import resolve_workload_id

    return str(resolve_workload_id(text, trust_domain))


def _leaf(path: Path) -> Any:
    from cryptography import x509

    pem_path = path / "svid.pem" if path.is_dir() else path
    try:
        return x509.load_pem_x509_certificate(pem_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a certificate from {pem_path}: {exc}") from None


def identity_main(args: argparse.Namespace) -> int:
    """Run one ``identity`` action; ConfigError reaches ``cli.main`` (one line, exit 2)."""
    from x0tta6bl4.security.ca import EmbeddedCA
    from x0tta6bl4.security.svid import Svid

    ca = EmbeddedCA.open(args.ca_dir)
    out = sys.stdout
    record = _recorder(ca)
    if args.action == "issue":
        spiffe_id = _resolve_id(args.id, ca.trust_domain)
        target = args.out or Path(spiffe_id.split("://", 1)[1].split("/", 1)[1].replace("/", "-"))
        svid = ca.issue_svid(spiffe_id, args.ttl, args.dns, args.ip)
        svid.save(target)
        (target / "bundle.pem").write_bytes(ca.bundle().to_pem())
        record("svid.issue", str(svid.spiffe_id), {"serial": f"{svid.serial:x}", "ttl_s": args.ttl})
        out.write(f"{svid.spiffe_id} serial {svid.serial:x} until {svid.not_after.isoformat()}\n")
        out.write(f"  {target / 'svid.pem'}  {target / 'svid.key'} (0600)  {target / 'bundle.pem'}\n")
        return 0
    if args.action == "rotate":
        if args.authority:
            ident = ca.rotate()
            record("authority.rotate", ident, {})
            out.write(f"new signing authority {ident}\n")
            return 0
        if args.out is None:
            raise ConfigError("identity rotate needs --out DIR (an SVID directory) or --authority")
        old = Svid.load(args.out)
        leaf = old.leaf
        from cryptography import x509

        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        svid = ca.issue_svid(old.spiffe_id, args.ttl, dns, ips)
        svid.save(args.out)
        (args.out / "bundle.pem").write_bytes(ca.bundle().to_pem())
        record(
            "svid.rotate", str(svid.spiffe_id), {"serial": f"{svid.serial:x}", "previous": f"{old.serial:x}"}
        )
        out.write(f"{svid.spiffe_id} serial {svid.serial:x} until {svid.not_after.isoformat()}\n")
        return 0
    if args.action == "revoke":
        if args.authority:
            ca.remove_authority(args.authority)
            record("authority.remove", args.authority, {})
            out.write(f"authority {args.authority} removed; bundle sequence {ca.bundle().sequence}\n")
        elif args.serial:
            try:
                serial = int(args.serial, 16)
            except ValueError:
                raise ConfigError(f"--serial takes a hex serial number, got {args.serial[:40]!r}") from None
            ca.revoke(serial)
            record("svid.revoke", f"serial {serial:x}", {"serial": f"{serial:x}"})
            out.write(f"revoked serial {serial:x}\n")
        else:
            leaf = _leaf(args.svid)
            ca.revoke_svid(leaf)
            record("svid.revoke", f"serial {leaf.serial_number:x}", {"serial": f"{leaf.serial_number:x}"})
            out.write(f"revoked serial {leaf.serial_number:x}\n")
        return 0
    if args.action == "inspect":
        return _inspect(ca, args.svid, args.json)
    if args.action == "bundle":
        bundle = ca.bundle()
        if args.authorities:
            out.write(json.dumps(ca.authorities(), indent=1) + "\n")
        elif args.format == "jwks":
            out.write(json.dumps(bundle.to_jwks(), indent=1) + "\n")
        else:
            out.write(bundle.to_pem().decode())
        return 0
    raise ConfigError(f"unknown action {args.action}")


def _recorder(ca: Any) -> Any:
    """Appends the CA's decisions to the audit ledger beside it, signed by the CA's own identity."""
    from x0tta6bl4.security.ledger import authority_recorder

    def record(kind: str, subject: str, data: dict[str, Any]) -> None:
        authority_recorder(ca).record(kind, subject, data)

    return record


def _inspect(ca: Any, path: Path, as_json: bool) -> int:
    from x0tta6bl4.security.errors import PeerRejectedError
    from x0tta6bl4.security.tls import PeerVerifier, Revocations, spiffe_id_of

    leaf = _leaf(path)
    bundles = {ca.trust_domain: ca.bundle()}
    from cryptography.hazmat.primitives import serialization

    try:
        PeerVerifier(bundles, Revocations.load(ca.crl_path, bundles)).verify(
            leaf.public_bytes(serialization.Encoding.DER)
        )
        state = "valid"
    except PeerRejectedError as exc:
        state = f"{exc.reason}: {exc}"
    now = dt.datetime.now(dt.UTC)
    info = {
        "spiffe_id": str(spiffe_id_of(leaf)),
        "serial": format(leaf.serial_number, "x"),
        "not_before": leaf.not_valid_before_utc.isoformat(),
        "not_after": leaf.not_valid_after_utc.isoformat(),
        "remaining_s": int((leaf.not_valid_after_utc - now).total_seconds()),
        "issuer": leaf.issuer.rfc4514_string(),
        "state": state,
    }
    if as_json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
    else:
        for k, v in info.items():
            sys.stdout.write(f"{k:12s} {v}\n")
    return 0 if state == "valid" else 1
