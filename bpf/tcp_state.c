/* tcp_state: TCP state transitions (sock:inet_sock_set_state) and resets sent/received. */

#define IPPROTO_TCP_NUM 6

/* transitions[old * 16 + new], TCP states are 1..12. */
BPF_PERCPU_ARRAY(transitions, u64, 256);
/* resets[0]: RSTs sent, resets[1]: RSTs received. */
BPF_PERCPU_ARRAY(resets, u64, 2);
/* Sent RSTs by enum sk_rst_reason (slot 63 collects reasons >= 63). */
BPF_PERCPU_ARRAY(reset_reasons, u64, 64);

static __always_inline void st_add(u32 slot)
{
    u64 *v = transitions.lookup(&slot);
    if (v)
        *v += 1;
}

X0_TP(sock, inet_sock_set_state)
{
#ifdef X0_FIELD__sock__inet_sock_set_state__protocol
    if (args->protocol != IPPROTO_TCP_NUM)
        return 0;
#endif
    st_add(((u32)args->oldstate & 15) * 16 + ((u32)args->newstate & 15));
    X0_EVENT();
    return 0;
}

#ifdef X0_HAVE__tcp__tcp_send_reset
X0_TP(tcp, tcp_send_reset)
{
    u32 slot = 0;
    u64 *v = resets.lookup(&slot);
    if (v)
        *v += 1;
#ifdef X0_FIELD__tcp__tcp_send_reset__reason
    u32 reason = args->reason;
    if (reason > 63)
        reason = 63;
    v = reset_reasons.lookup(&reason);
    if (v)
        *v += 1;
#endif
    X0_EVENT();
    return 0;
}
#endif

#ifdef X0_HAVE__tcp__tcp_receive_reset
X0_TP(tcp, tcp_receive_reset)
{
    u32 slot = 1;
    u64 *v = resets.lookup(&slot);
    if (v)
        *v += 1;
    X0_EVENT();
    return 0;
}
#endif
