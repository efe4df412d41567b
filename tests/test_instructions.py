"""Instruction counting (elbolab.measure.instructions): deterministic, sensitive, honest about failures.

The counting tests run cases under Valgrind's callgrind (skipped with the reason where Valgrind or a
C compiler is missing). Every case of this module that the selected tests need is started at once
on a pool of two processes, longest first: ~2 minutes on two idle cores, ~3 on a busy machine
(numba's JIT under Valgrind is ~25-50 s of each numba case). Counts do not depend on the load, so
running two at a time is safe. Figures are printed (pytest -s) and repeated in assertion messages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from elbolab.measure import instructions
from elbolab.measure.instructions import (
    Dump,
    calls_for,
    count_case,
    diagnose,
    parse_dump,
    unavailable_reason,
)
from elbolab.model.case import Case
from elbolab.model.measurement import InstructionCounts, Measurement

ROOT = Path(__file__).resolve().parent.parent
TEST_BACKENDS = "tests.slow_backend:pass_backend,tests.fault_backends:lying,tests.fault_backends:crashing"
# Counting torch works but costs ~2-3 minutes of one core here (importing torch, 3 GB of shared
# libraries with its CUDA ones, takes ~1.5-2 minutes under Valgrind): more than this file's budget.
# By default the torch test checks that a case too slow for its timeout under Valgrind is a clear
# 'timeout'; set ELBOLAB_TEST_TORCH_COUNT=1 to count a torch case for real.
COUNT_TORCH = os.environ.get("ELBOLAB_TEST_TORCH_COUNT") == "1"

# --------------------------------------------------------------------- no Valgrind needed

DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m elbolab.measure.instructions
part: 3


desc: I1 cache: 32768 B, 64 B, 8-way associative
desc: D1 cache: 32768 B, 64 B, 8-way associative
desc: LL cache: 8388608 B, 64 B, 16-way associative

desc: Timerange: Basic block 4686360 - 9173307
desc: Trigger: Client Request: elbolab segment 2

positions: line
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
summary: 2074666 1791045 273506 8210 380810 126622 1 3

fl=(1) ???
fn=(1) 0x0000000000123456
0 12 3
totals: 2074666 1791045 273506 8210 380810 126622 1 3
"""


def test_parse_dump_reads_events_counts_and_trigger():
    dump = parse_dump(DUMP)
    assert dump.name == "elbolab segment 2"
    assert dump.creator == "callgrind-3.19.0"
    assert dump.events == {"Ir": 2074666, "Dr": 1791045, "Dw": 273506, "I1mr": 8210, "D1mr": 380810,
                           "D1mw": 126622, "ILmr": 1, "DLmr": 3, "DLmw": 0}  # fmt: skip
    assert dump.caches[2] == "LL cache: 8388608 B, 64 B, 16-way associative"


def test_parse_dump_prefers_totals_and_refuses_garbage():
    # with CALLGRIND_ZERO_STATS callgrind's summary: line can wrap below zero; totals: is the sum
    wrapped = DUMP.replace("summary: 2074666", "summary: 18446744073577868526")
    assert parse_dump(wrapped).events["Ir"] == 2074666
    only_wrapped = re.sub(r"^totals:.*$", "", wrapped, flags=re.MULTILINE)
    with pytest.raises(ValueError, match="implausible"):
        parse_dump(only_wrapped)
    with pytest.raises(ValueError, match="complete"):
        parse_dump("# callgrind format\nevents: Ir\n")
    assert Dump("Program termination", {}).name is None


def test_calls_per_segment_are_a_power_of_two_reaching_the_target():
    assert calls_for(600_000, target=10_000_000) == 32  # 17 needed -> 32
    assert calls_for(20_000_000, target=10_000_000) == 1
    assert calls_for(10_000_000, target=10_000_000) == 1
    assert calls_for(5_000_000, target=10_000_000) == 2
    assert calls_for(1, target=10_000_000) == instructions.MAX_CALLS
    # +2% work per call keeps the count: the two sides of a gate count the same number of calls
    assert calls_for(600_000 * 1.02) == calls_for(600_000)


