"""Compare two runs case by case: ratios with confidence intervals, verdicts, regressions.

`compare(base_doc, head_doc, ...)` is a pure function of two results documents returning a frozen
`Report`; nothing here reads files, touches a clock or prints. Renderers (`render_terminal`,
`render_markdown`) turn a report into text afterwards (compare, then render).

The statistic
-------------
Per case the headline is the ratio head/base of the per-call medians (> 1: head is slower). Its 95%
confidence interval comes from the rank test, not the bootstrap: the Mann-Whitney/Hodges-Lehmann
interval for a scale change (Bauer 1972), computed on log per-call times. Why:

- It is exact for any sample count: the number of pairwise log-differences below the true log
  ratio follows the Mann-Whitney null distribution whatever the noise distribution, so 7+7 quick
  samples get an honest 95% interval. The percentile bootstrap of a median is discrete and too
  narrow at such sizes (it can only pick among a handful of order statistics).
- It uses every sample, not only the middle ones: its interval is about 20% narrower than the
  bootstrap interval of the median ratio on log-normal noise, which buys detection power
  (simulated, 7 samples x 3 rounds at 15% spread: 76% vs 65% of true 20% slowdowns caught at the
  same false-alarm rate).
- Being rank-based it shrugs off the slow outliers a shared machine produces, as the median does.

What it assumes is that head is base scaled by a factor (a shift on the log scale); that is what a
change in a kernel does to its time. `ci_method="bootstrap"` gives the spine's percentile
bootstrap (harness.stats.ratio_of_medians) for comparison.

Verdict and regression
----------------------
With the threshold t (default 10%, per workload if wanted) and a noise band b (default 3%):

- slower            the whole CI lies above 1 + b
- faster            the whole CI lies below 1 / (1 + b)
- same              otherwise, if the whole CI lies inside [1/(1+t), 1+t]: no change that matters
- too noisy to tell otherwise: the interval straddles the band and reaches past the threshold

A case is a *regression* when it is 'slower' AND its ratio of medians exceeds 1 + t. This joins
asv's rule (statistically significant AND larger than the factor) with criterion's (the whole CI
outside a noise band): the band covers the run-to-run offsets (memory layout, frequency state)
that repeated runs of identical code show and that no within-run interval can see. Requiring the
whole CI above 1 + t instead would need ~90 samples per side at 15% spread to catch a true 20%
slowdown reliably; this rule needs ~45 (3 interleaved rounds of 15), and in simulation keeps A/A
false alarms under 1% (see tests/test_compare.py).

When both sides were pooled from several interleaved rounds (the A/B mode), a confident change
must also show in every pairing of rounds (the median of every head round above that of every base
round, to within the noise band; likewise for faster): if the machine's speed moved between runs,
the rounds disagree and the verdict is 'too noisy to tell'. Under no change, all head rounds land
above all base rounds with probability about 1/C(2R, R) (1/6 for 2 rounds, 1/20 for 3), whatever
the run-to-run swings; a real change shows in every pairing.

A case measured ok in base but failed, incorrect or timed out in head is *broken*; the gate fails
on it too (a kernel that stopped working is not faster).

Different machines
------------------
Absolute times from two machines (different `machine.cpu`) are not compared: `compare` raises
CompareError unless `normalize=True`, which divides every case's times by the reference measured in
the same run: the NumPy `elbo` case (eps=given, cpu) at the same batch, dtype and dimensions (one
thread if there is a choice). Why that and not `limits.memory_bandwidth_bytes_per_s`: the reference
then has raw samples and an interval of its own, it runs the same kind of memory-and-ufunc work at
the same size (so it sits in the same cache level as the case), and it is measured by the same
timer in the same run. The bandwidth figure is one number without samples, measured on DRAM-sized
arrays, and absent when the run skipped limits. The normalized ratio is
(head/head_ref) / (base/base_ref); its interval combines the two rank intervals in quadrature on the
log scale (independent samples). The reference case itself cannot be compared that way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import stats as sps

from harness.case import Case
from harness.errors import UsageError
from harness.results import case_of, per_call_samples
from harness.stats import ratio_of_medians

VERDICTS = ("faster", "slower", "same", "too noisy to tell")
BROKEN_STATUSES = ("failed", "incorrect", "timeout")
CI_METHODS = ("rank", "bootstrap")
DEFAULT_THRESHOLD = 0.10
DEFAULT_NOISE_BAND = 0.03


class CompareError(UsageError):
    """Two runs that cannot be compared as asked; the message is one line for the user."""


# ------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RunInfo:
    """What identifies one side of a comparison."""

    label: str
    run_id: str
    commit: str | None
    dirty: bool | None
    cpu: str | None

    @classmethod
    def of(cls, doc: Mapping, label: str) -> RunInfo:
        git = doc.get("git") or {}
        return cls(
            label=label,
            run_id=str(doc.get("run_id")),
            commit=git.get("commit"),
            dirty=git.get("dirty"),
            cpu=(doc.get("machine") or {}).get("cpu"),
        )

    def describe(self) -> str:
        commit = (self.commit or "unknown commit")[:10]
        if self.dirty:
            commit += " (dirty)"
        return f"{self.label}: {commit}, run {self.run_id}"


@dataclass(frozen=True)
class CaseComparison:
    case: Case
    base_median: float  # ns per call, or a multiple of the reference when normalized
    head_median: float
    base_n: int
    head_n: int
    ratio: float  # head / base of the medians; > 1 means head is slower
    ci95: tuple[float, float]
    threshold: float
    verdict: str
    regression: bool

    @property
    def change(self) -> float:
        return self.ratio - 1.0


@dataclass(frozen=True)
class NotCompared:
    case: Case
    base_status: str | None  # None: the case is not in that run
    head_status: str | None
    reason: str
    broken: bool = False  # ok in base, failed/incorrect/timeout in head


@dataclass(frozen=True)
class Report:
    base: RunInfo
    head: RunInfo
    comparisons: tuple[CaseComparison, ...]
    not_compared: tuple[NotCompared, ...]
    threshold: float
    per_workload_thresholds: tuple[tuple[str, float], ...]
    noise_band: float
    ci_method: str
    normalized: bool
    notices: tuple[str, ...] = field(default=())

    @property
    def regressions(self) -> tuple[CaseComparison, ...]:
        return tuple(c for c in self.comparisons if c.regression)

    @property
    def broken(self) -> tuple[NotCompared, ...]:
        return tuple(n for n in self.not_compared if n.broken)

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.broken)

    @property
    def exit_code(self) -> int:
        """What the gate returns: 1 on a confident regression (or a broken case), 0 otherwise."""
        return 1 if self.failed else 0

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.comparisons if c.verdict == verdict)


# --------------------------------------------------------------------------------- statistics


@lru_cache(maxsize=512)
def mann_whitney_critical(m: int, n: int, confidence: float = 0.95) -> int:
    """Largest c with P(U <= c) <= (1 - confidence)/2 for the Mann-Whitney count U of m and n
    samples under no difference; -1 when even U = 0 is more likely than that (too few samples).

    Exact (the distribution of U counted by recursion) while m*n <= 4000, normal approximation
    with continuity correction beyond. For m = n = 7 at 95% this is 8, as the tables say.
    """
    alpha = (1.0 - confidence) / 2
    if m < 1 or n < 1:
        return -1
    if m * n > 4000:
        mean, sd = m * n / 2, math.sqrt(m * n * (m + n + 1) / 12)
        return int(math.floor(mean - sps.norm.ppf(1 - alpha) * sd - 0.5))
    # counts[k][u]: ways to get U = u with i samples on one side and k on the other
    prev = [np.ones(1) for _ in range(n + 1)]
    for i in range(1, m + 1):
        cur = [np.ones(1)]
        for k in range(1, n + 1):
            d = np.zeros(i * k + 1)
            d[k : k + prev[k].size] += prev[k]  # the largest sample is on the i side: +k
            d[: cur[k - 1].size] += cur[k - 1]
            cur.append(d)
        prev = cur
    cdf = np.cumsum(prev[n]) / prev[n].sum()
    return int(np.searchsorted(cdf, alpha + 1e-12, side="right")) - 1


def ratio_ci_rank(
    base: Sequence[float], head: Sequence[float], confidence: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """Hodges-Lehmann estimate of the scale ratio head/base and its rank-test interval.

    Works on log times: the m*n pairwise differences log(head_j) - log(base_i), their median
    (the estimate) and the order statistics bounding it by the Mann-Whitney critical value.
    With too few samples for the confidence asked the interval is (0, inf).
    """
    a = np.log(np.asarray(base, dtype=np.float64))
    b = np.log(np.asarray(head, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("need samples on both sides")
    diffs = np.sort((b[None, :] - a[:, None]).ravel())
    estimate = float(math.exp(np.median(diffs)))
    c = mann_whitney_critical(a.size, b.size, confidence)
    if c < 0:
        return estimate, (0.0, math.inf)
    return estimate, (float(math.exp(diffs[c])), float(math.exp(diffs[diffs.size - 1 - c])))


def _ratio(
    base: Sequence[float], head: Sequence[float], method: str
) -> tuple[float, tuple[float, float], float]:
    """(ratio of medians, 95% CI, centre of the CI) for head vs base."""
    value = float(np.median(head) / np.median(base))
    if method == "bootstrap":
        r = ratio_of_medians(base, head)
        return value, r.ci95, r.value
    centre, ci = ratio_ci_rank(base, head)
    return value, ci, centre


def round_medians(m: Mapping) -> list[float] | None:
    """Per-round medians of a measurement pooled over rounds (harness.gate.merge_rounds), or None."""
    sizes = (m.get("notes") or {}).get("samples_per_round")
    samples = per_call_samples(m)
    if not sizes or len(sizes) < 2 or sum(sizes) != len(samples):
        return None
    bounds = np.cumsum([0, *sizes])
    return [float(np.median(samples[i:j])) for i, j in zip(bounds[:-1], bounds[1:], strict=True)]


def rounds_agree(base: Mapping, head: Mapping, direction: str, noise_band: float = 0.0) -> bool | None:
    """Whether every round of head is slower (or faster) than every round of base; None if unknown.

    The rank interval sees only the spread within runs. When the machine's speed moves from one
    run to the next (another job starts, the clock changes), runs of one side can differ more than
    the sides do, and pooled samples look confidently different when they are not. A change that
    is real shows in every pairing of rounds.
    """
    b, h = round_medians(base), round_medians(head)
    if b is None or h is None:
        return None
    if direction == "slower":
        return min(h) * (1.0 + noise_band) > max(b)
    return max(h) < min(b) * (1.0 + noise_band)


def verdict_of(ci: tuple[float, float], threshold: float, noise_band: float) -> str:
    lo, hi = ci
    if lo > 1.0 + noise_band:
        return "slower"
    if hi < 1.0 / (1.0 + noise_band):
        return "faster"
    if lo >= 1.0 / (1.0 + threshold) and hi <= 1.0 + threshold:
        return "same"
    return "too noisy to tell"


def judge(ratio: float, ci: tuple[float, float], threshold: float, noise_band: float) -> tuple[str, bool]:
    """The verdict, and whether it is a regression (confidently slower, and beyond the threshold)."""
    verdict = verdict_of(ci, threshold, noise_band)
    return verdict, verdict == "slower" and ratio > 1.0 + threshold


# ------------------------------------------------------------------------------------ compare


def _by_key(doc: Mapping, side: str, notices: list[str]) -> dict[tuple, dict]:
    found: dict[tuple, dict] = {}
    for m in doc["measurements"]:
        key = case_of(m).key()
        if key in found:
            notices.append(f"{side} measures {case_of(m).label()} more than once; the last one is used")
        found[key] = m
    return found


def _reference_key(case: Case, keys: Mapping[tuple, dict]) -> tuple | None:
    """The normalization reference of `case` among a run's ok measurements (see module doc)."""
    candidates = []
    for key, m in keys.items():
        ref = case_of(m)
        if (
            m["status"] == "ok"
            and (ref.workload, ref.backend, ref.device, ref.variant) == ("elbo", "numpy", "cpu", "eps=given")
            and (ref.dtype, ref.batch, ref.input_dim, ref.latent_dim, ref.seed)
            == (case.dtype, case.batch, case.input_dim, case.latent_dim, case.seed)
        ):
            candidates.append((ref.threads != 1, ref.threads, key))
    return min(candidates)[2] if candidates else None


