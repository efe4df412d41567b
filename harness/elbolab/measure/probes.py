"""The machine's own limits, measured in the run: memory bandwidth over a sweep of working sets, and
peak flops.

The report places every measurement against these figures (achieved GB/s and GFLOP/s as a share of
what this machine can do) and flags a time that would need more bandwidth than the machine delivers at
the case's working set: a measurement error, not a speed-up. So a ceiling must hold for honest code:
each figure is the best the machine did (best trial, faster kernel), never a typical one.

Bandwidth is a sweep, as the Empirical Roofline Toolkit and likwid-bench measure it, at every thread
count of the run; elbolab.model.roofline reads each case's ceiling at its own working set.

- Sizes: working sets (bytes of the two arrays a kernel streams) from 16 KiB, inside every L1 data
  cache of the last decade (32-48 KiB), doubling. A cache's edge is a cliff within one doubling (on
  the 2-core Ice Lake VM, 1.25 MiB of L2: 1 MiB streamed at ~110 GB/s, 2 MiB at ~30, one thread) and
  a case is held to the probe at or below its working set, so a finer grid would tighten a ceiling
  by at most half a step, for twice the time.
- The top: at least 256 MiB, and on while the curve still falls: the sweep stops once every thread
  count's best rate stayed within SWEEP_FLAT over the last three sizes (the last change at least 4x
  below the top); never past max(4 x the LLC sysfs names, 256 MiB), 1 GiB, or an eighth of the RAM.
  sysfs bounds how far the sweep may go, never where a cache ends: the 2-core H200 VM names its
  host's 300 MiB L3, and the old probe at a quarter of it (75 MiB) measured 24 GB/s where the Rust
  elbo ran at 42 GB/s on 12.8 MB.
- Kernels, float64, counting the bytes a kernel must move (no write-allocate), as STREAM does; the
  ceiling is the faster of the two. read: a . b, 2 words read per element and nothing written, the
  elbo kernels' pattern (they read x and x_recon and write little), as one np.matmul over a view
  whose passes all alias the same memory (_pass_task). copy: np.copyto(b, a), 1 read + 1 write;
  glibc's memmove stores large copies non-temporally, so in DRAM copy's counted rate beats read's
  (about 22 vs 13 GB/s at one thread on the VM).
- Why that read: the fastest NumPy way to stream-read measured on the VM. A loop of np.dot pays
  about 1 us a call (20 GB/s at 16 KiB, where the stride-0 matmul measured 140-190); sum, max and
  bitwise-or reductions, einsum and gemv ran at 28-85 GB/s in L1. And honest hand-vectorised code
  does not beat it: the Rust backend's AVX2 probe (stream.rs read2, (a - b)^2 summed) measured
  90-100 GB/s in L1, 80-105 in L2, 28-32 in L3 and 10-14 in DRAM at one thread, at or under the
  NumPy read at every size; its memcpy copy reached 155-166 in L1, level with the NumPy read there.
- Alignment: the arrays start on a cache line. NumPy's large allocations start 16 bytes into one,
  and every 64-byte AVX-512 load of OpenBLAS's dot then straddles two lines: 52-60 GB/s in L2
  instead of 115-155, under the Rust probe's 105, a ceiling honest code would have beaten.
- Threads: one contiguous chunk per thread in a ThreadPoolExecutor (NumPy drops the GIL inside
  these calls; see _pass_task for when it does not), BLAS held to 1 thread; the threads meet at a
  barrier and a trial runs from the first start to the last end. A trial whose threads did not
  stream together measures less than the machine delivers, never more: its overlap is recorded,
  and more trials are taken when even the best one's threads did not overlap.
- Timing: reps per trial sized (from the previous size's rate, then from a warm-up trial) so a
  trial lasts at least 4 ms (2 ms quick), far above perf_counter's resolution and a barrier's
  wake-up; best of 5 trials (3 quick), as STREAM reports: the ceiling is the best the machine did,
  a case is its median.

Peak flops: a square matrix product (np.matmul through the BLAS NumPy links), float64 and float32,
with the BLAS pool limited to 1 thread and to all threads by threadpoolctl; 2n^3 flops per product.

`measure_limits(threads, quick)` returns a JSON-able dict stored under "limits" in the results file;
`probe_bandwidth(working_set_bytes, threads)` measures one working set again, now: the runner's
re-probe before it calls a case implausible (a neighbour's load during the sweep lowers a figure).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided
from threadpoolctl import threadpool_info, threadpool_limits

FALLBACK_LLC_BYTES = 32 * 2**20

SWEEP_FIRST_BYTES = 16 * 2**10  # inside every L1 data cache of the last decade (32-48 KiB)
SWEEP_MIN_TOP_BYTES = 256 * 2**20  # the sweep always reaches this far ...
SWEEP_MAX_TOP_BYTES = 2**30  # ... and never beyond this (nor an eighth of the RAM)
SWEEP_FLAT = 0.10  # the top: every thread count's best within 10% over the last three sizes
KERNELS = ("read", "copy")
BYTES_PER_ELEMENT = 16  # both kernels move 2 float64 words per element: a[i], b[i]
ALIGN_BYTES = 64  # a cache line (see SWEEP_NOTES: alignment)
FIRST_GUESS_BYTES_PER_S = 100e9  # sizes the first warm-up trial only
MIN_OVERLAP = 0.9  # a multi-thread trial counts as parallel when its threads ran together this long
GIL_ROWS = 1024  # rows per read call at least: NumPy releases the GIL only in long outer loops (~500)
READ_ROW_MIN = 256  # elements per dot call at least (2 KiB of each array: the call's cost stays small)
READ_ROW_MAX = 8192  # ... and at most, once the rows are enough (64 KiB of each array)


@dataclass(frozen=True)
class Timing:
    """How long one trial of a probe lasts at least, and how many trials give its best."""

    target_s: float
    trials: int


NORMAL = Timing(target_s=0.004, trials=5)
QUICK = Timing(target_s=0.002, trials=3)

SWEEP_NOTES = {
    "bandwidth": (
        "two NumPy kernels, float64, at every working set and thread count; bytes counted are those the "
        "kernel must move (no write-allocate), best trial kept (STREAM's convention); the ceiling is the "
        "faster. read: a . b, 2 words read per element, nothing written (the elbo kernels' pattern): one "
        "np.matmul over a (reps, k, 1, L) view of a whose reps axis has stride 0 (every pass reads the "
        "same memory, without Python's cost per call) against b as (k, L, 1), k rows so NumPy drops the "
        "GIL. copy: np.copyto(b, a) reps times, 2 words (1 read + 1 write). Arrays 64-byte aligned. One "
        "contiguous chunk per thread in a ThreadPoolExecutor, BLAS held to 1 thread; "
        "the threads meet at a barrier, a trial runs from the first start to the last end and records "
        "how long they streamed together (more trials when even the best did not)"
    ),
    "sizes": (
        "working set = bytes of the two arrays; 16 KiB doubling up to >= 256 MiB and on until every "
        "thread count's best is within 10% over the last three sizes (the last change at least 4x below "
        "the top), at most min(max(4 x the LLC sysfs names, 256 MiB), 1 GiB, RAM/8): sysfs bounds how far "
        "the sweep goes, never where the cache ends"
    ),
}


def last_level_cache_bytes() -> tuple[int, str]:
    """Size of the largest CPU cache (Linux sysfs), or a 32 MiB guess; with where it came from."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in base.glob("index*"):
            text = (index / "size").read_text().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            value = int(text.rstrip("KMG")) * mult
            best = max(best, value)
    except (OSError, ValueError):
        best = 0
    if best:
        return best, "sysfs"
    return FALLBACK_LLC_BYTES, "guess (no sysfs cache info)"


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def sweep_sizes(llc_bytes: int, memory_bytes: int | None = None) -> list[int]:
    """Every working set the sweep may probe: 16 KiB doubling up to its cap (it stops earlier where
    the curve is flat). sysfs's LLC size only sets the cap: a VM may name its host's whole cache."""
    cap = min(max(4 * llc_bytes, SWEEP_MIN_TOP_BYTES), SWEEP_MAX_TOP_BYTES)
    if memory_bytes:
        cap = min(cap, memory_bytes // 8)
    sizes = [SWEEP_FIRST_BYTES]
    while sizes[-1] * 2 <= cap:
        sizes.append(sizes[-1] * 2)
    return sizes


def _aligned_ones(n: int) -> np.ndarray:
    """n float64 ones starting on a cache-line boundary, every page written (mapped before timing)."""
    raw = np.empty(n + ALIGN_BYTES // 8, dtype=np.float64)
    skip = (-raw.ctypes.data % ALIGN_BYTES) // 8
    out = raw[skip : skip + n]
    out.fill(1.0)
    return out


def _chunks(n: int, parts: int) -> list[slice]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _read_rows(m: int, reps: int) -> int:
    """Into how many rows (one dot call each) the read kernel splits a pass over m elements: enough
    that a call's outer loop has GIL_ROWS iterations, each row READ_ROW_MIN to READ_ROW_MAX long."""
    k = max(m // READ_ROW_MAX, math.ceil(GIL_ROWS / reps))
    return max(1, min(k, m // READ_ROW_MIN))


def _pass_task(kernel: str, a: np.ndarray, b: np.ndarray, reps: int) -> tuple[Callable[[], None], int]:
    """`reps` passes of a kernel over one thread's chunk (a, b), and the elements one pass touches."""
    if kernel == "read":
        # one matmul call: (reps, k, 1, L) @ (k, L, 1) is reps x k dot products; the reps axis has
        # stride 0, so every pass reads the same memory, as a Python loop of np.dot would without its
        # microsecond per call. The k rows split a pass so NumPy releases the GIL: it keeps the GIL
        # through a call whose outer loop is short (14 passes of one row each held it, and a second
        # thread started only when the first had finished; 14 x 64 rows released it). The last
        # m mod k elements (fewer than m / READ_ROW_MIN) are left out, and not counted.
        k = _read_rows(a.size, reps)
        length = a.size // k
        step = a.strides[0]
        rows = as_strided(a, shape=(reps, k, 1, length), strides=(0, length * step, 0, step), writeable=False)
        cols = as_strided(b, shape=(k, length, 1), strides=(length * step, step, 0), writeable=False)
        out = np.empty((reps, k, 1, 1), dtype=a.dtype)
        return (lambda: np.matmul(rows, cols, out=out)), k * length

    def copy() -> None:
        for _ in range(reps):
            np.copyto(b, a)

    return copy, a.size


def _trial(pool: ThreadPoolExecutor | None, tasks: list[Callable[[], None]]) -> tuple[float, float]:
    """(seconds, overlap) of one trial: from the first thread's start to the last one's end (the
    threads wait at a barrier, so the pool's dispatch is not counted as streaming time), and the
    share of that time all threads were streaming together (1.0 for one thread)."""
    if pool is None or len(tasks) == 1:
        start = time.perf_counter()
        for task in tasks:
            task()
        return time.perf_counter() - start, 1.0
    barrier = threading.Barrier(len(tasks), timeout=60)

    def timed(task: Callable[[], None]) -> tuple[float, float]:
        barrier.wait()
        start = time.perf_counter()
        task()
        return start, time.perf_counter()

    spans = [future.result() for future in [pool.submit(timed, task) for task in tasks]]
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    together = min(e for _, e in spans) - max(s for s, _ in spans)
    return last - first, max(together, 0.0) / max(last - first, 1e-12)


def _probe(
    kernel: str, a: np.ndarray, b: np.ndarray, threads: int, pool, timing: Timing, guess: float
) -> dict:
    """One kernel over all of a and b (one chunk per thread): best bytes/s over the trials.

    A trial whose threads did not stream together (a neighbour's process on one CPU: its chunk
    starts late or crawls) measures less than the machine delivers, never more; when even the best
    trial overlapped less than MIN_OVERLAP, up to as many trials again are taken.
    """
    parts = _chunks(a.size, threads)
    reps = max(1, round(timing.target_s * guess / (BYTES_PER_ELEMENT * a.size)))
    # warm-up (caches filled, code paths hot), then reps rescaled from its time
    elapsed, _ = _trial(pool, [_pass_task(kernel, a[p], b[p], reps)[0] for p in parts])
    reps = max(1, math.ceil(reps * timing.target_s / max(elapsed, 1e-9)))
    tasks, elements = zip(*(_pass_task(kernel, a[p], b[p], reps) for p in parts), strict=True)
    bytes_per_rep = BYTES_PER_ELEMENT * sum(elements)
    trials = [_trial(pool, list(tasks)) for _ in range(timing.trials)]
    while min(trials)[1] < MIN_OVERLAP and len(trials) < 2 * timing.trials:
        trials.append(_trial(pool, list(tasks)))
    best = min(trials)
    return {
        "reps": reps,
        "bytes_per_rep": bytes_per_rep,
        "trial_s": [t for t, _ in trials],
        "overlap": [round(o, 3) for _, o in trials],
        "bytes_per_s": bytes_per_rep * reps / best[0],
    }


def _sweep_row(a, b, threads, pool, timing: Timing, guesses: dict) -> dict:
    row: dict = {"working_set_bytes": BYTES_PER_ELEMENT * a.size, "threads": threads}
    for kernel in KERNELS:
        guess = guesses.get((kernel, threads), FIRST_GUESS_BYTES_PER_S)
        probe = _probe(kernel, a, b, threads, pool, timing, guess)
        guesses[(kernel, threads)] = probe["bytes_per_s"]  # the next size starts from this rate
        row[f"{kernel}_bytes_per_s"] = probe.pop("bytes_per_s")
        row[kernel] = probe
    return row


def best_rate(row: dict) -> float:
    """The faster kernel's bytes/s in one sweep row."""
    return max(row[f"{kernel}_bytes_per_s"] for kernel in KERNELS)


def _flat(rows: list[dict], threads: list[int]) -> bool:
    """True when, at every thread count, the last three sizes' best rates are within SWEEP_FLAT."""
    for t in threads:
        last = [best_rate(r) for r in rows if r["threads"] == t][-3:]
        if len(last) < 3 or (max(last) - min(last)) > SWEEP_FLAT * max(last):
            return False
    return True


def measure_bandwidth(threads: list[int], quick: bool, llc_bytes: int) -> list[dict]:
    """The sweep: one row per (working set, thread count), sizes ascending, thread counts interleaved
    at each size (a neighbour's load then touches every count alike)."""
    timing = QUICK if quick else NORMAL
    sizes = sweep_sizes(llc_bytes, _physical_memory_bytes())
    rows: list[dict] = []
    guesses: dict = {}
    a = b = None
    # allocated once up to the size every sweep reaches, again only when the curve goes on falling
    capacity = 0
    with ThreadPoolExecutor(max_workers=max(threads)) as pool, threadpool_limits(limits=1, user_api="blas"):
        for size in sizes:
            n = size // BYTES_PER_ELEMENT
            if n > capacity:
                a = b = None  # free the old pair before the new one is touched
                capacity = max(n, min(SWEEP_MIN_TOP_BYTES, sizes[-1]) // BYTES_PER_ELEMENT)
                a, b = _aligned_ones(capacity), _aligned_ones(capacity)
            for t in threads:
                rows.append(_sweep_row(a[:n], b[:n], t, pool, timing, guesses))
            if size >= SWEEP_MIN_TOP_BYTES and _flat(rows, threads):
                break
    return rows


def probe_bandwidth_row(working_set_bytes: int, threads: int, quick: bool = False) -> dict:
    """Both kernels at one working set and thread count, now: a row shaped like the sweep's."""
    n = max(int(working_set_bytes) // BYTES_PER_ELEMENT, 64 * threads)
    a, b = _aligned_ones(n), _aligned_ones(n)
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else nullcontext()
    with pool as executor, threadpool_limits(limits=1, user_api="blas"):
        return _sweep_row(a, b, threads, executor, QUICK if quick else NORMAL, {})


def probe_bandwidth(working_set_bytes: int, threads: int, quick: bool = False) -> float:
    """Bytes/s the machine delivers now at this working set and thread count (the faster of the
    sweep's two kernels): the re-probe the runner takes before it calls a case implausible."""
    return best_rate(probe_bandwidth_row(working_set_bytes, threads, quick))


def measure_flops(threads: list[int], quick: bool) -> list[dict]:
    """The matrix-product rate of each library that can multiply here, per dtype and thread count.

    A ceiling must be the machine's, not one library's: on the 2-core VM NumPy's float32 product
    measured 105 GFLOP/s on one core in one make bench and 133 in the next, and torch's honest
    vae_step ran at 101% of the lower; at 2 threads torch's float64 product makes 142 GFLOP/s where
    NumPy's makes 96. So torch is probed too where it is installed (its import, ~2 s, is paid once a
    run); the ceiling is the best of them."""
    rows = []
    rng = np.random.default_rng(0)
    torch = _torch_or_none()
    for dtype in ("float64", "float32"):
        n = (512 if dtype == "float64" else 768) if quick else (1024 if dtype == "float64" else 1536)
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        out = np.empty((n, n), dtype=dtype)
        for t in threads:
            with threadpool_limits(limits=t, user_api="blas"):
                times = _time_product(functools.partial(np.matmul, a, b, out=out), quick)
            rows.append(_flops_row("numpy", dtype, t, n, times))
            if torch is not None:
                ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
                before = torch.get_num_threads()
                torch.set_num_threads(t)
                try:
                    times = _time_product(functools.partial(torch.matmul, ta, tb, out=tout), quick)
                finally:
                    torch.set_num_threads(before)
                rows.append(_flops_row("torch", dtype, t, n, times))
    return rows


def _torch_or_none():
    """torch where it is installed (the lab's gpu extra), else None: a library not there is no ceiling."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch  # heavy: only for the probe, only where installed
    except Exception:  # a broken install costs this library's row, not the run
        return None
    return torch


def _time_product(product: Callable[[], object], quick: bool) -> list[float]:
    """Seconds of each product after a warm-up: at least 2, then until the budget or 20."""
    product()  # warm-up
    times: list[float] = []
    budget = 0.15 if quick else 0.8
    start = time.perf_counter()
    while len(times) < 2 or (time.perf_counter() - start < budget and len(times) < 20):
        t0 = time.perf_counter()
        product()
        times.append(time.perf_counter() - t0)
    return times


def _flops_row(library: str, dtype: str, threads: int, n: int, times: list[float]) -> dict:
    return {"library": library, "dtype": dtype, "threads": threads, "n": n, "flops_per_product": 2 * n**3,
            "trial_s": times, "flops_per_s": 2 * n**3 / min(times)}  # fmt: skip


def _blas_info() -> list[dict]:
    try:
        return [
            {k: info.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "architecture")}
            for info in threadpool_info()
        ]
    except Exception as exc:  # pragma: no cover - informational only
        return [{"error": f"{exc.__class__.__name__}: {exc}"}]


def measure_limits(threads: list[int] | None = None, quick: bool = False) -> dict:
    """Measure memory bandwidth and peak flops at each thread count (1 and all are always included).

    The ceilings are in "bandwidth_sweep" (read by elbolab.model.roofline.bandwidth_limit_for) and
    "flops". Headline figures: memory_bandwidth_bytes_per_s is the best rate at the sweep's largest
    working set at the most threads (and at 1 thread), cache_bandwidth_bytes_per_s the best at 256 KiB
    (an L2-sized working set) at the most threads, peak_flops the best float64 matrix-product rate.
    How each was measured is under "method".
    """
    cores = os.cpu_count() or 1
    counts = sorted({1, *(int(t) for t in (threads or [cores]) if int(t) >= 1)})
    start = time.perf_counter()
    llc, llc_source = last_level_cache_bytes()
    sweep = measure_bandwidth(counts, quick, llc)
    sweep_s = time.perf_counter() - start
    flop_rows = measure_flops(counts, quick)
    top = max(counts)
    largest = max(r["working_set_bytes"] for r in sweep)

    def best_at(size: int, t: int) -> float:
        return best_rate(next(r for r in sweep if r["working_set_bytes"] == size and r["threads"] == t))

    def best_flops(dtype: str, t: int | None = None) -> float:
        return max(
            r["flops_per_s"] for r in flop_rows if r["dtype"] == dtype and (t is None or r["threads"] == t)
        )

    gpus = measure_gpu_limits(quick)
    return {
        "gpus": gpus,
        "memory_bandwidth_bytes_per_s": best_at(largest, top),
        "memory_bandwidth_single_thread_bytes_per_s": best_at(largest, 1),
        "cache_bandwidth_bytes_per_s": best_at(256 * 2**10, top),
        "peak_flops": best_flops("float64"),
        "peak_flops_float32": best_flops("float32"),
        "peak_flops_single_thread": best_flops("float64", 1),
        "threads": counts,
        "last_level_cache_bytes": llc,
        "last_level_cache_source": llc_source,
        "bandwidth_sweep": sweep,
        "flops": flop_rows,
        "quick": quick,
        "duration_s": time.perf_counter() - start,
        "bandwidth_sweep_s": sweep_s,
        "blas": _blas_info(),
        "machine": platform.machine(),
        "method": {
            **SWEEP_NOTES,
            "timing": f"a trial lasts >= {(QUICK if quick else NORMAL).target_s * 1e3:g} ms; best of "
            f"{(QUICK if quick else NORMAL).trials} trials after a warm-up",
            "flops": "the product of two n x n matrices (2 n^3 flops), float64 and float32, by np.matmul (BLAS "
            "threads set with threadpoolctl) and, where torch is installed, torch.matmul (torch.set_num_threads); "
            "best of the trials, the ceiling the best library's",
            "gpus": GPU_METHOD,
        },
    }


# ------------------------------------------------------------------------------------------ GPUs

GPU_METHOD = (
    "per CUDA device, with torch, timed with CUDA events (best of the trials): HBM read (x.sum() over "
    "a float32 array of 1 GiB, 512 MiB quick: 1 word read per element) and copy (y.copy_(x): 1 read + "
    "1 write); peak flops from n x n matrix products (2 n^3): float64, float32 with TF32 off, TF32, "
    "bfloat16 (n = 8192, 4096 quick)"
)


# what a GPU driver creates: NVIDIA's (Linux), AMD's ROCm (torch.cuda on ROCm builds), WSL's
GPU_DRIVER_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def measure_gpu_limits(quick: bool = False) -> list[dict]:
    """HBM bandwidth and peak FLOP/s of each CUDA device ([] without a GPU driver or torch). The
    probe runs in the process that calls it (the runner, before any case): the numbers belong to
    the run. A device that cannot be probed is listed with its `error` instead of the figures (its
    cases then have no GPU limit, which the report says on each of their rows), never a lost run."""
    if not any(os.path.exists(node) for node in GPU_DRIVER_NODES):
        return []  # no GPU driver: importing torch only to learn so took 3.6 s of every run
    try:
        import torch
    except ImportError:
        return []
    try:
        if not torch.cuda.is_available():
            return [{"device": "cuda", "error": "a GPU driver is here but torch.cuda.is_available() is False",
                     "method": GPU_METHOD}]  # fmt: skip
        count = torch.cuda.device_count()
    except Exception as exc:  # a broken driver or runtime
        return [{"device": "cuda", "error": f"{type(exc).__name__}: {exc}", "method": GPU_METHOD}]
    out = []
    for index in range(count):
        device = torch.device("cuda", index)
        try:
            with torch.cuda.device(device):
                out.append(_probe_gpu(torch, device, quick))
        except Exception as exc:  # e.g. out of memory on a GPU that others use
            out.append({"device": str(device), "error": f"{type(exc).__name__}: {exc}", "method": GPU_METHOD})
        finally:
            torch.cuda.empty_cache()  # the runner holds no probe memory while its workers measure
    return out


def _event_seconds(torch, fn, reps: int, trials: int) -> float:
    """Best time of `reps` calls over `trials`, with CUDA events around the calls."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / reps)
    return best


def _probe_gpu(torch, device, quick: bool) -> dict:
    nbytes = (512 if quick else 1024) * 2**20
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    read = nbytes / _event_seconds(torch, lambda: x.sum(), reps=10, trials=5)
    copy = 2 * nbytes / _event_seconds(torch, lambda: y.copy_(x), reps=10, trials=5)
    x = y = None  # free the HBM for the products
    n = 4096 if quick else 8192
    flops = {}
    allow = torch.backends.cuda.matmul.allow_tf32
    try:
        for label, dtype, tf32 in (("float64", torch.float64, False), ("float32", torch.float32, False),
                                   ("tf32", torch.float32, True), ("bfloat16", torch.bfloat16, False)):  # fmt: skip
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, dtype=dtype, device=device)
            reps = 2 if label == "float64" else 10
            flops[label] = 2 * n**3 / _event_seconds(torch, lambda a=a: a @ a, reps=reps, trials=3)
            a = None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    props = torch.cuda.get_device_properties(device)
    return {"device": str(device), "name": props.name, "memory_bytes": props.total_memory,
            "hbm_read_bytes_per_s": read, "hbm_copy_bytes_per_s": copy, "flops_per_s": flops,
            "method": GPU_METHOD}  # fmt: skip
