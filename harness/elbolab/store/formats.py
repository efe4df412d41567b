"""A run in the formats other tools read, and pytest-benchmark's JSON read back as a run.

    to_pyperf(run)              pyperf's JSON (format "1.0"): `python -m pyperf compare_to a.json b.json`
    to_bencher(run)             the Bencher Metric Format: `bencher run --adapter json --file f.json`
    to_pytest_benchmark(run)    pytest-benchmark's JSON: `pytest-benchmark compare f.json`
    from_pytest_benchmark(path) pytest-benchmark's JSON of elbolab's cases as a run (history ingest)

Only cases measured and correct ('ok') leave: a wrong answer or a time that cannot be is not a
benchmark result in any format. The raw samples go out where the format holds them (pyperf: every
per-call value, one pyperf run per round; pytest-benchmark: every round's per-call time as `data`),
so the other tool computes its own statistics from what was measured. Bencher holds one value and
its bounds: the median and its 95% interval.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from bisect import bisect_left, bisect_right
from pathlib import Path

from elbolab import __version__
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.store.results import ResultsError, Run, new_run, replace_measurements

FORMATS = ("pyperf", "bencher", "pytest-benchmark")
PYPERF_VERSION = "1.0"  # pyperf's JSON format version (pyperf/_bench.py _JSON_VERSION)


def exportable(run: Run) -> list[Measurement]:
    return [m for m in run.measurements if m.timed_ok]


def export(run: Run, fmt: str) -> dict:
    return {"pyperf": to_pyperf, "bencher": to_bencher, "pytest-benchmark": to_pytest_benchmark}[fmt](run)


# ---------------------------------------------------------------------------------- pyperf


def _rounds(m: Measurement) -> list[list[float]]:
    """Per-call times in seconds, one list per round (a single list where there were no rounds)."""
    seconds = [float(t) * 1e-9 for t in m.per_call_ns]
    if not m.rounds:
        return [seconds]
    out, start = [], 0
    for n in m.rounds:
        out.append(seconds[start : start + n])
        start += n
    return out


def _metadata(items: dict) -> dict:
    """pyperf refuses empty strings, newlines and values other than str, int and float."""
    out = {}
    for key, value in items.items():
        if isinstance(value, str):
            value = " ".join(value.split())
        if isinstance(value, bool) or value in (None, "") or not isinstance(value, (str, int, float)):
            continue
        out[key] = value
    return out


def to_pyperf(run: Run) -> dict:
    """One pyperf benchmark per case, named by its label; one pyperf run per round of the case, its
    values the per-call times of the round's samples (pyperf's values are per loop iteration), the
    first call (compile and JIT included) as the first run's warmup, and the loop count."""
    benchmarks = []
    for m in exportable(run):
        runs = []
        for i, values in enumerate(_rounds(m)):
            entry: dict = {"metadata": {"loops": m.loops}, "values": values}
            if i == 0 and m.first_call_ns:
                entry["warmups"] = [[1, m.first_call_ns * 1e-9]]
            runs.append(entry)
        benchmarks.append({"metadata": {"name": m.case.label(), "unit": "second"}, "runs": runs})
    machine, software = run.machine, run.software
    common = _metadata({
        "cpu_model_name": run.cpu, "cpu_count": machine.get("logical_cpus"), "hostname": machine.get("hostname"),
        "platform": machine.get("os"), "python_version": software.get("python"),
        "python_implementation": software.get("implementation"), "date": run.started,
        "elbolab_run_id": run.run_id, "elbolab_commit": run.git.commit, "elbolab_version": software.get("elbolab"),
    })  # fmt: skip
    return {"version": PYPERF_VERSION, "metadata": common, "benchmarks": benchmarks}


# ---------------------------------------------------------------------------------- bencher


def to_bencher(run: Run) -> dict:
    """{benchmark: {measure: {value, lower_value, upper_value}}}: the 'latency' measure in ns (Bencher's
    built-in unit for it), the median per call with its 95% interval."""
    out = {}
    for m in exportable(run):
        s = m.summary
        out[m.case.label()] = {
            "latency": {"value": s.median, "lower_value": s.ci95[0], "upper_value": s.ci95[1]}
        }
    return out


# ------------------------------------------------------------------------- pytest-benchmark


class Stats:
    """pytest-benchmark's statistics of per-call times (pytest_benchmark/stats.py: the same
    quartile methods and outlier counts), so its table reads what it would have computed."""

    def __init__(self, data: list[float]):
        self.data = list(data)
        self.sorted = sorted(self.data)
        self.rounds = len(self.data)

    def quartile(self, upper: bool) -> float:
        n, data = self.rounds, self.sorted
        if n == 1:
            return data[0]
        if n % 2:  # method 3 of Wikipedia's "Quartile"
            k, q = n // 4, n % 4
            if not upper:
                return 0.25 * data[k - 1] + 0.75 * data[k] if q == 1 else 0.75 * data[k] + 0.25 * data[k + 1]
            if q == 1:
                return 0.75 * data[3 * k] + 0.25 * data[3 * k + 1]
            return 0.25 * data[3 * k + 1] + 0.75 * data[3 * k + 2]
        half = n // 2  # method 2
        return statistics.median(data[half:] if upper else data[:half])

    def as_dict(self) -> dict:
        data, n = self.data, self.rounds
        mean = statistics.mean(data)
        stddev = statistics.stdev(data) if n > 1 else 0
        q1, q3 = self.quartile(False), self.quartile(True)
        iqr = q3 - q1
        low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
        iqr_outliers = sum(1 for x in data if x < low or x > high)
        stddev_outliers = sum(1 for x in data if x < mean - stddev or x > mean + stddev)
        total = sum(data)
        single = n == 1
        return {
            "min": self.sorted[0], "max": self.sorted[-1], "mean": mean, "stddev": stddev, "rounds": n,
            "median": statistics.median(data), "iqr": iqr, "q1": q1, "q3": q3, "iqr_outliers": iqr_outliers,
            "stddev_outliers": stddev_outliers, "outliers": f"{stddev_outliers};{iqr_outliers}",
            "ld15iqr": data[0] if single else self.sorted[bisect_left(self.sorted, low)],
            "hd15iqr": data[0] if single else self.sorted[bisect_right(self.sorted, high) - 1],
            "ops": n / total if total else 0, "total": total,
        }  # fmt: skip


