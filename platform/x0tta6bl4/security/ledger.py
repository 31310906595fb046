"""The signed audit ledger: append-only, hash-chained, durable, each entry hybrid-signed by its writer.

Layout of the ledger directory::

    entries.jsonl        one JSON entry per line (fsynced on every append)
    head.json            the last head published: seq, hash, time, signed (rewritten atomically)
    signers/<fp>.pem     each signer's certificate, by SHA-256 fingerprint (entries name it)

Each entry's ``hash`` is the SHA-256 of its canonical body, which includes the previous
entry's hash (``prev``) and its sequence number, so an edit, a removal or a reordering breaks
the chain at the first entry touched; the body is signed with the writer's
:class:`~x0tta6bl4.security.signing.Signer` (Ed25519 and ML-DSA-65, both checked), and the
signer's SPIFFE ID must be the entry's ``actor``, so a forged entry fails even when its hash
is right. A truncated tail is found against a head published earlier (``head.json``, or the
range a run report recorded). Appends from several processes are serialised by a file lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from filelock import FileLock

from x0tta6bl4.durable import append_synced, fsync_file, write_atomic
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.jsonsafe import json_safe
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.security.signing import HybridSignature, SignatureError, SignatureVerifier, Signer

ENTRIES = "entries.jsonl"
HEAD = "head.json"
GENESIS = "0" * 64
ENTRY_CONTEXT = "ledger-entry"
HEAD_CONTEXT = "ledger-head"

#: Ledger metrics: appends, verifications and what they found.
_LEDGER = domain_metrics("ledger")
#: An entry's ``data`` is bounded: the ledger records decisions, not payloads.
MAX_DATA_BYTES = 16 << 10
#: Where the last entry is looked for when appending (an entry is about 6 kB).
_TAIL_BYTES = 256 << 10

#: The kinds of entry the platform writes (others are refused, so typos never enter the record).
KINDS = frozenset(
    {
        "svid.issue",
        "svid.rotate",
        "svid.revoke",
        "authority.rotate",
        "authority.remove",
        "model.train",
        "model.promote",
        "model.refused",
        "thresholds.push",
        "runbook.ingest",
        "runbook.refused",
        "remediation.action",
        "run.start",
        "run.end",
    }
)


def default_ledger_dir(ca_dir: str | os.PathLike[str] | None = None) -> Path:
    """``$X0TTA6BL4_LEDGER_DIR`` when set, otherwise ``ledger`` beside the CA's directory.

    With the default CA (``.x0tta6bl4/security/ca``) that is ``.x0tta6bl4/security/ledger``: a
    ledger always pairs with the CA whose signers wrote it.
    """
    env = os.environ.get("X0TTA6BL4_LEDGER_DIR")
    if env:
        return Path(env)
    from x0tta6bl4.security.ca import default_ca_dir

    return Path(ca_dir if ca_dir is not None else default_ca_dir()).parent / "ledger"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


_BODY_KEYS = ("seq", "time", "kind", "actor", "subject", "data", "prev", "signer_fingerprint")


def _body(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in _BODY_KEYS}


def entry_body(entry: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an entry's body: what its ``hash`` is the SHA-256 of, and what is signed."""
    return _canonical(_body(entry))


@dataclasses.dataclass(frozen=True)
class LedgerHead:
    """A published position of the ledger: the last entry's sequence number and hash.

    ``seq`` is -1 (and ``hash`` :data:`GENESIS`) for an empty ledger.
    """

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> LedgerHead:
        """Read ``SEQ:HASH`` (as printed by ``x0tta6bl4 ledger show --head``).

        Raises:
            ConfigError: anything else.
        """
        seq, _, digest = text.strip().partition(":")
        try:
            value = int(seq)
        except ValueError:
            value = -2
        if value < -1 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"a ledger head is SEQ:SHA256-HEX, got {text[:80]!r}")
        return cls(value, digest)


