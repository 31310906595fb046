/* skb_drops: packets the kernel dropped (skb:kfree_skb), counted per enum skb_drop_reason. */

/* drops[reason]; slot 255 collects reasons >= 255. Reason names come from the
 * running kernel's format file (print fmt __print_symbolic), read by user space. */
BPF_PERCPU_ARRAY(drops, u64, 256);

X0_TP(skb, kfree_skb)
{
#ifdef X0_FIELD__skb__kfree_skb__reason
    u32 reason = args->reason;
#else
    u32 reason = 0;
#endif
    if (reason > 255)
        reason = 255;
    u64 *v = drops.lookup(&reason);
    if (v)
        *v += 1;
    X0_EVENT();
    return 0;
}