def _reference_label(case: Case) -> str:
    return f"numpy elbo {case.dtype} B={case.batch}"


def _machine_notices(base: Mapping, head: Mapping, normalize: bool) -> list[str]:
    mb, mh = base.get("machine") or {}, head.get("machine") or {}
    notices = []
    cpu_b, cpu_h = mb.get("cpu"), mh.get("cpu")
    if cpu_b and cpu_h and cpu_b != cpu_h:
        if not normalize:
            raise CompareError(
                f"base and head ran on different machines ({cpu_b!r} vs {cpu_h!r}): absolute times are "
                "not comparable; measure both on one machine (elbolab gate --base REF) or pass --normalize"
            )
        notices.append(
            f"different machines ({cpu_b} vs {cpu_h}): times normalized by the numpy elbo reference"
        )
    else:
        for k in ("cores", "logical_cpus", "cpu_affinity", "memory_bytes"):
            if k in mb and k in mh and mb[k] != mh[k]:
                notices.append(f"machine {k} differs: base {mb[k]}, head {mh[k]}")
    sb, sh = base.get("software") or {}, head.get("software") or {}
    for k in sorted(set(sb) & set(sh)):
        if isinstance(sb[k], str) and sb[k] != sh[k]:
            notices.append(f"{k} differs: base {sb[k]}, head {sh[k]}")
    return notices


