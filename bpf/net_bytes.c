/* net_bytes: bytes sent/received through IPv4/IPv6 sockets (raw sock:sock_send_length/sock_recv_length), per cgroup. */

#define AF_INET_NUM 2
#define AF_INET6_NUM 10
#define MSG_PEEK_FLAG 2

X0_KFIELD(sk_family, sock, __sk_common.skc_family, u16);

struct io_bytes {
    u64 tx_bytes;
    u64 rx_bytes;
    u64 tx_calls;
    u64 rx_calls;
};

/* Host totals (only grow) and a per-cgroup breakdown that user space drains each interval. */
BPF_PERCPU_ARRAY(totals, struct io_bytes, 1);
BPF_PERCPU_HASH(by_cgroup, u64, struct io_bytes, 4096);

static __always_inline struct io_bytes *nb_cgroup_slot(void)
{
    u64 cg = bpf_get_current_cgroup_id();
    struct io_bytes *b = by_cgroup.lookup(&cg);
    if (b)
        return b;
    struct io_bytes fresh = {};
    /* -X0_EEXIST: another CPU inserted the cgroup first; anything else: the map is full. */
    int err = by_cgroup.insert(&cg, &fresh);
    if (err != 0 && err != -X0_EEXIST) {
        X0_LOST();
        return 0;
    }
    return by_cgroup.lookup(&cg);
}

/* Count one socket call of n bytes in the host totals and the caller's cgroup. */
static __always_inline void nb_account(u64 n, bool tx)
{
    X0_EVENT();
    u32 zero = 0;
    struct io_bytes *slots[2] = {totals.lookup(&zero), nb_cgroup_slot()};
#pragma unroll
    for (int i = 0; i < 2; i++) {
        struct io_bytes *b = slots[i];
        if (!b)
            continue;
        if (tx) {
            b->tx_bytes += n;
            b->tx_calls += 1;
        } else {
            b->rx_bytes += n;
            b->rx_calls += 1;
        }
    }
}

/* Both fire on every send/recv call (millions a second on a busy host). As raw tracepoints
 * they cost no record assembly, and they no longer hold the per-CPU guard shared by classic
 * tracepoint programs, which made the kernel skip tcp_probe events of softirqs interrupting
 * a send. ret and flags are tested before the family, which costs a read of the socket. */
X0_RAW_TP(sock, sock_send_length, (struct sock *sk, int ret, int flags))
{
    if (ret <= 0)
        return 0;
    u16 family = X0_KREAD(sk_family, sk);
    if (family != AF_INET_NUM && family != AF_INET6_NUM)
        return 0;
    nb_account((u64)ret, true);
    return 0;
}

X0_RAW_TP(sock, sock_recv_length, (struct sock *sk, int ret, int flags))
{
    if (ret <= 0 || (flags & MSG_PEEK_FLAG))
        return 0;
    u16 family = X0_KREAD(sk_family, sk);
    if (family != AF_INET_NUM && family != AF_INET6_NUM)
        return 0;
    nb_account((u64)ret, false);
    return 0;
}
