"""Every program in bpf/ compiles, passes the verifier and attaches; refusals name the program and reason."""

from __future__ import annotations

import socket
import time

import pytest

from x0tta6bl4.telemetry.ebpf import (
    PROGRAMS,
    CompileError,
    EbpfPrograms,
    ProgramSource,
    TracepointMissingError,
    VerifierError,
    load_program,
    program_sources,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("ebpf_host")]

UNCHECKED_LOOKUP = """
BPF_ARRAY(counts, u64, 4);
X0_TP(skb, kfree_skb)
{
    u32 k = args->reason;
    u64 *v = counts.lookup(&k);
    *v += 1;
    return 0;
}
"""


def _refused_connection() -> None:
    """A SYN to a closed local port: the kernel answers RST and frees the SYN (drop reason NO_SOCKET)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


@pytest.mark.parametrize("name", PROGRAMS)
def test_shipped_program_compiles_passes_the_verifier_and_attaches(name: str) -> None:
    (source,) = program_sources([name])
    program = load_program(source)
    try:
        required = {f"{c}:{e}" for c, e, req in source.tracepoints() if req}
        assert required <= set(program.attached)
        assert sorted(program.attached) == sorted(program.handlers)
    finally:
        program.close()


def test_verifier_refusal_names_the_program_and_the_verifiers_reason() -> None:
    with pytest.raises(VerifierError) as info:
        load_program(ProgramSource("unchecked_lookup", UNCHECKED_LOOKUP))
    err = info.value
    assert err.program == "unchecked_lookup"
    assert "'unchecked_lookup'" in str(err)
    assert "invalid mem access 'map_value_or_null'" in err.reason
    assert "r1 = *(u64 *)(r0 +0)" in err.reason  # the refused dereference of the lookup's result
    assert "processed" in err.log  # the full verifier log is kept


def test_compile_error_points_at_the_programs_own_line() -> None:
    src = "X0_TP(skb, kfree_skb)\n{\n    return no_such_variable;\n}\n"
    with pytest.raises(CompileError) as info:
        load_program(ProgramSource("typo", src))
    assert "typo.c:3" in info.value.reason
    assert "no_such_variable" in info.value.reason


def test_missing_tracepoint_is_reported_while_the_other_programs_keep_running() -> None:
    missing = ProgramSource("needs_missing", "X0_TP(tcp, x0_no_such_event) { return 0; }")
    sources = [*program_sources(["skb_drops"]), missing]
    with EbpfPrograms(sources) as programs:
        err = programs.errors["needs_missing"]
        assert isinstance(err, TracepointMissingError)
        assert err.tracepoint == "tcp:x0_no_such_event"
        assert list(programs.loaded) == ["skb_drops"]
        programs.reset()
        for _ in range(5):
            _refused_connection()
        reading = programs.poll()
        no_socket = reading.samples["skb_drops"].breakdown["drop_reasons"].get("NO_SOCKET", 0.0)
        assert no_socket * reading.interval_s >= 5 - 1e-6


def test_missing_optional_tracepoint_compiles_its_handler_out() -> None:
    src = """
X0_TP(skb, kfree_skb) { X0_EVENT(); return 0; }
#ifdef X0_HAVE__tcp__x0_no_such_event
X0_TP(tcp, x0_no_such_event) { return 0; }
#endif
"""
    program = load_program(ProgramSource("optional_missing", src))
    try:
        assert program.skipped_tracepoints == ["tcp:x0_no_such_event"]
        assert program.attached == ["skb:kfree_skb"]
    finally:
        program.close()


def test_events_a_full_map_cannot_hold_are_counted_as_lost() -> None:
    # Keys cycle 0, 1, 2 whatever the workload: two fit, so about a third of the events are lost in
    # any interval (keyed by pid, a quiet host switching to the same few pids could lose all or none).
    tiny = """
BPF_HASH(tiny, u32, u64, 2);
BPF_ARRAY(seq, u64, 1);
X0_TP(sched, sched_switch)
{
    u32 zero = 0;
    u64 *n = seq.lookup(&zero);
    if (!n)
        return 0;
    u32 key = (u32)(*n % 3);
    lock_xadd(n, 1);
    u64 one = 1;
    X0_EVENT();
    if (tiny.update(&key, &one) != 0)
        X0_LOST();
    return 0;
}
"""
    with EbpfPrograms([ProgramSource("tiny_hash", tiny)]) as programs:
        assert not programs.errors
        time.sleep(0.2)
        reading = programs.poll()
    assert reading.events > 2
    assert 0 < reading.lost < reading.events


def test_each_poll_exports_the_programs_events_losses_and_read_time(prometheus_client_pipeline: None) -> None:
    # Exported once per poll per program (prometheus-client here, whether or not the process joined
    # the session's Ray), never per event.
    from x0tta6bl4.observability.metrics import REGISTRY
    from x0tta6bl4.telemetry.source import HostTelemetry

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    events = sample("x0tta6bl4_ebpf_events_total", program="runqlat")
    reads = sample("x0tta6bl4_ebpf_read_seconds_count", program="runqlat")
    telemetry = HostTelemetry(0, programs=["runqlat"])
    try:
        assert telemetry.source == "ebpf" and sample("x0tta6bl4_ebpf_programs_loaded") == 1.0
        telemetry.poll()
        time.sleep(0.2)  # the scheduler switches tasks many times meanwhile
        telemetry.poll()
    finally:
        telemetry.close()
    assert sample("x0tta6bl4_ebpf_events_total", program="runqlat") > events
    assert sample("x0tta6bl4_ebpf_read_seconds_count", program="runqlat") == reads + 2
    assert sample("x0tta6bl4_telemetry_polls_total", source="ebpf") >= 2
