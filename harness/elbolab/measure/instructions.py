"""Instruction counting: a case measured by Valgrind's callgrind (with its cache simulation) instead
of a clock, deterministic enough to gate CI at 1-2% on a noisy shared machine, as iai-callgrind and
CodSpeed do.

The parent (`count_case`) runs one child per case:

  valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes --I1=.. --D1=.. --LL=..
           --callgrind-out-file=DIR/callgrind.out.%p  <python> -m elbolab.measure.instructions CASE_JSON CALLS

with PYTHONHASHSEED=0 and the case's thread variables. The child makes the inputs, prepares the
backend and makes the first call with instrumentation off (interpreter start-up, imports and
compilation are not counted, and run at Valgrind's uninstrumented speed), checks the outputs
against the reference (an incorrect backend is reported incorrect and never counted), then counts:

  start instrumentation
  1 call                      dump "elbolab calibrate"   (CALLS=0: the call count is chosen from it)
  CALLS calls                 dump "elbolab warm-up"     (interpreter specialisation, caches; discarded)
  no call                     dump "elbolab segment 0"   (the fixed cost of one segment)
  CALLS calls, REPEATS times  dump "elbolab segment i"
  stop instrumentation

Segments are delimited by callgrind client requests (CALLGRIND_DUMP_STATS_AT, which writes the
counts since the previous dump and zeroes them) from a tiny C library compiled with the system C
compiler at first use into a cache directory and called through ctypes. (Name-based
--dump-before/--toggle-collect cannot be used: callgrind cannot resolve libc's symbols on every
machine.) The child prints one line, RESULT_PREFIX + JSON, with its status, check and notes; the
parent reads every dump file and builds an `InstructionCounts` (elbolab.model.measurement), whose per-call
counts are (segment i - segment 0) / CALLS.

The call count is chosen by counting, not timing, so it is itself deterministic: the smallest power
of two that makes a segment at least TARGET_SEGMENT_INSTRUCTIONS long (a few ms of native time,
about half a second under callgrind): far above the ~5,000 instructions of the markers and the loop.

The simulated caches are pinned (CACHES), not taken from the host, so miss counts compare across
machines. Counting is single-threaded only: Valgrind runs threads one at a time, and a pool's
spin-waits would be counted.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from elbolab.measure.machine import thread_env
from elbolab.measure.opening import open_case
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.measurement import Check, InstructionCounts, Measurement, not_measured
from elbolab.model.workloads import WORKLOADS

_T_IMPORT = time.perf_counter()
TOOL = "callgrind"
REPEATS = 3  # counted segments of CALLS calls (after segment 0)
TARGET_SEGMENT_INSTRUCTIONS = 5_000_000
MAX_CALLS = 1 << 16
DEFAULT_TIMEOUT_S = 600.0
# the simulated caches, (size bytes, associativity, line bytes): fixed, so that miss counts do not
# depend on the host (callgrind would otherwise read the host's L1 and last-level caches)
CACHES = {"I1": (32768, 8, 64), "D1": (32768, 8, 64), "LL": (8 * 1024 * 1024, 16, 64)}

RESULT_PREFIX = "elbolab-instructions: "
SEGMENT_PREFIX = "elbolab segment "
CALIBRATE = "elbolab calibrate"
WARM_UP = "elbolab warm-up"
OUT_NAME = "callgrind.out"
MARKER_ENV = "ELBOLAB_CALLGRIND_MARKER"  # path of the compiled marker library, set by the parent
OUT_DIR_ENV = "ELBOLAB_CALLGRIND_DIR"  # where the child finds its calibration dump

MARKER_SOURCE = r"""/* elbolab.measure.instructions: callgrind client requests, called through ctypes. */
#include <valgrind/callgrind.h>

int elbolab_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
void elbolab_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void elbolab_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
void elbolab_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""
_CFLAGS = ("-O2", "-shared", "-fPIC")

CPU_NOTE = (
    "Valgrind emulates an x86-64 CPU without AVX-512: libraries that dispatch on the CPU (NumPy, "
    "OpenBLAS, MKL, PyTorch, LLVM in Numba) may take their AVX2 paths, so the counts describe those "
    "paths, not necessarily what the host runs natively"
)
SEGMENTS_NOTE = (
    "segments delimited by CALLGRIND_DUMP_STATS_AT client requests from a C marker library called "
    "through ctypes; instrumentation off until the first counted call (--instr-atstart=no); one "
    "call (calibration) and one warm-up segment discarded; segment 0 runs no call; per call = "
    "(segment - segment 0) / calls"
)


