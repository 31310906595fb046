/* tcp_rtt: smoothed RTT of TCP connections (raw tcp:tcp_probe, tcp_sock.srtt_us) as a log2 histogram. */

/* tcp_sock.srtt_us holds the smoothed RTT in microseconds << 3 (what tcp:tcp_probe's srtt field shows >> 3). */
X0_KFIELD(srtt_us, tcp_sock, srtt_us, u32);

/* Samples with srtt == 0 (no RTT measured yet, e.g. a pure receiver) are skipped. */
BPF_PERCPU_ARRAY(srtt_hist, u64, X0_LOG2_SLOTS);
/* srtt_total[0]: sum of srtt in microseconds, srtt_total[1]: number of samples. */
BPF_PERCPU_ARRAY(srtt_total, u64, 2);

/* Per-connection aggregate keyed by the socket's kernel address (its cookie is only assigned
 * once something asks for it, so most sockets have none); user space drains it every interval,
 * so a key names one live connection within an interval. */
struct conn_rtt {
    u64 srtt_sum_us;
    u64 samples;
};
BPF_PERCPU_HASH(by_conn, u64, struct conn_rtt, 8192);

/* Runs for every ACK-carrying segment of an established connection, in softirq or in the
 * socket owner's context. */
X0_RAW_TP(tcp, tcp_probe, (struct sock *sk, struct sk_buff *skb))
{
    u64 srtt = X0_KREAD(srtt_us, sk) >> 3;
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

    u64 key = (u64)sk;
    struct conn_rtt *c = by_conn.lookup(&key);
    if (!c) {
        struct conn_rtt fresh = {};
        /* BPF_NOEXIST: if another CPU inserted the socket first (-X0_EEXIST) use its entry;
         * any other failure is a full map and the sample is lost for this breakdown. */
        int err = by_conn.insert(&key, &fresh);
        if (err != 0 && err != -X0_EEXIST) {
            X0_LOST();
            return 0;
        }
        c = by_conn.lookup(&key);
        if (!c)
            return 0;
    }
    c->srtt_sum_us += srtt;
    c->samples += 1;
    return 0;
}
