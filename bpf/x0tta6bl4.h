/* Shared prelude of x0tta6bl4's eBPF programs (BCC): probe macros, event/lost counters, log2 slots.
 *
 * The loader (platform/x0tta6bl4/telemetry/ebpf/: codegen.py, loader.py) compiles each program as
 *   <generated declarations> + this file + <program>.c
 * so programs never depend on the (older) kernel headers' struct layouts.
 *
 * Classic tracepoints, X0_TP(cat, ev): the loader reads
 * /sys/kernel/tracing/events/<cat>/<ev>/format of the running kernel and emits
 *   struct x0_tp__<cat>__<ev>            the record, laid out at the kernel's offsets
 *   #define X0_HAVE__<cat>__<ev>         when the tracepoint exists
 *   #define X0_FIELD__<cat>__<ev>__<f>   for every field f of the record
 *
 * Raw tracepoints, X0_RAW_TP(cat, ev, (type name, ...)): the handler gets the tracepoint's
 * TP_PROTO arguments, declared by the program and checked against the kernel's BTF
 * (btf_trace_<ev>); pointers arrive as const void *, integers by size and sign. They run
 * behind a per-program recursion guard, where classic tracepoints share one per-CPU guard
 * (bpf_prog_active) with every other tracing program: a classic handler interrupted by an
 * event of another one makes the kernel skip that event. Declared trailing arguments an
 * older kernel does not pass arrive as 0; X0_ARG__<cat>__<ev>__<name> marks the ones it passes.
 *
 * Kernel struct members, X0_KFIELD(alias, struct, member.path, ctype) at file scope: the
 * loader finds the member's offset in the kernel's BTF (refusing a size or sign other than
 * ctype's) and emits X0_KOFF__<alias> and the reader X0_KREAD(alias, ptr) (bpf_probe_read_kernel).
 *
 * A handler wrapped in #ifdef X0_HAVE__<cat>__<ev> is optional; every other one is required.
 */
#ifndef X0TTA6BL4_BPF_H
#define X0TTA6BL4_BPF_H

#define X0_TP(cat, ev) int x0_tp__##cat##__##ev(struct x0_tp__##cat##__##ev *args)

#define X0_RAW_TP(cat, ev, signature)                                                        \
    static __always_inline int x0_rawbody__##cat##__##ev(X0_RAW_PARAMS__##cat##__##ev);      \
    int x0_raw__##cat##__##ev(struct bpf_raw_tracepoint_args *ctx)                           \
    {                                                                                        \
        return x0_rawbody__##cat##__##ev(X0_RAW_VALUES__##cat##__##ev);                      \
    }                                                                                        \
    static __always_inline int x0_rawbody__##cat##__##ev(X0_RAW_PARAMS__##cat##__##ev)

/* Fails the build when the loader emitted no offset for the field. */
#define X0_KFIELD(alias, st, path, ctype) \
    _Static_assert(X0_KOFF__##alias >= 0, "kernel field " #st "." #path)
#define X0_KREAD(alias, ptr) x0_kread__##alias(ptr)

/* x0_stats[0]: events handled by this program; x0_stats[1]: events it had to drop
 * (a full map). Both only grow; user space reports per-interval deltas. */
#define X0_STAT_EVENTS 0
#define X0_STAT_LOST 1
BPF_PERCPU_ARRAY(x0_stats, u64, 2);

static __always_inline void x0_stat_inc(u32 idx)
{
    u64 *v = x0_stats.lookup(&idx);
    if (v)
        *v += 1;
}

/* errno of a BPF_NOEXIST insert that lost a race to another CPU (no <errno.h> in BPF C). */
#define X0_EEXIST 17

#define X0_EVENT() x0_stat_inc(X0_STAT_EVENTS)
#define X0_LOST() x0_stat_inc(X0_STAT_LOST)

/* Log2 histograms have 64 slots: slot 0 holds the value 0, slot s >= 1 holds [2^(s-1), 2^s). */
#define X0_LOG2_SLOTS 64

static __always_inline u32 x0_log2_slot(u64 v)
{
    u32 s = 1;
    if (v == 0)
        return 0;
    if (v >> 32) { v >>= 32; s += 32; }
    if (v >> 16) { v >>= 16; s += 16; }
    if (v >> 8) { v >>= 8; s += 8; }
    if (v >> 4) { v >>= 4; s += 4; }
    if (v >> 2) { v >>= 2; s += 2; }
    if (v >> 1) { s += 1; }
    return s;
}

#endif /* X0TTA6BL4_BPF_H */