@dataclasses.dataclass
class VerifyReport:
    """What :meth:`Ledger.verify` found: entries checked, the first problem, the head compared."""

    entries: int = 0
    problem: str | None = None
    bad_seq: int | None = None
    head: LedgerHead | None = None
    against: LedgerHead | None = None
    signers: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "problem": self.problem,
            "bad_seq": self.bad_seq,
            "head": str(self.head) if self.head else None,
            "against": str(self.against) if self.against else None,
            "signers": dict(self.signers),
        }


class Ledger:
    """One ledger directory. Appending needs a :class:`Signer`; reading and verifying do not.

    Args:
        directory: the ledger's directory (created 0700 on first append).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        """Open the ledger in ``directory`` (default :func:`default_ledger_dir`)."""
        self.directory = Path(directory) if directory is not None else default_ledger_dir()
        self._lock = FileLock(str(self.directory / ".lock")) if self.directory.exists() else None
        self._known_signers: set[str] = set()

    @property
    def entries_path(self) -> Path:
        return self.directory / ENTRIES

    # ------------------------------------------------------------------ writing

    def append(
        self, signer: Signer, kind: str, subject: str, data: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Append one entry signed by ``signer`` (its SPIFFE ID is the entry's actor); returns it.

        Raises:
            ConfigError: unknown ``kind`` or ``data`` over :data:`MAX_DATA_BYTES`.
            OSError: the ledger cannot be written (nothing is half-written: a torn line left by
                a crash is cut off before the next append, its head was never published).
        """
        if kind not in KINDS:
            raise ConfigError(f"unknown ledger entry kind {kind[:40]!r} (known: {', '.join(sorted(KINDS))})")
        clean = json_safe(dict(data or {}))
        if len(_canonical(clean)) > MAX_DATA_BYTES:
            raise ConfigError(f"ledger entry data over {MAX_DATA_BYTES} bytes")
        if self._lock is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock = FileLock(str(self.directory / ".lock"))
        fingerprint = signer.certificate.fingerprint(hashes.SHA256()).hex()
        with self._lock:
            self._keep_signer(fingerprint, signer.certificate)
            last = self._last_entry()
            entry: dict[str, Any] = {
                "seq": 0 if last is None else int(last["seq"]) + 1,
                "time": dt.datetime.now(dt.UTC).isoformat(),
                "kind": kind,
                "actor": str(signer.spiffe_id),
                "subject": str(subject)[:512],
                "data": clean,
                "prev": GENESIS if last is None else str(last["hash"]),
                "signer_fingerprint": fingerprint,
            }
            body = _canonical(_body(entry))
            entry["hash"] = hashlib.sha256(body).hexdigest()
            entry["signature"] = signer.sign(body, ENTRY_CONTEXT).to_dict(include_certificate=False)
            append_synced(self.entries_path, [json.dumps(entry, sort_keys=True)])
            self._publish_head(signer, LedgerHead(entry["seq"], entry["hash"]))
        _LEDGER["appends"].inc()
        return entry

    def _keep_signer(self, fingerprint: str, cert: x509.Certificate) -> None:
        if fingerprint in self._known_signers:
            return
        path = self.directory / "signers" / f"{fingerprint}.pem"
        if not path.exists():
            path.parent.mkdir(exist_ok=True, mode=0o700)
            write_atomic(path, cert.public_bytes(serialization.Encoding.PEM))
        self._known_signers.add(fingerprint)

    def _publish_head(self, signer: Signer, head: LedgerHead) -> None:
        record = {"seq": head.seq, "hash": head.hash, "time": dt.datetime.now(dt.UTC).isoformat()}
        record["signature"] = signer.sign(_canonical(record), HEAD_CONTEXT).to_dict()
        write_atomic(self.directory / HEAD, json.dumps(record, sort_keys=True) + "\n")

    def _last_entry(self, repair: bool = True) -> dict[str, Any] | None:
        """The last complete entry; with ``repair`` a torn final line (a crash mid-append) is cut off."""
        path = self.entries_path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        if size == 0:
            return None
        with path.open("rb+" if repair else "rb") as fh:
            start = max(0, size - _TAIL_BYTES)
            fh.seek(start)
            tail = fh.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                if cut < 0 and start > 0:
                    raise OSError(f"{path}: the last {_TAIL_BYTES} bytes hold no complete entry")
                if repair:
                    fh.truncate(start + cut + 1)
                    fsync_file(path)
                tail = tail[: cut + 1]
        lines = tail.splitlines()
        if not lines:
            return None
        try:
            last: dict[str, Any] = json.loads(lines[-1])
            int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise OSError(
                f"{path}: the last entry is unreadable ({exc}); run `x0tta6bl4 ledger verify`"
            ) from None
        return last

    # ------------------------------------------------------------------ reading

    def head(self) -> LedgerHead | None:
        """The head last published in ``head.json`` (None when there is none yet)."""
        try:
            record = json.loads((self.directory / HEAD).read_text(encoding="utf-8"))
            return LedgerHead(int(record["seq"]), str(record["hash"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return LedgerHead(-2, "unreadable")

    def current(self) -> LedgerHead:
        """The position of the last entry on disk (not checked; :meth:`verify` checks)."""
        last = self._last_entry(repair=False)
        return LedgerHead(-1, GENESIS) if last is None else LedgerHead(int(last["seq"]), str(last["hash"]))

    def lines(self) -> Iterator[tuple[int, dict[str, Any] | str]]:
        """(line number, entry) per line; an unparseable line comes back as its error text."""
        try:
            fh = self.entries_path.open("rb")
        except FileNotFoundError:
            return
        with fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    entry = json.loads(raw)
                except ValueError as exc:
                    yield number, f"line {number} is not a JSON entry ({exc.__class__.__name__})"
                    continue
                yield number, entry if isinstance(entry, dict) else f"line {number} is not a JSON object"

    def signer_certificates(self) -> dict[str, x509.Certificate]:
        """The certificates in ``signers/`` by fingerprint (a file whose content differs is skipped)."""
        out: dict[str, x509.Certificate] = {}
        for path in sorted((self.directory / "signers").glob("*.pem")):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue
            fp = cert.fingerprint(hashes.SHA256()).hex()
            if fp == path.stem:
                out[fp] = cert
        return out

    def verify(self, verifier: SignatureVerifier, against: LedgerHead | None = None) -> VerifyReport:
        """Check every entry (chain, hash, signature, actor) and the tail against a published head.

        Args:
            verifier: the trust domain's signature verifier.
            against: a head published earlier (default: ``head.json``); the ledger must contain
                it, unchanged, or it was truncated or rewritten.

        Returns:
            The report; ``problem`` names the first entry that fails and why.
        """
        report = self._verify(verifier, against)
        _LEDGER["verifications"].inc(tags={"result": "ok" if report.ok else "failed"})
        if report.problem is not None:
            kind = report.problem.split(":", 1)[0]
            kind = kind if kind in ("truncated", "rewritten") else "head" if "head.json" in kind else "entry"
            _LEDGER["verify_failures"].inc(tags={"kind": kind})
        return report

    def _verify(self, verifier: SignatureVerifier, against: LedgerHead | None) -> VerifyReport:
        report = VerifyReport()
        certs = self.signer_certificates()
        prev_hash, expected_seq = GENESIS, 0
        seen: dict[int, str] = {}
        for number, entry in self.lines():
            if isinstance(entry, str):
                report.problem, report.bad_seq = entry, expected_seq
                return report
            problem = self._check(entry, expected_seq, prev_hash, verifier, certs)
            if problem is not None:
                report.problem, report.bad_seq = (
                    f"entry {expected_seq} (line {number}): {problem}",
                    expected_seq,
                )
                return report
            seen[expected_seq] = str(entry["hash"])
            report.signers[str(entry["actor"])] = report.signers.get(str(entry["actor"]), 0) + 1
            prev_hash, expected_seq = str(entry["hash"]), expected_seq + 1
            report.entries += 1
        report.head = LedgerHead(expected_seq - 1, prev_hash)
        published = against if against is not None else self._verified_head(verifier)
        report.against = published
        if published is None:
            return report
        if published.seq == -2:
            report.problem = "head.json is unreadable or its signature fails"
        elif published.seq > report.head.seq:
            report.problem = (
                f"truncated: the head published entry {published.seq}, the ledger ends at entry "
                f"{report.head.seq}"
            )
            report.bad_seq = report.head.seq + 1
        elif published.seq >= 0 and seen.get(published.seq) != published.hash:
            report.problem = f"rewritten: entry {published.seq} no longer has the hash the head published"
            report.bad_seq = published.seq
        return report

    def _verified_head(self, verifier: SignatureVerifier) -> LedgerHead | None:
        try:
            record = json.loads((self.directory / HEAD).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return LedgerHead(-2, "unreadable")
        try:
            signature = HybridSignature.parse(record.pop("signature", None))
            verifier.verify(signature, _canonical(record), HEAD_CONTEXT)
            return LedgerHead(int(record["seq"]), str(record["hash"]))
        except (SignatureError, KeyError, TypeError, ValueError, AttributeError):
            return LedgerHead(-2, "unreadable")

    @staticmethod
    def _check(
        entry: dict[str, Any],
        seq: int,
        prev_hash: str,
        verifier: SignatureVerifier,
        certs: Mapping[str, x509.Certificate],
    ) -> str | None:
        if entry.get("seq") != seq:
            return f"sequence number {entry.get('seq')!r} where {seq} belongs (removed or reordered entries)"
        if entry.get("prev") != prev_hash:
            return (
                "does not chain to the entry before it (an entry before it was removed, reordered or edited)"
            )
        body = _canonical(_body(entry))
        if hashlib.sha256(body).hexdigest() != entry.get("hash"):
            return "its content does not match its hash (edited)"
        try:
            signature = HybridSignature.parse(entry.get("signature"), certs)
            signer = verifier.verify(signature, body, ENTRY_CONTEXT)
        except SignatureError as exc:
            return f"signature check failed ({exc.reason}): {exc}"
        if signature.fingerprint != entry.get("signer_fingerprint"):
            return "its signature names another certificate than the entry does"
        if str(signer) != entry.get("actor"):
            return f"signed by {signer}, but claims to be written by {entry.get('actor')!r} (forged)"
        return None


class AuditRecorder:
    """A workload's pen on the ledger: its :class:`Signer` and a :class:`Ledger`, opened once.

    Args:
        ledger: the ledger to append to.
        signer: the workload's signing identity (its SPIFFE ID is every entry's actor).
    """

    def __init__(self, ledger: Ledger, signer: Signer) -> None:
        self.ledger = ledger
        self.signer = signer

    @classmethod
    def open(
        cls,
        spiffe_id: str,
        ca_dir: str | os.PathLike[str] | None = None,
        ledger_dir: str | os.PathLike[str] | None = None,
    ) -> AuditRecorder:
        """The recorder of ``spiffe_id``: its signing identity from the CA (made on first use)."""
        from x0tta6bl4.security.ca import EmbeddedCA

        ca = EmbeddedCA.open(ca_dir)
        ledger = Ledger(ledger_dir if ledger_dir is not None else default_ledger_dir(ca.directory))
        return cls(ledger, Signer.obtain(ca, spiffe_id))

    def record(self, kind: str, subject: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Append one entry (see :meth:`Ledger.append`)."""
        return self.ledger.append(self.signer, kind, subject, data)


def authority_recorder(ca: Any) -> AuditRecorder:
    """The CA's own pen (identity ``ca``) on the ledger beside it: SVID issue, rotation, revocation."""
    from x0tta6bl4.security.identity import WorkloadKind, workload_id

    signer = Signer.obtain(ca, workload_id(WorkloadKind.AUTHORITY, None, ca.trust_domain))
    return AuditRecorder(Ledger(default_ledger_dir(ca.directory)), signer)
