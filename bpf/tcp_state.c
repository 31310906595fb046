/* tcp_state: TCP state transitions (raw sock:inet_sock_set_state) and resets sent/received. */

#define IPPROTO_TCP_NUM 6

/* transitions[old * 16 + new], TCP states are 1..12. */
BPF_PERCPU_ARRAY(transitions, u64, 256);
/* resets[0]: RSTs sent, resets[1]: RSTs received. */
BPF_PERCPU_ARRAY(resets, u64, 2);
/* Sent RSTs by enum sk_rst_reason (slot 63 collects reasons >= 63). */
BPF_PERCPU_ARRAY(reset_reasons, u64, 64);

X0_KFIELD(sk_protocol, sock, sk_protocol, u16);

static __always_inline void st_add(u32 slot)
{
    u64 *v = transitions.lookup(&slot);
    if (v)
        *v += 1;
}

/* State changes, resets and their tracepoints fire in softirq as often as in process
 * context; as raw tracepoints they are never skipped for another program running. */
X0_RAW_TP(sock, inet_sock_set_state, (struct sock *sk, int oldstate, int newstate))
{
    if (X0_KREAD(sk_protocol, sk) != IPPROTO_TCP_NUM)
        return 0;
    st_add(((u32)oldstate & 15) * 16 + ((u32)newstate & 15));
    X0_EVENT();
    return 0;
}

#ifdef X0_HAVE__tcp__tcp_send_reset
/* sk is NULL for a reset answering a segment no socket owns. Kernels before 6.10 pass no reason. */
X0_RAW_TP(tcp, tcp_send_reset, (struct sock *sk, struct sk_buff *skb, enum sk_rst_reason reason))
{
    u32 slot = 0;
    u64 *v = resets.lookup(&slot);
    if (v)
        *v += 1;
#ifdef X0_ARG__tcp__tcp_send_reset__reason
    u32 r = (u32)reason;
    if (r > 63)
        r = 63;
    v = reset_reasons.lookup(&r);
    if (v)
        *v += 1;
#endif
    X0_EVENT();
    return 0;
}
#endif

#ifdef X0_HAVE__tcp__tcp_receive_reset
X0_RAW_TP(tcp, tcp_receive_reset, (struct sock *sk))
{
    u32 slot = 1;
    u64 *v = resets.lookup(&slot);
    if (v)
        *v += 1;
    X0_EVENT();
    return 0;
}
#endif
