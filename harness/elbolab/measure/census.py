"""Who did the work: the threads and processes of a worker while a case is sampled, counted from
/proc, not inferred, and the cores the case is held to.

A case asks for a number of threads. The worker's threads are pinned to that many cores while the
case is open (sched_setaffinity on every thread; threads and processes started later inherit it),
so more threads than asked cannot make a case faster, and the census records what ran: the CPU
time each thread spent while the case was sampled (schedstat: nanoseconds on a CPU), the threads
that ended in between (the process's CPU time beyond its live threads'), and the child processes
with their CPU time. A thread is busy when it spent more than BUSY_SHARE of the process's CPU
time while sampling; a case whose busy threads outnumber the threads asked, or that started a process,
did its work with more than it asked for (elbolab.measure.evidence judges it).

Linux only (/proc, sched_setaffinity); elsewhere the census is empty and says so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil

# A thread is busy (doing the case's work) when it spent this share of the process's CPU time while
# sampling: a share of the CPU, not of the wall time, so that load from elsewhere on the machine,
# which stretches the wall time, cannot hide a second thread
BUSY_SHARE = 0.2


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _thread_cpu_ns(tid: int) -> int | None:
    """Nanoseconds thread `tid` of this process has run on a CPU (schedstat; else stat's ticks)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


# The cores this process may use, as it started: after a pin, sched_getaffinity(0) answers the pin
# (the calling thread's), so "every core" must be remembered from before. It was not: a worker
# pinned to one core for a one-thread cell kept that core for the next cell's two threads, and
# torch's elbo at batch 128 ran its 2 threads on 1 core at 40 ms a call instead of 0.35 ms.
_USABLE = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def pin(cpus: set[int] | None) -> tuple[int, ...] | None:
    """Every thread of this process on `cpus` (None: every core this process could use when it
    started). Returns the cores, or None where affinity cannot be set."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    target = cpus or set(_USABLE)
    for tid in _thread_ids():
        try:
            os.sched_setaffinity(tid, target)
        except OSError:  # a thread that has just ended
            pass
    return tuple(sorted(target))


def usable_cpus() -> list[int]:
    return sorted(_USABLE)


def children_now() -> set[int]:
    """The processes this one has started, and theirs."""
    try:
        return {kid.pid for kid in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


@dataclass
class Census:
    """CPU time per thread and in child processes, summed over the sampling blocks of one case."""

    wall_ns: int = 0
    process_cpu_ns: int = 0
    thread_cpu_ns: dict[int, int] = field(default_factory=dict)
    children: dict[int, int] = field(default_factory=dict)  # pid -> CPU ns, as last seen
    # the processes there before the case opened (in a worker none; in a test's process, pytest's
    # own helpers): not the case's, never counted or ended
    before: set[int] = field(default_factory=children_now)
    _start: tuple | None = None

    @property
    def children_cpu_ns(self) -> int:
        return sum(self.children.values())

    def begin(self) -> None:
        self._start = (time.perf_counter_ns(), time.process_time_ns(),
                       {t: _thread_cpu_ns(t) for t in _thread_ids()})  # fmt: skip

    def end(self) -> None:
        if self._start is None:
            return
        wall0, cpu0, threads0 = self._start
        self.wall_ns += time.perf_counter_ns() - wall0
        self.process_cpu_ns += time.process_time_ns() - cpu0
        for tid in _thread_ids():
            now = _thread_cpu_ns(tid)
            if now is None:
                continue
            before = threads0.get(tid) or 0  # a thread started during the block: all its time
            self.thread_cpu_ns[tid] = self.thread_cpu_ns.get(tid, 0) + max(0, now - before)
        self._count_children()
        self._start = None

    def _count_children(self) -> None:
        try:
            kids = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        for kid in kids:
            if kid.pid in self.before:
                continue
            try:
                t = kid.cpu_times()
                self.children[kid.pid] = int((t.user + t.system) * 1e9)
            except psutil.Error:
                self.children.setdefault(kid.pid, 0)

    @property
    def busy_threads(self) -> int:
        """Threads that did work: live ones over BUSY_SHARE of the process's CPU time, plus one when
        threads that ended in between ran that long together."""
        if not self.wall_ns or not self.process_cpu_ns:
            return 0
        floor = BUSY_SHARE * self.process_cpu_ns
        busy = sum(1 for ns in self.thread_cpu_ns.values() if ns > floor)
        ended = self.process_cpu_ns - sum(self.thread_cpu_ns.values())
        return busy + (1 if ended > floor else 0)


def end_children(keep: set[int] = frozenset()) -> int:
    """Kill every process this one started but those in `keep` (a backend's children must not
    outlive its case; a process that was there before the case opened is not the case's)."""
    try:
        kids = [kid for kid in psutil.Process().children(recursive=True) if kid.pid not in keep]
    except psutil.Error:
        return 0
    for kid in kids:
        try:
            kid.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(kids, timeout=5)
    return len(kids)