def test_diagnose_names_what_went_wrong_under_valgrind():
    sigill = ("vex amd64->IR: unhandled instruction bytes: 0x62 0xF1 0x7D 0x48 0x6F 0x4\n"
              "==12== Process terminating with default action of signal 4 (SIGILL)\n")  # fmt: skip
    status, reason = diagnose(sigill, -4)
    assert status == "skipped" and "cannot emulate an instruction" in reason and "0x62" in reason
    status, reason = diagnose("==12== Process terminating with default action of signal 11 (SIGSEGV)\n", -11)
    assert status == "failed" and "SIGSEGV under valgrind" in reason
    status, reason = diagnose(
        "==3== blah\nModuleNotFoundError: No module named 'elbolab.measure.instructions'\n", 1
    )
    assert status == "failed" and "No module named" in reason and "\n" not in reason


def test_missing_valgrind_is_a_skip_with_the_reason(monkeypatch):
    monkeypatch.setattr(instructions, "_valgrind", lambda: None)
    assert "valgrind is not installed" in unavailable_reason()
    m = count_case(Case("elbo", "numpy"))
    assert m.status == "skipped" and "valgrind is not installed" in m.reason
    assert m.counts is None and m.cost is not None


def test_missing_compiler_is_a_skip_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(instructions, "_compiler", lambda: None)
    with pytest.raises(instructions.MarkerError, match="no C compiler"):
        instructions.build_marker(tmp_path)


def test_threads_and_devices_are_refused_with_a_reason():
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    m = count_case(Case("elbo", "numpy", threads=2))
    assert m.status == "skipped" and "single-threaded" in m.reason
    m = count_case(Case("elbo", "torch", device="cuda"))
    assert m.status == "skipped" and "CPU only" in m.reason


def test_marker_library_is_cached_and_loads(tmp_path):
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    lib = instructions.build_marker(tmp_path)
    assert lib.parent == tmp_path and lib.is_file()
    assert instructions.build_marker(tmp_path) == lib  # built once
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]  # nothing left behind
    code = f"import os; os.environ['{instructions.MARKER_ENV}'] = {str(lib)!r}; " \
           "from elbolab.measure.instructions import _load_marker; m = _load_marker(); " \
           "m.elbolab_dump(b'x'); print(m.elbolab_on_valgrind())"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"  # client requests are no-ops outside Valgrind


# ------------------------------------------------------------------------ under Valgrind

_REASON = unavailable_reason()
needs_valgrind = pytest.mark.skipif(_REASON is not None, reason=f"cannot count instructions here: {_REASON}")
slow = pytest.mark.slow

AA_CASES = [("numpy", 128), ("rust", 128), ("numba", 128)]
TORCH_TIMEOUT_S = 420 if COUNT_TORCH else 20