def _check_thresholds(threshold: float, per_workload: Mapping[str, float], noise_band: float) -> None:
    from harness.workloads import WORKLOADS

    for name, t in [("threshold", threshold), *((f"threshold for {w}", t) for w, t in per_workload.items())]:
        if not (isinstance(t, (int, float)) and 0 < t < 10):
            raise CompareError(f"{name} must be a positive fraction such as 0.1, got {t!r}")
    unknown = sorted(set(per_workload) - set(WORKLOADS))
    if unknown:
        raise CompareError(
            f"unknown workload {unknown[0]!r} in per-workload thresholds (known: {', '.join(WORKLOADS)})"
        )
    if not 0 <= noise_band < min([threshold, *per_workload.values()]):
        raise CompareError(f"noise band must be at least 0 and below every threshold, got {noise_band!r}")


def compare(
    base_doc: Mapping,
    head_doc: Mapping,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    per_workload_thresholds: Mapping[str, float] | None = None,
    allow_missing: bool = False,
    normalize: bool = False,
    noise_band: float = DEFAULT_NOISE_BAND,
    ci_method: str = "rank",
    base_label: str = "base",
    head_label: str = "head",
    notices: Sequence[str] = (),
) -> Report:
    """Compare two validated run documents (see the module docstring for the rules).

    Raises CompareError when they cannot be compared: no case in common, different case sets
    without `allow_missing`, different machines without `normalize`, bad thresholds.
    """
    per_workload = dict(per_workload_thresholds or {})
    _check_thresholds(threshold, per_workload, noise_band)
    if ci_method not in CI_METHODS:
        raise CompareError(f"unknown ci method {ci_method!r} (known: {', '.join(CI_METHODS)})")
    all_notices = list(notices) + _machine_notices(base_doc, head_doc, normalize)
    base, head = _by_key(base_doc, base_label, all_notices), _by_key(head_doc, head_label, all_notices)

    common = [k for k in base if k in head]
    only_base = [k for k in base if k not in head]
    only_head = [k for k in head if k not in base]
    if not common:
        raise CompareError(f"{base_label} and {head_label} have no cases in common")
    if (only_base or only_head) and not allow_missing:
        parts = []
        if only_base:
            parts.append(f"{len(only_base)} only in {base_label} (e.g. {Case(*only_base[0]).label()})")
        if only_head:
            parts.append(f"{len(only_head)} only in {head_label} (e.g. {Case(*only_head[0]).label()})")
        raise CompareError(
            f"case sets differ: {'; '.join(parts)}; "
            f"pass --allow-missing to compare the {len(common)} in common"
        )

    comparisons: list[CaseComparison] = []
    skipped: list[NotCompared] = []
    unstable: list[Case] = []
    for key in only_base:
        skipped.append(NotCompared(Case(*key), base[key]["status"], None, f"only in {base_label}"))
    for key in only_head:
        skipped.append(NotCompared(Case(*key), None, head[key]["status"], f"only in {head_label}"))

    for key in common:
        case, mb, mh = Case(*key), base[key], head[key]
        if mb["status"] != "ok" or mh["status"] != "ok":
            skipped.append(_not_ok(case, mb, mh, base_label, head_label))
            continue
        t = per_workload.get(case.workload, threshold)
        b, h = per_call_samples(mb), per_call_samples(mh)
        ratio, ci, centre = _ratio(b, h, ci_method)
        base_med, head_med = float(np.median(b)), float(np.median(h))
        if normalize:
            refs = (_reference_key(case, base), _reference_key(case, head))
            if key in refs:
                skipped.append(NotCompared(case, "ok", "ok", "the normalization reference itself"))
                continue
            if None in refs:
                where = base_label if refs[0] is None else head_label
                skipped.append(
                    NotCompared(case, "ok", "ok", f"no reference ({_reference_label(case)}) in {where}")
                )
                continue
            rb, rh = per_call_samples(base[refs[0]]), per_call_samples(head[refs[1]])
            ref_ratio, ref_ci, ref_centre = _ratio(rb, rh, ci_method)
            ratio, ci = _normalized(ratio, ci, centre, ref_ratio, ref_ci, ref_centre)
            base_med, head_med = base_med / float(np.median(rb)), head_med / float(np.median(rh))
        verdict, regression = judge(ratio, ci, t, noise_band)
        agree = rounds_agree(mb, mh, "slower" if verdict == "slower" else "faster", noise_band)
        if verdict in ("slower", "faster") and agree is False:
            verdict, regression = "too noisy to tell", False
            unstable.append(case)
        comparisons.append(
            CaseComparison(case, base_med, head_med, len(b), len(h), ratio, ci, t, verdict, regression)
        )

    if normalize and not comparisons and any(n.reason.startswith("no reference") for n in skipped):
        raise CompareError(
            "--normalize needs the numpy elbo case (eps=given, cpu) at the same batch and dtype "
            "in both runs; none was found"
        )
    if unstable:
        all_notices.append(
            f"{len(unstable)} case(s) changed within the rounds but not consistently across them "
            f"(e.g. {unstable[0].label()}): the machine's speed moved between runs; not counted"
        )
    noisy = [c for c in comparisons if c.verdict == "too noisy to tell" and c.ratio > 1 + c.threshold]
    if noisy:
        all_notices.append(
            f"{len(noisy)} case(s) look slower than the threshold but are too noisy to tell "
            "(e.g. " + noisy[0].case.label() + "); measure more samples or rounds to decide"
        )
    comparisons.sort(key=lambda c: (not c.regression, -c.ratio))
    return Report(
        base=RunInfo.of(base_doc, base_label),
        head=RunInfo.of(head_doc, head_label),
        comparisons=tuple(comparisons),
        not_compared=tuple(sorted(skipped, key=lambda n: (not n.broken, n.case))),
        threshold=threshold,
        per_workload_thresholds=tuple(sorted(per_workload.items())),
        noise_band=noise_band,
        ci_method=ci_method,
        normalized=normalize,
        notices=tuple(dict.fromkeys(all_notices)),
    )


