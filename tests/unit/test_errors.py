"""Every typed error crosses Ray (pickling) with its class, message and attributes, whatever its constructor takes."""

from __future__ import annotations

import pickle

import pytest

from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.mesh.shard import ShardBehindError
from x0tta6bl4.models.registry import UnservableVersionError
from x0tta6bl4.models.signing import UntrustedVersionError
from x0tta6bl4.security.errors import PeerRejectedError
from x0tta6bl4.security.signing import SignatureError
from x0tta6bl4.serve.errors import ServiceUnavailableError
from x0tta6bl4.telemetry.ebpf.errors import EbpfError, TracepointMissingError


@pytest.mark.parametrize(
    "exc",
    [
        EbpfError("tcp_retransmit", "verifier refused it", log="R1 invalid mem access"),
        TracepointMissingError("tcp_retransmit", "tcp/tcp_retransmit_skb", "not in this kernel"),
        UntrustedVersionError("untrusted", "v3 was signed by an unknown key"),
        UnservableVersionError("v3 cannot be served", ["no threshold"]),
        PeerRejectedError("expired", "the peer's SVID expired"),
        SignatureError("bad-signature", "runbook r1: signature does not verify"),
        ShardBehindError(region=2, at_tick=40, asked_tick=45),
        ServiceUnavailableError("the detector is restarting", retry_after_s=3),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_an_error_with_its_own_constructor_survives_pickling(exc: X0tta6bl4Error) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.__dict__ == exc.__dict__
