"""Typed eBPF errors name the program and carry the reason; unknown program names are config errors."""

from __future__ import annotations

import pytest

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.telemetry.ebpf import (
    PROGRAMS,
    AttachError,
    CompileError,
    TracepointMissingError,
    VerifierError,
    parse_program_list,
    program_sources,
)
from x0tta6bl4.telemetry.ebpf.loader import _compile_reason, _verifier_reason

VERIFIER_LOG = """bpf: Failed to load program: Permission denied
0: R1=ctx() R10=fp0
; u32 k = args->reason; @ bad.c:5
0: (61) r1 = *(u32 *)(r1 +36)         ; R1_w=scalar()
;  @ bad.c:7
6: (85) call bpf_map_lookup_elem#1    ; R0=map_value_or_null(id=1,map=counts,ks=4,vs=8)
;  @ bad.c:9
7: (79) r1 = *(u64 *)(r0 +0)
R0 invalid mem access 'map_value_or_null'
processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0

HINT: The 'map_value_or_null' error can happen if you dereference a pointer value from a map lookup
"""


def test_every_ebpf_error_names_its_program_and_reason() -> None:
    for err in (
        CompileError("tcp_rtt", "bad C"),
        VerifierError("runqlat", "R0 invalid"),
        AttachError("skb_drops", "skb:kfree_skb: Permission denied"),
    ):
        assert isinstance(err, X0tta6bl4Error)
        assert "'" + err.program + "'" in str(err)
        assert err.reason in str(err)


def test_missing_tracepoint_error_names_the_tracepoint() -> None:
    err = TracepointMissingError("tcp_state", "tcp:tcp_send_reset", "no such tracepoint on this kernel")
    assert err.tracepoint == "tcp:tcp_send_reset"
    assert "'tcp_state'" in str(err)
    assert "tcp:tcp_send_reset" in str(err)


def test_verifier_reason_is_the_message_and_the_refused_instruction() -> None:
    reason = _verifier_reason(VERIFIER_LOG, Exception("Failed to load BPF program"))
    assert reason == (
        "Permission denied: R0 invalid mem access 'map_value_or_null' (at insn 7: r1 = *(u64 *)(r0 +0))"
    )


def test_compile_reason_keeps_only_error_lines_and_labels_the_generated_prelude() -> None:
    log = (
        "tcp_rtt.c:12:9: error: use of undeclared identifier 'x'\n"
        "tcp_rtt.c:14:1: warning: unused variable 'y'\n"
        "/virtual/main.c:52:3: error: unknown type name 'u7'\n2 errors generated.\n"
    )
    assert _compile_reason(log, "tcp_rtt") == (
        "tcp_rtt.c:12:9: error: use of undeclared identifier 'x'; "
        "tcp_rtt(generated prelude):52:3: error: unknown type name 'u7'"
    )


def test_unknown_program_names_are_a_config_error_listing_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown eBPF program\(s\) 'nope'.*available: tcp_retransmit"):
        program_sources(["skb_drops", "nope"])


def test_program_list_all_means_every_program() -> None:
    assert parse_program_list("all") is None
    assert parse_program_list("skb_drops, runqlat") == ["skb_drops", "runqlat"]
    with pytest.raises(ConfigError):
        parse_program_list("runqlat,bogus")
    assert {s.name for s in program_sources(None)} == set(PROGRAMS)