class MarkerError(Exception):
    """The marker library cannot be built here (one line, for a skip reason)."""


# ------------------------------------------------------------------------------------ can we?


def _valgrind() -> str | None:
    return shutil.which("valgrind")


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc):
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("cc")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "elbolab"


def _include_flags(valgrind: str | None) -> list[str]:
    """-I for the include directory beside a Valgrind installed outside /usr (e.g. /usr/local, conda)."""
    if not valgrind:
        return []
    include = Path(valgrind).resolve().parent.parent / "include"
    if include != Path("/usr/include") and (include / "valgrind" / "callgrind.h").is_file():
        return [f"-I{include}"]
    return []


def build_marker(cache_dir: Path | None = None) -> Path:
    """The marker library, compiled at first use into the cache (keyed by a hash of its source and
    flags; compiled to a temporary name and renamed atomically, so concurrent builds are safe)."""
    cc = _compiler()
    if cc is None:
        raise MarkerError("no C compiler (gcc or cc) to build the callgrind marker library")
    flags = [*_CFLAGS, *_include_flags(_valgrind())]
    key = hashlib.sha256((MARKER_SOURCE + "\0" + " ".join(flags)).encode()).hexdigest()[:16]
    dirs = (
        [cache_dir] if cache_dir else [_cache_dir(), Path(tempfile.gettempdir()) / f"elbolab-{os.getuid()}"]
    )
    last_error = "no writable cache directory"
    for directory in dirs:
        lib = directory / f"callgrind_marker-{key}.so"
        if lib.is_file():
            return lib
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
                src = Path(tmp) / "callgrind_marker.c"
                src.write_text(MARKER_SOURCE)
                out = Path(tmp) / lib.name
                proc = subprocess.run([cc, *flags, "-o", str(out), str(src)], capture_output=True, text=True,
                                      timeout=120)  # fmt: skip
                if proc.returncode != 0:
                    raise MarkerError(_compile_error(proc.stderr))
                os.replace(out, lib)
            return lib
        except OSError as exc:
            last_error = f"{directory}: {exc.strerror or exc}"
        except subprocess.TimeoutExpired:
            raise MarkerError("compiling the callgrind marker library took over 120 s") from None
    raise MarkerError(f"cannot build the callgrind marker library: {last_error}")


def _compile_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if any("callgrind.h" in ln for ln in lines):
        return "valgrind's headers (valgrind/callgrind.h) are not installed (Debian/Ubuntu: valgrind, Fedora: valgrind-devel)"
    errors = [ln for ln in lines if "error" in ln]
    return "cannot compile the callgrind marker library: " + ((errors or lines or ["compiler failed"])[0])


def unavailable_reason() -> str | None:
    """Why instructions cannot be counted here (one line), or None."""
    if not sys.platform.startswith("linux"):
        return f"instruction counting needs Valgrind on Linux x86-64; this is {sys.platform}"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"instruction counting is supported on Linux x86-64 only; this machine is {machine}"
    if _valgrind() is None:
        return "valgrind is not installed (e.g. apt-get install valgrind), so instructions cannot be counted"
    try:
        build_marker()
    except MarkerError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------- dump files


@dataclass(frozen=True)
class Dump:
    """One callgrind dump file: what triggered it and its counts per event."""

    trigger: str  # e.g. "Client Request: elbolab segment 1", "Program termination"
    events: dict[str, int]
    creator: str | None = None  # e.g. "callgrind-3.19.0"
    caches: tuple[str, ...] = ()  # the "desc: I1 cache: ..." lines

    @property
    def name(self) -> str | None:
        """The name a client request gave the dump, or None."""
        prefix = "Client Request: "
        return self.trigger[len(prefix) :] if self.trigger.startswith(prefix) else None