def _env(extra_work: float | None = None) -> dict[str, str]:
    env = dict(os.environ, ELBOLAB_BACKENDS=TEST_BACKENDS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if extra_work is not None:
        env["ELBOLAB_EXTRA_WORK"] = str(extra_work)
    return env


# name -> (case, extra work, timeout, expected seconds: longest first), per test that needs it
JOBS = {
    "test_aa_counts_agree_between_processes": {
        f"{b}-{n}-{i}": (Case("elbo", b, batch=n), None, 600, {"numba": 40, "rust": 20}.get(b, 12))
        for b, n in AA_CASES
        for i in (1, 2)
    },
    "test_two_percent_more_work_is_caught_every_time": {
        f"slow-{w}-{i}": (Case("elbo", "numpy-pass", batch=128), w, 600, 12)
        for w in (0.0, 0.02)
        for i in (1, 2)
    },
    "test_gate_on_counts_fails_two_percent_and_passes_aa": {
        f"slow-{w}-{i}": (Case("elbo", "numpy-pass", batch=128), w, 600, 12)
        for w, i in ((0.0, 1), (0.0, 2), (0.02, 1))
    },
    "test_incorrect_backend_is_reported_not_counted": {
        "lying": (Case("elbo", "lying", batch=7), None, 600, 8),
    },
    "test_crash_under_valgrind_is_a_failure_with_the_reason": {
        "crashing": (Case("elbo", "crashing", batch=7), None, 600, 8),
    },
    "test_torch_cpu": {
        "torch": (Case("elbo", "torch", batch=128), None, TORCH_TIMEOUT_S, 120 if COUNT_TORCH else 20),
    },
}


@pytest.fixture(scope="module")
def counted(request, tmp_path_factory):
    """Futures of every case the selected tests of this module need, started at once (2 at a time)."""
    mine = [
        i for i in request.session.items if getattr(getattr(i, "module", None), "__name__", None) == __name__
    ]
    selected = {getattr(i, "originalname", i.name) for i in mine}
    jobs = {k: v for test, group in JOBS.items() if test in selected for k, v in group.items()}
    cwd = tmp_path_factory.mktemp("cwd")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures: dict[str, Future] = {}
        for key, (case, extra, timeout, _) in sorted(jobs.items(), key=lambda kv: -kv[1][3]):
            # cwd elsewhere: the child finds everything through the environment it is given
            futures[key] = pool.submit(count_case, case, env=_env(extra), cwd=cwd, timeout=timeout)
        yield futures
        for f in futures.values():
            f.cancel()


def _ok(m: Measurement) -> InstructionCounts:
    assert m.status == "ok", f"{m.case.label()}: {m.status}: {m.reason}"
    assert m.check is not None and m.check.ok and m.counts is not None
    return m.counts


def _rel(a: float, b: float) -> float:
    return abs(a - b) / min(a, b)


def _describe(m: Measurement) -> str:
    c = m.counts
    return (f"{m.case.label()}: {c.instructions:,.0f} instructions/call x {c.calls} calls, "
            f"spread {c.spread:.2e}, valgrind {m.notes['valgrind_wall_s']} s")  # fmt: skip


@slow
@needs_valgrind
def test_aa_counts_agree_between_processes(counted):
    report = []
    for backend, batch in AA_CASES:
        a, b = counted[f"{backend}-{batch}-1"].result(), counted[f"{backend}-{batch}-2"].result()
        if a.status == "skipped" and backend != "numpy":
            report.append(f"{backend} B={batch}: skipped ({a.reason})")
            continue
        ca, cb = _ok(a), _ok(b)
        aa = _rel(ca.instructions, cb.instructions)
        report.append(f"{backend} B={batch}: A/A {aa:.2e} | {_describe(a)} | {_describe(b)}")
        assert aa < 0.005, report[-1]
        assert ca.spread < 0.005 and cb.spread < 0.005, report[-1]
        assert ca.calls == cb.calls, report[-1]  # calls are chosen by counting: deterministic too
        assert ca.instructions > 10_000 and ca.estimated_cycles > ca.instructions
        assert a.notes["measure"] == "instructions" and "AVX-512" in a.notes["cpu"]
        assert any("LL cache: 8388608 B" in c for c in a.notes["cache_simulation"])
    print("\n" + "\n".join(report))


@slow
@needs_valgrind
def test_two_percent_more_work_is_caught_every_time(counted):
    base = [_ok(counted[f"slow-0.0-{i}"].result()) for i in (1, 2)]
    slow = [_ok(counted[f"slow-0.02-{i}"].result()) for i in (1, 2)]
    aa = max(
        _rel(base[0].instructions, base[1].instructions), _rel(slow[0].instructions, slow[1].instructions)
    )
    ratios = [s.instructions / b.instructions for s in slow for b in base]
    text = f"+2% work: instruction ratios {[f'{r:.4f}' for r in ratios]}, A/A spread {aa:.2e}"
    print("\n" + text)
    assert aa < 0.001, text  # far below 1%
    assert all(1.01 < r < 1.05 for r in ratios), text
    assert min(ratios) - 1 > 10 * aa, text  # the change stands far out of the noise


@slow
@needs_valgrind
def test_incorrect_backend_is_reported_not_counted(counted):
    m = counted["lying"].result()
    assert m.status == "incorrect", f"{m.status}: {m.reason}"
    assert m.counts is None and m.check is not None and not m.check.ok
    assert "recon" in (m.reason or "") + (m.check.worst_output or "")


@slow
@needs_valgrind
def test_crash_under_valgrind_is_a_failure_with_the_reason(counted):
    m = counted["crashing"].result()
    assert m.status == "failed" and m.counts is None
    assert m.reason == "the case died of SIGSEGV under valgrind (callgrind)"


@slow
@needs_valgrind
def test_torch_cpu(counted):
    m = counted["torch"].result()
    if m.status == "skipped" and "valgrind" not in (m.reason or "").lower():
        pytest.skip(m.reason)  # torch is not installed here
    if not COUNT_TORCH:
        assert m.status == "timeout" and m.counts is None, f"{m.status}: {m.reason}"
        assert (
            m.reason
            == f"not finished within {TORCH_TIMEOUT_S} s under valgrind (callgrind runs code 20-100x slower than native)"
        )
        return
    c = _ok(m)
    print(f"\ntorch: {_describe(m)}; phases {m.notes.get('child_phases_s')}")
    assert c.spread < 0.005 and c.instructions > 10_000


@slow
@needs_valgrind
def test_gate_on_counts_fails_two_percent_and_passes_aa(counted, tmp_path):
    """The same counted measurements through the gate (files, CLI): +2% work is a regression under
    the default 1% count threshold; two counts of the same code are 'same'."""
    from elbolab.analyse.compare import compare
    from elbolab.analyse.verdict import Verdict
    from elbolab.store.results import save
    from tests.builders import make_run

    base1, base2 = counted["slow-0.0-1"].result(), counted["slow-0.0-2"].result()
    slow1 = counted["slow-0.02-1"].result()
    aa = compare(make_run([base1], run_id="a"), make_run([base2], run_id="b"))
    assert [c.verdict for c in aa.comparisons] == [Verdict.SAME] and aa.gate() == (0, aa.headline())
    assert aa.comparisons[0].unit == "instructions"
    for name, run in (("base", make_run([base1], run_id="a")), ("aa", make_run([base2], run_id="b")),
                      ("slow", make_run([slow1], run_id="c"))):  # fmt: skip
        save(tmp_path / f"{name}.json", run)

    def gate(head: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "elbolab.cli", "gate", str(tmp_path / "base.json"),
                               str(tmp_path / f"{head}.json"), *extra], capture_output=True, text=True)  # fmt: skip

    slow_gate = gate("slow")
    assert slow_gate.returncode == 1, slow_gate.stdout + slow_gate.stderr
    assert "regression" in slow_gate.stdout and "instr" in slow_gate.stdout
    assert "instruction counts: " in slow_gate.stdout  # the count rule is stated, not the time rule
    # the time threshold does not apply to counts; --count-threshold does
    assert gate("slow", "--count-threshold", "0.05").returncode == 0
    assert gate("slow", "--threshold", "0.05").returncode == 1
    aa_gate = gate("aa")
    assert aa_gate.returncode == 0, aa_gate.stdout + aa_gate.stderr


