/* runqlat: scheduler run-queue latency (wakeup or preemption -> on CPU) as a log2 histogram in us. */

/* A task waits in the run queue from sched_wakeup/sched_wakeup_new, or from being
 * preempted while runnable, until sched_switch puts it on a CPU. */
#define RQ_MAX_TASKS 16384
BPF_HASH(enqueued_at, u32, u64, RQ_MAX_TASKS);
BPF_PERCPU_ARRAY(runq_hist, u64, X0_LOG2_SLOTS);
/* runq_total[0]: sum of waits in microseconds, runq_total[1]: number of waits. */
BPF_PERCPU_ARRAY(runq_total, u64, 2);

X0_KFIELD(task_pid, task_struct, pid, s32);

/* Wakeups fire from interrupts and softirqs (timers, network), switches on every context
 * switch: as raw tracepoints they are never skipped for another program running on the CPU. */

static __always_inline void rq_enqueue(u32 pid)
{
    if (pid == 0)
        return;
    u64 ts = bpf_ktime_get_ns();
    if (enqueued_at.update(&pid, &ts) != 0)
        X0_LOST();
}

X0_RAW_TP(sched, sched_wakeup, (struct task_struct *p))
{
    rq_enqueue((u32)X0_KREAD(task_pid, p));
    X0_EVENT();
    return 0;
}

X0_RAW_TP(sched, sched_wakeup_new, (struct task_struct *p))
{
    rq_enqueue((u32)X0_KREAD(task_pid, p));
    X0_EVENT();
    return 0;
}

/* prev_state is prev->__state as __schedule() read it: TASK_RUNNING (0) or preemption means
 * prev stays runnable and starts waiting (the classic tracepoint's prev_state reports the same
 * as "no TASK_REPORT bit set"). Kernels before 5.18 do not pass prev_state. */
X0_RAW_TP(sched, sched_switch,
          (bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state))
{
#ifndef X0_ARG__sched__sched_switch__prev_state
#error "runqlat needs sched_switch's prev_state argument (Linux 5.18 or later)"
#endif
    X0_EVENT();
    if (preempt || prev_state == 0)
        rq_enqueue((u32)X0_KREAD(task_pid, prev));

    u32 next_pid = (u32)X0_KREAD(task_pid, next);
    if (next_pid == 0)
        return 0;
    u64 *start = enqueued_at.lookup(&next_pid);
    if (!start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 wait_us = now > *start ? (now - *start) / 1000 : 0;
    enqueued_at.delete(&next_pid);

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