def _header(text: str, key: str) -> str | None:
    match = re.search(rf"^{re.escape(key)}:[ \t]*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def parse_dump(text: str) -> Dump:
    """Parse the header lines of a callgrind dump ("events:" names the columns, "totals:" or
    "summary:" holds the counts; omitted trailing counts are 0). Regular expressions over the whole
    text, not a Python loop over its lines: the child parses its calibration dump while counted.
    Raises ValueError on a file that is not a complete dump."""
    events = _header(text, "events")
    values = _header(text, "totals") or _header(text, "summary")
    if not events or values is None:
        raise ValueError("not a complete callgrind dump (no events: or totals:/summary: line)")
    names = events.split()
    numbers = [int(v) for v in values.split()]
    if len(numbers) > len(names):
        raise ValueError(f"{len(numbers)} counts for {len(names)} events")
    if any(n < 0 or n >= 1 << 63 for n in numbers):
        raise ValueError(f"implausible counts {numbers}")
    numbers += [0] * (len(names) - len(numbers))
    trigger = (_header(text, "desc: Trigger") or "").strip()
    caches = tuple(m.group(1).strip() for m in re.finditer(r"^desc: (\w+ cache: .*)$", text, re.MULTILINE))
    return Dump(trigger, dict(zip(names, numbers, strict=True)), _header(text, "creator"), caches)


def read_dumps(directory: Path, pid: int | None = None) -> list[Dump]:
    """Every dump in `directory` (of process `pid` if given), in the order they were written."""
    pattern = re.compile(rf"^{re.escape(OUT_NAME)}\.(\d+)(?:\.(\d+))?$")
    found = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if not match or (pid is not None and int(match.group(1)) != pid):
            continue
        part = int(match.group(2)) if match.group(2) else 1 << 30  # the final dump comes last
        try:
            found.append((int(match.group(1)), part, parse_dump(path.read_text(errors="replace"))))
        except ValueError:
            continue
    return [dump for _, _, dump in sorted(found, key=lambda t: t[:2])]


# ------------------------------------------------------------------------------------- child


def _load_marker():
    path = os.environ.get(MARKER_ENV) or str(build_marker())
    lib = ctypes.CDLL(path)
    lib.elbolab_on_valgrind.restype = ctypes.c_int
    lib.elbolab_on_valgrind.argtypes = []
    for name in ("elbolab_start", "elbolab_stop"):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = []
    lib.elbolab_dump.restype = None
    lib.elbolab_dump.argtypes = [ctypes.c_char_p]
    return lib


def calls_for(instructions_per_call: float, target: int = TARGET_SEGMENT_INSTRUCTIONS) -> int:
    """The smallest power of two of calls whose instructions reach `target` (1..MAX_CALLS): a power
    of two, so a small change in the work per call rarely changes the count."""
    want = max(1.0, target / max(instructions_per_call, 1.0))
    return int(min(MAX_CALLS, 1 << math.ceil(math.log2(want) - 1e-9)))


def _calibration_ir(pid: int) -> int | None:
    directory = os.environ.get(OUT_DIR_ENV)
    if not directory:
        return None
    for dump in read_dumps(Path(directory), pid):
        if dump.name == CALIBRATE:
            return dump.events.get("Ir")
    return None


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""


def child(case_json: str, calls: int, repeats: int = REPEATS) -> dict:
    """Open, check and count one case in this process (run under callgrind). Returns the report
    printed for the parent: status, reason, check, notes, calls."""
    t_start = time.perf_counter()
    case = Case.from_json(json.loads(case_json))
    backends = discover()
    if case.backend not in backends:
        return {"status": "failed", "reason": f"unknown backend {case.backend!r} in the counting process"}
    marker = _load_marker()
    on_valgrind = bool(marker.elbolab_on_valgrind())
    opened = open_case(backends[case.backend], case, timer=None)  # instrumentation is still off
    if isinstance(opened, Measurement):  # skipped, or failed to prepare or to run its first call
        return {"status": opened.status, "reason": opened.reason}
    notes = dict(opened.backend_notes, first_call_ns_under_valgrind=opened.first_call_ns)
    t_check = time.perf_counter()
    check = opened.check_outputs()
    check_json = dict(check.__dict__)
    t_count = time.perf_counter()
    phases = {
        "start_s": round(t_start - _T_IMPORT, 2),
        "prepare_s": round(t_check - t_start, 2),
        "check_s": round(t_count - t_check, 2),
    }
    if not check.ok:  # never counted: an incorrect backend has no instruction count
        opened.close()
        return {"status": "incorrect", "reason": check.detail, "check": check_json, "notes": notes}

    names = [f"{SEGMENT_PREFIX}{i}".encode() for i in range(repeats + 1)]
    run = opened.run
    gc.collect()
    gc.disable()
    try:
        marker.elbolab_start()
        run(1)
        marker.elbolab_dump(CALIBRATE.encode())
        calibration = _calibration_ir(os.getpid()) if on_valgrind else None
        if calls < 1:
            calls = calls_for(calibration) if calibration else 1
        plan = [(WARM_UP.encode(), calls), (names[0], 0), *((name, calls) for name in names[1:])]
        for name, n in plan:
            run(n)
            marker.elbolab_dump(name)
        marker.elbolab_stop()
    except Exception as exc:
        return {"status": "failed", "reason": f"counting raised {exc.__class__.__name__}: {exc}{_where(exc)}",
                "check": check_json, "notes": notes}  # fmt: skip
    finally:
        gc.enable()
        opened.close()  # the case's thread limits held while it was counted
    notes["calibration_instructions"] = calibration
    notes["child_phases_s"] = dict(phases, count_s=round(time.perf_counter() - t_count, 2))
    return {"status": "ok", "reason": None, "check": check_json, "notes": notes, "calls": calls,
            "repeats": repeats, "on_valgrind": on_valgrind, "pid": os.getpid()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """python -m elbolab.measure.instructions CASE_JSON CALLS [REPEATS]   (CALLS 0: choose by counting)"""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m elbolab.measure.instructions CASE_JSON CALLS [REPEATS]", file=sys.stderr)
        return 2
    try:
        report = child(argv[0], int(argv[1]), int(argv[2]) if len(argv) == 3 else REPEATS)
    except Exception as exc:  # the parent reads a status, never a traceback
        report = {"status": "failed", "reason": f"{exc.__class__.__name__}: {exc}{_where(exc)}"}
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(report, default=str), flush=True)
    return 0


# ------------------------------------------------------------------------------------ parent


CHILD_MODULE = "elbolab.measure.instructions"  # this module: what the child process runs


def valgrind_command(out_dir: Path, python: str, case_json: str, calls: int, repeats: int,
                     module: str = CHILD_MODULE) -> list[str]:  # fmt: skip
    caches = [f"--{name}={size},{assoc},{line}" for name, (size, assoc, line) in CACHES.items()]
    return [
        _valgrind() or "valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes", *caches,
        f"--callgrind-out-file={out_dir / OUT_NAME}.%p",
        python, "-m", module, case_json, str(calls), str(repeats),
    ]  # fmt: skip


def _child_env(env: Mapping[str, str] | None, threads: int, marker: Path, out_dir: Path) -> dict[str, str]:
    result = dict(os.environ if env is None else env)
    result.update(thread_env(threads))
    result.update({"PYTHONHASHSEED": "0", MARKER_ENV: str(marker), OUT_DIR_ENV: str(out_dir)})
    return result


def _report_line(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX) :])
            except json.JSONDecodeError:
                return None
    return None


