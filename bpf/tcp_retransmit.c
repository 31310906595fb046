/* tcp_retransmit: TCP retransmissions per socket state (raw tcp:tcp_retransmit_skb), SYN-ACK retransmits. */

/* Slots 0..15: successful retransmits by the socket's TCP state; RT_SYNACK: SYN-ACK
 * retransmits; RT_FAILED: retransmit attempts the stack could not send (err != 0). */
#define RT_SYNACK 16
#define RT_FAILED 17
BPF_PERCPU_ARRAY(retransmits, u64, 18);

X0_KFIELD(sk_state, sock, __sk_common.skc_state, u8);

static __always_inline void rt_inc(u32 slot)
{
    u64 *v = retransmits.lookup(&slot);
    if (v)
        *v += 1;
}

/* Retransmit timers and loss recovery run in softirq: a raw tracepoint is never skipped
 * because another program happens to run on the CPU. */
X0_RAW_TP(tcp, tcp_retransmit_skb, (struct sock *sk, struct sk_buff *skb, int err))
{
    u32 slot = X0_KREAD(sk_state, sk) & 15;
#ifdef X0_ARG__tcp__tcp_retransmit_skb__err
    if (err != 0)
        slot = RT_FAILED;
#endif
    rt_inc(slot);
    X0_EVENT();
    return 0;
}

#ifdef X0_HAVE__tcp__tcp_retransmit_synack
X0_RAW_TP(tcp, tcp_retransmit_synack, (struct sock *sk, struct request_sock *req))
{
    rt_inc(RT_SYNACK);
    X0_EVENT();
    return 0;
}
#endif
