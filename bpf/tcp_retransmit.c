/* tcp_retransmit: TCP retransmissions per socket state (tcp:tcp_retransmit_skb), SYN-ACK retransmits. */

/* Slots 0..15: successful retransmits by the socket's TCP state; RT_SYNACK: SYN-ACK
 * retransmits; RT_FAILED: retransmit attempts the stack could not send (err != 0). */
#define RT_SYNACK 16
#define RT_FAILED 17
BPF_PERCPU_ARRAY(retransmits, u64, 18);

static __always_inline void rt_inc(u32 slot)
{
    u64 *v = retransmits.lookup(&slot);
    if (v)
        *v += 1;
}

X0_TP(tcp, tcp_retransmit_skb)
{
    u32 slot = args->state & 15;
#ifdef X0_FIELD__tcp__tcp_retransmit_skb__err
    if (args->err != 0)
        slot = RT_FAILED;
#endif
    rt_inc(slot);
    X0_EVENT();
    return 0;
}

#ifdef X0_HAVE__tcp__tcp_retransmit_synack
X0_TP(tcp, tcp_retransmit_synack)
{
    rt_inc(RT_SYNACK);
    X0_EVENT();
    return 0;
}
#endif