_SIGNAL = re.compile(r"Process terminating with default action of signal (\d+) \((\w+)\)")


def diagnose(stderr: str, returncode: int | None) -> tuple[str, str]:
    """(status, one-line reason) for a counting process that produced no report."""
    if "unhandled instruction bytes" in stderr:
        raw = re.search(r"unhandled instruction bytes: ((?:0x[0-9A-Fa-f]+ ?){1,6})", stderr)
        what = f" ({raw.group(1).strip()})" if raw else ""
        return (
            "skipped",
            f"Valgrind cannot emulate an instruction this backend uses{what}, so it cannot be counted",
        )
    signal_match = _SIGNAL.search(stderr)
    if signal_match:
        return "failed", f"the case died of {signal_match.group(2)} under valgrind (callgrind)"
    valgrind_error = re.search(r"^(?:valgrind: |==\d+== )?(.*(?:impossible|Valgrind's memory management|out of memory).*)$",
                               stderr, re.MULTILINE)  # fmt: skip
    if valgrind_error:
        return "failed", f"valgrind failed: {valgrind_error.group(1).strip()}"
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not re.match(r"^[=-]{2}\d+[=-]{2}", ln)]
    last = lines[-1].strip() if lines else "no output"
    return "failed", f"the counting process exited with code {returncode} and no result: {last}"


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill the counting process and whatever it started: it leads its own session (and nothing else
    is in it), so its process group is exactly what this module started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _end_session(proc: subprocess.Popen) -> None:
    _kill_session(proc)
    proc.communicate()


