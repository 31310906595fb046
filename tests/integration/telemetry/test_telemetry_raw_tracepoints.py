"""Raw tracepoints: arguments and struct offsets come from the running kernel's BTF, and they read right."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from x0tta6bl4.telemetry.ebpf import (
    PROGRAMS,
    CompileError,
    EbpfPrograms,
    LoadedProgram,
    ProgramSource,
    TracepointMissingError,
    load_program,
    program_sources,
    running_btf,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("ebpf_host")]

# Reads every kernel field the shipped programs read, and checks each against a value known
# another way: the current task for prev's pid, the oldstate argument for the socket's state,
# the sending thread's own socket for family/protocol, the classic tcp_probe record for srtt.
FIELD_CHECKS = """
X0_KFIELD(task_pid, task_struct, pid, s32);
X0_KFIELD(sk_state, sock, __sk_common.skc_state, u8);
X0_KFIELD(sk_family, sock, __sk_common.skc_family, u16);
X0_KFIELD(sk_protocol, sock, sk_protocol, u16);
X0_KFIELD(srtt_us, tcp_sock, srtt_us, u32);

/* checks[0]/[1]: prev pid matched/mismatched the current task; [2]/[3]: skc_state vs oldstate. */
BPF_ARRAY(checks, u64, 4);
/* Per thread id: family << 16 | protocol of the last socket it sent on. */
BPF_HASH(last_send, u32, u64, 1024);
struct probe_sum { u64 srtt_sum; u64 samples; u64 family; };
BPF_HASH(probes, u64, struct probe_sum, 4096);

static __always_inline void check(u32 ok_slot, bool ok)
{
    u32 k = ok ? ok_slot : ok_slot + 1;
    u64 *v = checks.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

X0_RAW_TP(sched, sched_switch,
          (bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state))
{
    check(0, (u32)X0_KREAD(task_pid, prev) == (u32)bpf_get_current_pid_tgid());
    return 0;
}

X0_RAW_TP(sock, inet_sock_set_state, (struct sock *sk, int oldstate, int newstate))
{
    check(2, X0_KREAD(sk_state, sk) == (u8)oldstate);
    return 0;
}

X0_RAW_TP(sock, sock_send_length, (struct sock *sk, int ret, int flags))
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 v = (u64)X0_KREAD(sk_family, sk) << 16 | X0_KREAD(sk_protocol, sk);
    last_send.update(&tid, &v);
    return 0;
}

X0_RAW_TP(tcp, tcp_probe, (struct sock *sk, struct sk_buff *skb))
{
    u64 key = (u64)sk;
    struct probe_sum fresh = {};
    struct probe_sum *p = probes.lookup_or_try_init(&key, &fresh);
    if (p) {
        p->srtt_sum += X0_KREAD(srtt_us, sk) >> 3;
        p->samples += 1;
        p->family = X0_KREAD(sk_family, sk);
    }
    return 0;
}
"""

CLASSIC_PROBE = """
struct probe_sum { u64 srtt_sum; u64 samples; u64 family; };
BPF_HASH(probes, u64, struct probe_sum, 4096);

