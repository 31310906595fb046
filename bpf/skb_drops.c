/* skb_drops: packets the kernel dropped (raw skb:kfree_skb), counted per enum skb_drop_reason. */

/* drops[reason]; slot 255 collects reasons >= 255. Reason names come from the running
 * kernel's format file (print fmt __print_symbolic), read by user space. */
BPF_PERCPU_ARRAY(drops, u64, 256);

/* Drops happen in softirq and hard-irq-disabled paths: a raw tracepoint is never skipped
 * because another program happens to run on the CPU. Kernels before 5.17 pass no reason. */
X0_RAW_TP(skb, kfree_skb, (struct sk_buff *skb, void *location, enum skb_drop_reason reason))
{
    u32 r = (u32)reason;
    if (r > 255)
        r = 255;
    u64 *v = drops.lookup(&r);
    if (v)
        *v += 1;
    X0_EVENT();
    return 0;
}
