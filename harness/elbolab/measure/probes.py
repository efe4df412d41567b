"""The machine's own limits, measured in the run: memory bandwidth and peak flops.

The report places every measurement against these figures (achieved GB/s and GFLOP/s as a share of
what this machine can do) and flags a time that would need more bandwidth than the machine has: that
is a measurement error, not a speed-up.

Memory bandwidth is a STREAM-like probe in NumPy: `copy` (b = a, np.copyto; 2 words moved per element:
one read, one write) and `add` (c = a + b, np.add(..., out=c); 3 words: two reads, one write). Like
STREAM, the bytes counted are the ones the kernel must move (no write-allocate traffic) and the best
trial is reported. It runs at several working-set sizes that match the cases (the elbo kernel at batch
1 ... 8192 touches 13 KB ... 100 MB): in the private cache, about the size of a batch-128 case, a quarter
of the last-level cache, and in DRAM (at least 4x the last-level cache). A quarter, not a half: the
last-level cache a core can fill is often smaller than the one sysfs names (shared with neighbours,
or split between core complexes), and at half of it a probe sits at that edge. On the 2-core EPYC VM
(32 MB named) the one-thread figure held at 60-64 GB/s from 4 to 12 MB, fell to 52 GB/s at 16.7 MB
(35 GB/s in one make bench, under load), and to 19 GB/s at 24 MB; rust-inner's elbo at batch 1024
(6.7 MB) then measured 130% of the "limit". Threads: the arrays are split into
one contiguous chunk per thread and each thread runs the ufunc over its own chunk, `reps` times, in a
ThreadPoolExecutor (NumPy releases the GIL inside large ufuncs and copies), so all threads stream at
once and the pool's overhead is paid once per trial.

Peak flops: a square matrix product (np.matmul through the BLAS NumPy links), float64 and float32,
with the BLAS pool limited to 1 thread and to all threads by threadpoolctl; 2n^3 flops per product.

`measure_limits(threads, quick)` returns a JSON-able dict stored under "limits" in the results file.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

PROBE_WORDS = {"copy": 2, "add": 3}  # 8-byte words moved per element (reads + writes)
FALLBACK_LLC_BYTES = 32 * 2**20
MIN_DRAM_BYTES = 256 * 2**20


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


def working_sets(llc_bytes: int) -> list[tuple[str, int]]:
    """(label, total bytes of all arrays of the largest probe) for the sizes probed."""
    return [
        ("l2", 256 * 2**10),
        ("batch128", 2 * 2**20),  # ~ an elbo case at batch 128 (1.7 MB in float64)
        ("llc", max(llc_bytes // 4, 4 * 2**20)),  # well inside it (see the module docstring)
        ("dram", max(4 * llc_bytes, MIN_DRAM_BYTES)),
    ]


def _chunks(n: int, parts: int) -> list[slice]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _run_parallel(pool: ThreadPoolExecutor | None, tasks: list[Callable[[], None]]) -> float:
    start = time.perf_counter()
    if pool is None or len(tasks) == 1:
        for task in tasks:
            task()
    else:
        for future in [pool.submit(task) for task in tasks]:
            future.result()
    return time.perf_counter() - start


def _bandwidth_probe(
    probe: str, arrays: dict[str, np.ndarray], n: int, threads: int, pool, target_s: float, trials: int
) -> dict:
    a, b, c = arrays["a"][:n], arrays["b"][:n], arrays["c"][:n]
    parts = _chunks(n, threads)

    def task_for(part: slice, reps_box: list[int]) -> Callable[[], None]:
        if probe == "copy":
            src, dst = a[part], b[part]

            def run() -> None:
                for _ in range(reps_box[0]):
                    np.copyto(dst, src)
        else:
            x, y, out = a[part], b[part], c[part]

            def run() -> None:
                for _ in range(reps_box[0]):
                    np.add(x, y, out=out)

        return run

    reps_box = [1]
    tasks = [task_for(p, reps_box) for p in parts]
    _run_parallel(pool, tasks)  # warm-up: pages touched, caches filled
    # calibrate: grow reps until a trial is long enough that thread start-up is noise
    while True:
        elapsed = max(_run_parallel(pool, tasks), 1e-7)
        if elapsed >= target_s / 4 or reps_box[0] >= 1_000_000:
            break
        reps_box[0] = max(reps_box[0] * 2, min(reps_box[0] * 20, int(reps_box[0] * target_s / (2 * elapsed))))
    reps_box[0] = max(1, int(reps_box[0] * target_s / elapsed))
    bytes_per_rep = PROBE_WORDS[probe] * n * a.itemsize
    times = [_run_parallel(pool, tasks) for _ in range(trials)]
    best = min(times)
    return {
        "probe": probe,
        "threads": threads,
        "elements": n,
        "bytes_per_rep": bytes_per_rep,
        "reps": reps_box[0],
        "trial_s": times,
        "bytes_per_s": bytes_per_rep * reps_box[0] / best,
    }


def measure_bandwidth(threads: list[int], quick: bool) -> tuple[list[dict], int, str]:
    llc, llc_source = last_level_cache_bytes()
    sizes = working_sets(llc)
    largest = max(size for _, size in sizes)
    n_max = largest // (3 * 8)
    # one allocation for all sizes, written once so every page is mapped before any timing
    arrays = {k: np.full(n_max, 1.0 + i, dtype=np.float64) for i, k in enumerate("abc")}
    target_s = 0.008 if quick else 0.03
    trials = 3 if quick else 5
    rows = []
    with ThreadPoolExecutor(max_workers=max(threads)) as pool:
        for label, size in sizes:
            for t in threads:
                for probe in PROBE_WORDS:
                    # the largest probe (add, 3 arrays) fills the working set; copy uses 2 of them
                    n = size // (3 * 8)
                    n = max(n - n % max(t, 1), t)
                    row = _bandwidth_probe(probe, arrays, n, t, pool, target_s, trials)
                    row.update(size_label=label, working_set_bytes=PROBE_WORDS[probe] * n * 8)
                    rows.append(row)
    return rows, llc, llc_source


def measure_flops(threads: list[int], quick: bool) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for dtype in ("float64", "float32"):
        n = (512 if dtype == "float64" else 768) if quick else (1024 if dtype == "float64" else 1536)
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        out = np.empty((n, n), dtype=dtype)
        for t in threads:
            with threadpool_limits(limits=t, user_api="blas"):
                np.matmul(a, b, out=out)  # warm-up
                times = []
                budget = 0.15 if quick else 0.8
                start = time.perf_counter()
                while len(times) < 2 or (time.perf_counter() - start < budget and len(times) < 20):
                    t0 = time.perf_counter()
                    np.matmul(a, b, out=out)
                    times.append(time.perf_counter() - t0)
            rows.append(
                {
                    "dtype": dtype,
                    "threads": t,
                    "n": n,
                    "flops_per_product": 2 * n**3,
                    "trial_s": times,
                    "flops_per_s": 2 * n**3 / min(times),
                }
            )
    return rows


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

    Headline figures: memory_bandwidth_bytes_per_s is the best DRAM figure at the most threads,
    peak_flops the best float64 matrix-product rate. Everything measured is kept under "bandwidth"
    and "flops", with how it was measured under "method".
    """
    cores = os.cpu_count() or 1
    counts = sorted({1, *(int(t) for t in (threads or [cores]) if int(t) >= 1)})
    start = time.perf_counter()
    bw_rows, llc, llc_source = measure_bandwidth(counts, quick)
    flop_rows = measure_flops(counts, quick)
    top = max(counts)

    def best_bw(label: str, t: int) -> float:
        return max(r["bytes_per_s"] for r in bw_rows if r["size_label"] == label and r["threads"] == t)

    def best_flops(dtype: str, t: int | None = None) -> float:
        return max(
            r["flops_per_s"] for r in flop_rows if r["dtype"] == dtype and (t is None or r["threads"] == t)
        )

    by_size = []
    for label, _ in working_sets(llc):
        rows = [r for r in bw_rows if r["size_label"] == label]
        by_size.append(
            {
                "size_label": label,
                "working_set_bytes": max(r["working_set_bytes"] for r in rows),
                "bytes_per_s": {str(t): best_bw(label, t) for t in counts},
            }
        )
    gpus = measure_gpu_limits(quick)
    return {
        "gpus": gpus,
        "memory_bandwidth_bytes_per_s": best_bw("dram", top),
        "memory_bandwidth_single_thread_bytes_per_s": best_bw("dram", 1),
        "cache_bandwidth_bytes_per_s": best_bw("l2", top),
        "peak_flops": best_flops("float64"),
        "peak_flops_float32": best_flops("float32"),
        "peak_flops_single_thread": best_flops("float64", 1),
        "threads": counts,
        "last_level_cache_bytes": llc,
        "last_level_cache_source": llc_source,
        "bandwidth_by_size": by_size,
        "bandwidth": bw_rows,
        "flops": flop_rows,
        "quick": quick,
        "duration_s": time.perf_counter() - start,
        "blas": _blas_info(),
        "machine": platform.machine(),
        "method": {
            "bandwidth": "STREAM-like NumPy probes, float64: copy (np.copyto, 2 words/element: 1 read + "
            "1 write) and add (np.add(a, b, out=c), 3 words: 2 reads + 1 write); no write-allocate "
            "traffic counted; arrays split into one chunk per thread, each thread repeats its ufunc "
            "`reps` times in a ThreadPoolExecutor (NumPy releases the GIL); best of the trials",
            "sizes": "working set = total bytes of the arrays a probe touches: l2 256 KiB, batch128 "
            "2 MiB (an elbo case at batch 128), llc a quarter of the last-level cache, dram max(4 x LLC, 256 MiB)",
            "flops": "np.matmul of two n x n matrices (2 n^3 flops), float64 and float32, BLAS threads set "
            "with threadpoolctl; best of the trials",
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