def _not_ok(case: Case, mb: dict, mh: dict, base_label: str, head_label: str) -> NotCompared:
    parts = []
    for label, m in ((base_label, mb), (head_label, mh)):
        if m["status"] != "ok":
            parts.append(f"{label} {m['status']}" + (f": {m['reason']}" if m.get("reason") else ""))
    broken = mb["status"] == "ok" and mh["status"] in BROKEN_STATUSES
    return NotCompared(case, mb["status"], mh["status"], "; ".join(parts), broken=broken)


def _normalized(ratio, ci, centre, ref_ratio, ref_ci, ref_centre) -> tuple[float, tuple[float, float]]:
    """(case ratio / reference ratio) with the two log-scale half-widths added in quadrature."""
    value = ratio / ref_ratio
    if not (ci[0] > 0 and ref_ci[0] > 0 and math.isfinite(ci[1]) and math.isfinite(ref_ci[1])):
        return value, (0.0, math.inf)
    down = math.hypot(math.log(centre / ci[0]), math.log(ref_ci[1] / ref_centre))
    up = math.hypot(math.log(ci[1] / centre), math.log(ref_centre / ref_ci[0]))
    centre_n = centre / ref_centre
    return value, (centre_n * math.exp(-down), centre_n * math.exp(up))


# ---------------------------------------------------------------------------------- renderers