def test_ab_refuses_to_count_a_base_without_instruction_counting(tmp_path):
    from elbolab.gate.ab import ABConfig, Side, measure_counted
    from elbolab.model.errors import UsageError

    old = tmp_path / "old-install" / "elbolab"
    old.mkdir(parents=True)
    (old / "worker.py").write_text("")
    sides = {"base": Side("base", ROOT, [old.parent]), "head": Side("head", ROOT)}
    if _REASON is not None:
        pytest.skip(f"cannot count instructions here: {_REASON}")
    with pytest.raises(UsageError, match="the base revision cannot count instructions"):
        measure_counted(
            ABConfig("HEAD", measure="instructions"), sides, [Case("elbo", "numpy", batch=7)], print
        )


def test_an_interrupted_instruction_gate_ends_every_count_at_once(monkeypatch):
    """The gate counts cases in threads; Ctrl-C or SIGTERM reaches its main thread only. Every
    counting process still running is killed and no new count starts: the gate stops in moments,
    not when the counts (minutes under Valgrind) would have finished."""
    import time

    from elbolab.gate import ab
    from elbolab.model.measurement import not_measured

    started: list[subprocess.Popen] = []

    def fake_count(case, **kwargs):  # a count that would run a minute, registered as count_case does
        if case.batch == 1:
            time.sleep(0.5)  # the other case's process has started by then
            raise KeyboardInterrupt
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        started.append(proc)
        with instructions._RUNNING_LOCK:
            instructions._RUNNING.add(proc)
        try:
            proc.wait()
        finally:
            with instructions._RUNNING_LOCK:
                instructions._RUNNING.discard(proc)
        return not_measured(case, "failed", "killed")

    monkeypatch.setattr(ab, "count_case", fake_count)
    monkeypatch.setattr(ab, "unavailable_reason", lambda: None)
    monkeypatch.setattr(ab, "usable_cores", lambda: 2)  # two cores, whatever this machine has
    sides = {"base": ab.Side("base", ROOT), "head": ab.Side("head", ROOT)}
    cases = [Case("elbo", "numpy", batch=1), Case("elbo", "numpy", batch=2)]
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        ab.measure_counted(ab.ABConfig("HEAD", measure="instructions"), sides, cases, lambda _: None)
    assert time.perf_counter() - t0 < 20
    assert len(started) == 1 and started[0].poll() is not None  # killed, and no base count started
