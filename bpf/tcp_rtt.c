/* tcp_rtt: smoothed RTT of TCP connections (tcp:tcp_probe srtt, microseconds) as a log2 histogram. */

/* Samples with srtt == 0 (no RTT measured yet, e.g. a pure receiver) are skipped. */
BPF_PERCPU_ARRAY(srtt_hist, u64, X0_LOG2_SLOTS);
/* srtt_total[0]: sum of srtt in microseconds, srtt_total[1]: number of samples. */
BPF_PERCPU_ARRAY(srtt_total, u64, 2);

#ifdef X0_FIELD__tcp__tcp_probe__sock_cookie
/* Per-connection aggregate keyed by socket cookie; user space drains it every interval. */
struct conn_rtt {
    u64 srtt_sum_us;
    u64 samples;
};
BPF_PERCPU_HASH(by_conn, u64, struct conn_rtt, 8192);
#endif

X0_TP(tcp, tcp_probe)
{
    u64 srtt = args->srtt;
    if (srtt == 0)
        return 0;
    X0_EVENT();

    u32 slot = x0_log2_slot(srtt);
    if (slot >= X0_LOG2_SLOTS)
        slot = X0_LOG2_SLOTS - 1;
    u64 *v = srtt_hist.lookup(&slot);
    if (v)
        *v += 1;
    u32 k = 0;
    v = srtt_total.lookup(&k);
    if (v)
        *v += srtt;
    k = 1;
    v = srtt_total.lookup(&k);
    if (v)
        *v += 1;

#ifdef X0_FIELD__tcp__tcp_probe__sock_cookie
    u64 cookie = args->sock_cookie;
    struct conn_rtt *c = by_conn.lookup(&cookie);
    if (!c) {
        struct conn_rtt fresh = {};
        /* BPF_NOEXIST: if another CPU inserted the cookie first (-X0_EEXIST) use its entry;
         * any other failure is a full map and the sample is lost for this breakdown. */
        int err = by_conn.insert(&cookie, &fresh);
        if (err != 0 && err != -X0_EEXIST) {
            X0_LOST();
            return 0;
        }
        c = by_conn.lookup(&cookie);
        if (!c)
            return 0;
    }
    c->srtt_sum_us += srtt;
    c->samples += 1;
#endif
    return 0;
}