def format_time(ns: float, normalized: bool = False) -> str:
    if normalized:
        return f"{ns:.3g}× ref"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def format_ratio(c: CaseComparison) -> str:
    hi = "∞" if math.isinf(c.ci95[1]) else f"{c.ci95[1]:.3f}"
    return f"{c.ratio:.3f} ({c.ci95[0]:.3f}–{hi})"


def format_change(c: CaseComparison) -> str:
    return f"{c.change * 100:+.1f}%"


def headline(report: Report) -> str:
    n = len(report.comparisons)
    if report.failed:
        parts = []
        if report.regressions:
            parts.append(f"{len(report.regressions)} regression(s)")
        if report.broken:
            parts.append(f"{len(report.broken)} broken case(s)")
        return f"FAIL: {' and '.join(parts)} in {n} compared case(s)"
    counts = ", ".join(f"{report.count(v)} {v}" for v in VERDICTS if report.count(v))
    return f"PASS: no regression in {n} compared case(s) ({counts})"


def _rule_text(report: Report) -> str:
    extra = "".join(f", {w} {t:.0%}" for w, t in report.per_workload_thresholds)
    norm = "; times normalized by the numpy elbo case of each run" if report.normalized else ""
    return (
        f"regression = whole 95% CI ({report.ci_method}) above +{report.noise_band:.0%} and ratio above "
        f"+{report.threshold:.0%}{extra}{norm}"
    )


