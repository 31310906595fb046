/* runqlat: scheduler run-queue latency (wakeup or preemption -> on CPU) as a log2 histogram in us. */

/* A task waits in the run queue from sched_wakeup/sched_wakeup_new, or from being
 * preempted while runnable, until sched_switch puts it on a CPU. */
#define RQ_MAX_TASKS 16384
BPF_HASH(enqueued_at, u32, u64, RQ_MAX_TASKS);
BPF_PERCPU_ARRAY(runq_hist, u64, X0_LOG2_SLOTS);
/* runq_total[0]: sum of waits in microseconds, runq_total[1]: number of waits. */
BPF_PERCPU_ARRAY(runq_total, u64, 2);

/* prev_state bits below 0x100 are the TASK_REPORT states; none set means the task
 * was still runnable (preempted), 0x100 (TASK_REPORT_MAX) marks the preemption. */
#define RQ_TASK_REPORT_MASK 0xff

static __always_inline void rq_enqueue(u32 pid)
{
    if (pid == 0)
        return;
    u64 ts = bpf_ktime_get_ns();
    if (enqueued_at.update(&pid, &ts) != 0)
        X0_LOST();
}

X0_TP(sched, sched_wakeup)
{
    rq_enqueue(args->pid);
    X0_EVENT();
    return 0;
}

X0_TP(sched, sched_wakeup_new)
{
    rq_enqueue(args->pid);
    X0_EVENT();
    return 0;
}

X0_TP(sched, sched_switch)
{
    X0_EVENT();
    if ((args->prev_state & RQ_TASK_REPORT_MASK) == 0)
        rq_enqueue(args->prev_pid);

    u32 next = args->next_pid;
    if (next == 0)
        return 0;
    u64 *start = enqueued_at.lookup(&next);
    if (!start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 wait_us = now > *start ? (now - *start) / 1000 : 0;
    enqueued_at.delete(&next);

    u32 slot = x0_log2_slot(wait_us);
    if (slot >= X0_LOG2_SLOTS)
        slot = X0_LOG2_SLOTS - 1;
    u64 *v = runq_hist.lookup(&slot);
    if (v)
        *v += 1;
    u32 k = 0;
    v = runq_total.lookup(&k);
    if (v)
        *v += wait_us;
    k = 1;
    v = runq_total.lookup(&k);
    if (v)
        *v += 1;
    return 0;
}
