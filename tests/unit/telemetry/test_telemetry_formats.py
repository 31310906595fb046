"""Tracepoint format parsing: drop-reason names, generated record structs, handler discovery."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from x0tta6bl4.telemetry.ebpf import (
    ProgramSource,
    parse_format,
    program_sources,
    render_struct,
    symbolic_values,
    tracefs_root,
)

# kfree_skb as Linux 6.18 prints it (reason list shortened).
KFREE_SKB = """name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, \
REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, \
{ 12, "NETFILTER_DROP" }, { 0x40, "QDISC_DROP" })
"""


def test_drop_reason_names_come_from_print_symbolic() -> None:
    fmt = parse_format("skb", "kfree_skb", KFREE_SKB)
    reasons = symbolic_values(fmt.print_fmt, "reason")
    assert reasons == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 12: "NETFILTER_DROP", 64: "QDISC_DROP"}


def test_symbolic_entries_named_by_kernel_macros_are_skipped() -> None:
    fmt = 'x, __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { 7, "TCP_CLOSE" }), y'
    assert symbolic_values(fmt, "state") == {7: "TCP_CLOSE"}


def test_a_field_without_symbolic_table_has_no_names() -> None:
    assert symbolic_values('"%d", REC->srtt', "srtt") == {}


def test_parse_format_keeps_offsets_sizes_and_arrays() -> None:
    saddr = "\tfield:__u8 saddr[4];\toffset:40;\tsize:4;\tsigned:0;\n"
    text = KFREE_SKB.replace("\tfield:void * skbaddr;", saddr + "\tfield:void * skbaddr;")
    fmt = parse_format("skb", "kfree_skb", text)
    by_name = {f.name: f for f in fmt.fields}
    assert (by_name["reason"].offset, by_name["reason"].size) == (36, 4)
    assert by_name["saddr"].array_len == 4
    assert by_name["common_pid"].signed


def test_rendered_struct_pads_to_the_kernels_offsets_without_kernel_type_names() -> None:
    c = render_struct(parse_format("skb", "kfree_skb", KFREE_SKB))
    assert "struct x0_tp__skb__kfree_skb {" in c
    assert "enum skb_drop_reason" not in c  # older headers may not define it
    assert re.search(r"u16 protocol;\n    u8 __x0_pad\d+\[2\];\n    u32 reason;", c)  # 34 -> 36
    assert "u32 reason;" in c
    assert "__builtin_offsetof(struct x0_tp__skb__kfree_skb, reason) == 36" in c
    assert "#define X0_HAVE__skb__kfree_skb 1" in c
    assert "#define X0_FIELD__skb__kfree_skb__reason 1" in c


def test_handlers_guarded_by_x0_have_are_optional() -> None:
    src = ProgramSource(
        "p",
        """
X0_TP(sched, sched_switch) { return 0; }
#ifdef X0_HAVE__tcp__tcp_send_reset
X0_TP(tcp, tcp_send_reset) { return 0; }
#endif
/* X0_TP(fake, in_comment) is not a handler */
""",
    )
    assert src.tracepoints() == [("sched", "sched_switch", True), ("tcp", "tcp_send_reset", False)]


def test_every_shipped_program_names_its_tracepoints() -> None:
    for source in program_sources(None):
        assert source.tracepoints(), source.name
        assert any(required for _, _, required in source.tracepoints()), source.name


@pytest.mark.skipif(tracefs_root() is None, reason="tracefs is not mounted on this host")
def test_running_kernel_names_netfilter_drops() -> None:
    root = tracefs_root()
    assert root is not None
    text = (Path(root) / "events/skb/kfree_skb/format").read_text()
    reasons = symbolic_values(parse_format("skb", "kfree_skb", text).print_fmt, "reason")
    assert "NETFILTER_DROP" in reasons.values()