X0_TP(tcp, tcp_probe)
{
    u64 key = (u64)args->skaddr;
    struct probe_sum fresh = {};
    struct probe_sum *p = probes.lookup_or_try_init(&key, &fresh);
    if (p) {
        p->srtt_sum += args->srtt;
        p->samples += 1;
        p->family = args->family;
    }
    return 0;
}
"""


def _tcp_exchange(family: socket.AddressFamily, host: str, rounds: int = 200) -> None:
    """A loopback TCP connection with request/response rounds, so both sides measure RTTs; then closed."""
    with socket.socket(family) as srv:
        srv.bind((host, 0))
        srv.listen()

        def echo() -> None:
            conn, _ = srv.accept()
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

        t = threading.Thread(target=echo)
        t.start()
        with socket.create_connection(srv.getsockname()[:2]) as c:
            for _ in range(rounds):
                c.sendall(b"x" * 512)
                got = 0
                while got < 512:
                    got += len(c.recv(4096))
        t.join(timeout=10)


def _map(program: LoadedProgram, name: str) -> dict[int, Any]:
    return {int(k.value): v for k, v in program.table(name).items()}


def test_kernel_fields_read_the_running_kernels_values() -> None:
    raw = load_program(ProgramSource("field_checks", FIELD_CHECKS))
    classic = load_program(ProgramSource("classic_probe", CLASSIC_PROBE))
    try:
        tid = threading.get_native_id()
        sends: dict[tuple[socket.AddressFamily, int], int] = {}
        for fam, kind, host, proto in (
            (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", 17),
            (socket.AF_INET6, socket.SOCK_DGRAM, "::1", 17),
        ):
            with socket.socket(fam, kind) as s:
                s.sendto(b"x", (host, 9))
            sends[(fam, proto)] = int(_map(raw, "last_send")[tid].value)
        _tcp_exchange(socket.AF_INET, "127.0.0.1")
        _tcp_exchange(socket.AF_INET6, "::1")
        time.sleep(0.1)
        raw.detach()
        classic.detach()

        assert sends == {(fam, proto): (int(fam) << 16) | proto for fam, proto in sends}
        checks = [int(v.value) for v in raw.table("checks").values()]
        assert checks[0] > 0 and checks[1] == 0, f"task_struct.pid: {checks[0]} matched, {checks[1]} not"
        assert checks[2] > 0 and checks[3] == 0, f"sock.skc_state: {checks[2]} matched, {checks[3]} not"

        raw_probes, classic_probes = _map(raw, "probes"), _map(classic, "probes")
        # Either program may skip an event (the classic one when another tracing program runs on
        # the CPU, the raw one when it would re-enter itself), so compare the sockets both saw
        # equally often. Equal counts can still hide two different skipped events, on the test's
        # sockets or on any other busy socket of the machine: a few such sockets may disagree
        # (2 of 8 seen once), a wrong field offset would make them all disagree.
        same = [
            sk for sk, c in classic_probes.items() if sk in raw_probes and raw_probes[sk].samples == c.samples
        ]
        agree = [
            sk
            for sk in same
            if (raw_probes[sk].srtt_sum, raw_probes[sk].family)
            == (classic_probes[sk].srtt_sum, classic_probes[sk].family)
        ]
        assert len(agree) >= 4 and len(agree) >= 0.75 * len(same), (len(agree), len(same))
        assert {int(raw_probes[sk].family) for sk in agree} == {socket.AF_INET, socket.AF_INET6}
    finally:
        raw.close()
        classic.close()


def test_raw_tracepoint_arguments_must_match_the_kernels_prototype() -> None:
    wrong = "X0_RAW_TP(tcp, tcp_probe, (struct sock *sk, int skb)) { return 0; }"
    with pytest.raises(CompileError) as info:
        load_program(ProgramSource("wrong_args", wrong))
    assert "tcp:tcp_probe passes struct sk_buff* as argument 2" in info.value.reason
    assert "int skb" in info.value.reason


def test_a_kernel_field_of_another_size_or_name_is_refused_before_compiling() -> None:
    for decl, expected in (
        (
            "X0_KFIELD(f, sock, __sk_common.skc_family, u32);",
            "skc_family is short unsigned int (u16) on this kernel, the program reads u32",
        ),
        ("X0_KFIELD(f, sock, __sk_common.x0_no_such, u32);", "struct sock.__sk_common has no member"),
        ("X0_KFIELD(f, x0_no_such_struct, a, u32);", "no struct x0_no_such_struct"),
    ):
        src = decl + "\nX0_RAW_TP(sched, sched_wakeup, (struct task_struct *p)) { return 0; }"
        with pytest.raises(CompileError) as info:
            load_program(ProgramSource("bad_field", src))
        assert expected in info.value.reason


def test_missing_raw_tracepoint_is_named() -> None:
    with pytest.raises(TracepointMissingError) as info:
        load_program(ProgramSource("missing_raw", "X0_RAW_TP(tcp, x0_no_such_event, (void)) { return 0; }"))
    assert info.value.tracepoint == "tcp:x0_no_such_event"


def test_optional_trailing_arguments_are_marked() -> None:
    # kfree_skb passes (skb, location, reason, rx_sk): a fifth declared argument arrives as 0, unmarked.
    src = """
BPF_ARRAY(seen, u64, 2);
X0_RAW_TP(skb, kfree_skb, (struct sk_buff *skb, void *location, enum skb_drop_reason reason,
                           struct sock *rx_sk, int x0_future))
{
#if defined(X0_ARG__skb__kfree_skb__reason) && !defined(X0_ARG__skb__kfree_skb__x0_future)
    u32 k = x0_future == 0 ? 0 : 1;
    u64 *v = seen.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
#endif
    return 0;
}
"""
    program = load_program(ProgramSource("trailing", src))
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
        seen = [int(v.value) for v in program.table("seen").values()]
        assert seen[0] > 0 and seen[1] == 0
    finally:
        program.close()


@pytest.mark.parametrize("name", PROGRAMS)
def test_shipped_programs_use_raw_tracepoints(name: str) -> None:
    """Every shipped handler runs behind its own recursion guard, so no program makes another skip."""
    (source,) = program_sources([name])
    with EbpfPrograms([source], attach=False) as programs:
        program = programs.loaded[name]
        assert program.raw_tracepoints == set(program.handlers)


def test_btf_resolves_prototypes_and_members() -> None:
    btf = running_btf()
    args = btf.tracepoint_args("sched_switch")
    assert args is not None
    assert [a.type_name for a in args[:3]] == ["bool", "struct task_struct*", "struct task_struct*"]
    assert btf.tracepoint_args("x0_no_such_event") is None
    pid = btf.member("task_struct", "pid")
    assert (pid.value.size, pid.value.signed) == (4, True)
    family = btf.member("sock", "__sk_common.skc_family")
    assert (family.value.size, family.value.signed) == (2, False)
    assert 0 <= family.offset < family.struct_size