def benchmark_id(case: Case) -> str:
    """The case's label as a pytest parameter id: 'elbo-numpy-cpu-float64-B=128-t=1'."""
    return "-".join(case.label().split())


def to_pytest_benchmark(run: Run) -> dict:
    """pytest-benchmark's JSON (what --benchmark-json writes with --benchmark-save-data): a round is
    one of elbolab's samples (`loops` calls), `data` the per-call time of each, in seconds."""
    benchmarks = []
    for m in exportable(run):
        c = m.case
        param = benchmark_id(c)
        data = [float(t) * 1e-9 for t in m.per_call_ns]
        stats = dict(Stats(data).as_dict(), data=data, iterations=m.loops)
        benchmarks.append({
            "group": f"{c.workload} {c.dtype} B={c.batch}", "name": f"test_workload[{param}]",
            "fullname": f"elbolab::test_workload[{param}]", "params": {"case": param}, "param": param,
            "extra_info": {"case": c.to_json(), "first_call_ns": m.first_call_ns},
            "options": {"timer": "elbolab worker (perf_counter_ns)", "disable_gc": False, "warmup": False},
            "stats": stats,
        })  # fmt: skip
    machine, software = run.machine, run.software
    return {
        "machine_info": {"node": machine.get("hostname"), "system": machine.get("os"),
                         "python_implementation": software.get("implementation"),
                         "python_version": software.get("python"),
                         "cpu": {"brand_raw": run.cpu, "count": machine.get("logical_cpus")}},
        "commit_info": {"id": run.git.commit, "dirty": run.git.dirty, "project": "elbolab"},
        "benchmarks": benchmarks,
        "datetime": run.started,
        "version": f"elbolab {__version__}",
    }  # fmt: skip


def from_pytest_benchmark(path: str | Path) -> Run:
    """pytest-benchmark JSON (--benchmark-json, with --benchmark-save-data for the raw times) as a
    run: each benchmark that names its elbolab case (extra_info.case, as elbolab's suite in
    benchmarks/ and `elbolab export` write it) becomes a measurement whose samples are its rounds
    (`iterations` calls each). The run id is the file's digest, so importing it twice stores it once."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ResultsError(f"{path}: not pytest-benchmark JSON (no 'benchmarks' list)")
    measurements, left_out = [], []
    for bench in doc["benchmarks"]:
        name = str(bench.get("fullname") or bench.get("name"))
        case_json = (bench.get("extra_info") or {}).get("case")
        if case_json is None:
            left_out.append(name)
            continue
        measurements.append(_measurement(path, name, case_json, bench.get("stats") or {}))
    if not measurements:
        raise ResultsError(f"{path}: no benchmark names an elbolab case (extra_info.case); only runs of "
                           "benchmarks/ or `elbolab export --format pytest-benchmark` can be imported")  # fmt: skip
    machine_info, commit = doc.get("machine_info") or {}, doc.get("commit_info") or {}
    cpu = machine_info.get("cpu") or {}
    version = doc.get("version")
    run = new_run(
        f"pytest-benchmark-{hashlib.sha256(raw).hexdigest()[:12]}",
        str(doc.get("datetime") or ""),
        {"cpu": cpu.get("brand_raw"), "logical_cpus": cpu.get("count"), "hostname": machine_info.get("node"),
         "os": " ".join(str(machine_info.get(k) or "") for k in ("system", "release")).strip() or None},
        {"python": machine_info.get("python_version"), "implementation": machine_info.get("python_implementation"),
         "pytest-benchmark": version},
        {"commit": commit.get("id"), "dirty": commit.get("dirty")},
        {"imported": {"from": "pytest-benchmark", "version": version, "file": path.name, "left_out": left_out}},
    )  # fmt: skip
    return replace_measurements(run, measurements)


def _measurement(path: Path, name: str, case_json, stats: dict) -> Measurement:
    try:
        case = Case.from_json(case_json)
    except (TypeError, ValueError) as exc:
        raise ResultsError(
            f"{path}: {name}: extra_info.case is not an elbolab case ({str(exc).splitlines()[0]})"
        ) from None
    data, iterations = stats.get("data"), stats.get("iterations")
    if not data:
        raise ResultsError(f"{path}: {name} has no raw times (run pytest with --benchmark-save-data)")
    if (
        not isinstance(iterations, int)
        or iterations < 1
        or not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in data)
    ):
        raise ResultsError(f"{path}: {name}: stats.iterations or stats.data are not positive numbers")
    # a sample is a round: `iterations` calls, in ns (pytest-benchmark stores the time per call)
    samples = tuple(x * iterations * 1e9 for x in data)
    note = ("timed by pytest-benchmark in pytest's own process (no worker, first call not kept apart); "
            "checked before timing by the suite that wrote it, no evidence record, no null control")  # fmt: skip
    return Measurement(case, "ok", loops=iterations, samples_ns=samples, notes={"imported": note})