# The counting processes now running, so that a caller counting in threads (the A/B gate) can end
# them all when it is interrupted: the interrupt reaches its main thread only.
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def end_all_counts() -> None:
    """Kill every counting process this process has running (their count_case calls then return)."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for proc in running:
        _kill_session(proc)


def count_case(case: Case, *, calls: int | None = None, repeats: int = REPEATS, env: Mapping[str, str] | None = None,
               cwd: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT_S,
               python: str | None = None, keep_dir: str | os.PathLike | None = None,
               module: str = CHILD_MODULE) -> Measurement:  # fmt: skip
    """Count the instructions of one case under callgrind, in a child process. Returns a Measurement
    with `counts` (status ok), or incorrect/failed/timeout/skipped with a one-line reason; never raises
    for a backend's failure.

    calls: calls per segment (None: chosen by counting, see calls_for); env, cwd, python, module: the
    child's environment, working directory, interpreter and module (the A/B gate runs a revision's
    own install);
    keep_dir: keep callgrind's dump files there (for callgrind_annotate) instead of deleting them.
    """
    cost = WORKLOADS[case.workload].cost(case) if case.workload in WORKLOADS else None
    reason = unavailable_reason()
    if reason:
        return not_measured(case, "skipped", reason, cost)
    if case.device != "cpu":
        return not_measured(
            case, "skipped", f"instruction counting runs on the CPU only, not {case.device}", cost
        )
    if case.threads != 1:
        return not_measured(case, "skipped", "instruction counting is single-threaded only: Valgrind runs threads "
                            "one at a time and would count a pool's spin-waits", cost)  # fmt: skip
    if calls is not None and calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    marker = build_marker()

    with tempfile.TemporaryDirectory(prefix="elbolab-callgrind-") as tmp:
        out_dir = Path(keep_dir) if keep_dir is not None else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        cmd = valgrind_command(
            out_dir, python or sys.executable, json.dumps(case.to_json()), calls or 0, repeats, module
        )
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(env, case.threads, marker, out_dir),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", start_new_session=True)  # fmt: skip
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_session(proc)
            return not_measured(case, "timeout", f"not finished within {timeout:g} s under valgrind "
                                "(callgrind runs code 20-100x slower than native)", cost)  # fmt: skip
        except BaseException:  # interrupted: leave no valgrind behind (it has its own session)
            _end_session(proc)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
        wall_s = time.perf_counter() - t0
        report = _report_line(stdout)
        if report is None:
            status, why = diagnose(stderr, proc.returncode)
            return not_measured(case, status, why, cost)
        check = Check(**report["check"]) if report.get("check") else None
        notes = dict(report.get("notes") or {}, measure="instructions", valgrind_wall_s=round(wall_s, 2))
        if report["status"] != "ok":
            return Measurement(
                case, report["status"], report.get("reason"), check=check, cost=cost, notes=notes
            )
        dumps = read_dumps(out_dir, report.get("pid"))

    segments = {
        int(d.name[len(SEGMENT_PREFIX) :]): d for d in dumps if d.name and d.name.startswith(SEGMENT_PREFIX)
    }
    if sorted(segments) != list(range(repeats + 1)):
        return Measurement(case, "failed", f"callgrind wrote segments {sorted(segments)}, expected 0..{repeats}"
                           " (was the child run under valgrind --tool=callgrind?)", check=check, cost=cost,
                           notes=notes)  # fmt: skip
    first = segments[0]
    counts = InstructionCounts(
        TOOL, int(report["calls"]), tuple(segments[i].events for i in range(repeats + 1))
    )
    version = (first.creator or "").replace("callgrind-", "")
    notes.update(
        tool=f"valgrind {version} --tool=callgrind --cache-sim=yes" if version else "valgrind --tool=callgrind",
        cache_simulation=list(first.caches),
        segments=SEGMENTS_NOTE,
        cpu=CPU_NOTE,
        calls_rule=(f"calls per segment: {counts.calls}" + (" (given)" if calls else
                    f", the smallest power of two reaching {TARGET_SEGMENT_INSTRUCTIONS:,} instructions a segment")),
    )  # fmt: skip
    return Measurement(case, "ok", None, check=check, cost=cost, notes=notes, counts=counts)


if __name__ == "__main__":
    sys.exit(main())