def _verdict_style(c: CaseComparison) -> str:
    if c.regression:
        return "bold red"
    return {"slower": "yellow", "faster": "green", "same": "", "too noisy to tell": "magenta"}[c.verdict]


def render_terminal(report: Report, console=None) -> None:
    """Print the report as a rich table (to stdout unless a Console is given)."""
    from rich.table import Table

    from harness.console import stdout_console

    console = console or stdout_console()
    table = Table(title=f"{report.head.label} vs {report.base.label}", title_justify="left")
    for col, justify in (("case", "left"), (report.base.label, "right"), (report.head.label, "right"),
                         ("ratio (95% CI)", "right"), ("change", "right"), ("verdict", "left")):  # fmt: skip
        table.add_column(col, justify=justify)
    for c in report.comparisons:
        style = _verdict_style(c)
        verdict = "REGRESSION" if c.regression else c.verdict
        table.add_row(
            c.case.label(),
            format_time(c.base_median, report.normalized),
            format_time(c.head_median, report.normalized),
            format_ratio(c),
            format_change(c),
            f"[{style}]{verdict}[/]" if style else verdict,
        )
    console.print(report.base.describe())
    console.print(report.head.describe())
    if report.comparisons:
        console.print(table)
    if report.not_compared:
        console.print(f"not compared ({len(report.not_compared)}):")
        for n in report.not_compared:
            mark = "[bold red]BROKEN[/] " if n.broken else ""
            console.print(f"  {mark}{n.case.label()}: {n.reason}", markup=True, highlight=False)
    for notice in report.notices:
        console.print(f"[yellow]note[/]: {notice}", highlight=False)
    console.print(_rule_text(report), style="dim", highlight=False)
    console.print(headline(report), style="bold red" if report.failed else "bold green", highlight=False)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, title: str = "elbolab gate") -> str:
    """The report as GitHub-flavoured Markdown (for $GITHUB_STEP_SUMMARY or a PR comment)."""
    icon = "❌" if report.failed else "✅"
    lines = [f"### {icon} {_md(title)}: {_md(headline(report))}", ""]
    lines.append(f"- {_md(report.base.describe())}")
    lines.append(f"- {_md(report.head.describe())}")
    lines.append(f"- {_md(_rule_text(report))}")
    lines.append("")
    if report.comparisons:
        sides = f"{_md(report.base.label)} | {_md(report.head.label)}"
        lines.append(f"| case | {sides} | ratio (95% CI) | change | verdict |")
        lines.append("|---|--:|--:|--:|--:|---|")
        for c in report.comparisons:
            verdict = "**REGRESSION**" if c.regression else c.verdict
            lines.append(
                f"| {_md(c.case.label())} | {format_time(c.base_median, report.normalized)} | "
                f"{format_time(c.head_median, report.normalized)} | {format_ratio(c)} | "
                f"{format_change(c)} | {verdict} |"
            )
        lines.append("")
    if report.not_compared:
        lines.append(f"<details><summary>Not compared ({len(report.not_compared)})</summary>")
        lines.append("")
        for n in report.not_compared:
            mark = "**broken** " if n.broken else ""
            lines.append(f"- {mark}{_md(n.case.label())}: {_md(n.reason)}")
        lines.append("")
        lines.append("</details>")
        lines.append("")
    for notice in report.notices:
        lines.append(f"> {_md(notice)}")
    if report.notices:
        lines.append("")
    return "\n".join(lines)
