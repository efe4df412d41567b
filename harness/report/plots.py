"""Plots of a run, as inline SVG strings (matplotlib, Agg; text stays text, no external references).

Each function takes the measurement table of tables.measurement_table (one run) and returns an SVG
string, or None when there is nothing to draw. Strings from the results file reach the SVG only as
text, which matplotlib XML-escapes; '$' is escaped (`_t`) so a name never turns into math text.
"""

from __future__ import annotations

import io
import math
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

RC = {
    "svg.fonttype": "none",
    "font.size": 8,
    "axes.titlesize": 9,
    "legend.fontsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "elbolab",
}
COLORS = plt.get_cmap("tab10").colors


def _svg(fig, salt: str) -> str:
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML declaration and the DOCTYPE (an external DTD URL)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF namespace URLs
    return text


_PLAIN = ticker.FuncFormatter(lambda v, _pos: f"{v:g}")


def _log(ax, x: bool = True, y: bool = True) -> None:
    """Log axes with plain-text tick labels (math-text tick labels are slow to lay out)."""
    for on, axis, setter in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if on:
            setter("log")
            axis.set_major_locator(ticker.LogLocator(base=10, numticks=8))
            axis.set_major_formatter(_PLAIN)
            axis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0), numticks=8))
            axis.set_minor_formatter(ticker.NullFormatter())


def _t(text) -> str:
    """A string from a results file as literal plot text (no math-text)."""
    return str(text).replace("$", r"\$")


def _color_map(labels) -> dict[str, tuple]:
    return {label: COLORS[i % len(COLORS)] for i, label in enumerate(sorted(set(labels)))}


def _grid(df: pd.DataFrame):
    dtypes = [d for d in ("float64", "float32") if d in set(df["dtype"])] or sorted(set(df["dtype"]))
    threads = sorted(set(df["threads"]))
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(dtypes),
            len(threads),
            figsize=(3.6 * len(threads) + 1.8, 2.6 * len(dtypes) + 0.4),
            squeeze=False,
        )
        fig.subplots_adjust(left=0.08, right=0.78, bottom=0.1, top=0.88, wspace=0.3, hspace=0.45)
    return fig, axes, dtypes, threads


def _title(workload: str, variant: str) -> str:
    return _t(workload if variant == "eps=given" else f"{workload} ({variant})")


def speedup_bars(df: pd.DataFrame, workload: str, variant: str, baseline: str) -> str | None:
    """Speed-up over the baseline per batch, one bar per backend, 95% CI as error bars."""
    sub = df[
        (df.workload == workload) & (df.variant == variant) & df.speedup.notna() & (df.backend != baseline)
    ]
    if sub.empty:
        return None
    with plt.rc_context(RC):
        fig, axes, dtypes, threads = _grid(sub)
        labels = sorted(set(sub.label))
        colors = _color_map(labels)
        batches = sorted(set(sub.batch))
        width = 0.8 / max(len(labels), 1)
        for i, dtype in enumerate(dtypes):
            for j, t in enumerate(threads):
                ax = axes[i][j]
                cell = sub[(sub.dtype == dtype) & (sub.threads == t)]
                for k, label in enumerate(labels):
                    rows = cell[cell.label == label]
                    if rows.empty:
                        continue
                    xs = (
                        np.array([batches.index(b) for b in rows.batch]) + (k - (len(labels) - 1) / 2) * width
                    )
                    y = rows.speedup.to_numpy()
                    err = np.vstack([y - rows.speedup_lo.to_numpy(), rows.speedup_hi.to_numpy() - y])
                    bars = ax.bar(
                        xs,
                        y,
                        width,
                        yerr=err,
                        capsize=2,
                        color=colors[label],
                        label=_t(label),
                        error_kw={"elinewidth": 0.8},
                    )
                    for bar, flagged in zip(bars, rows.implausible, strict=True):
                        if flagged:
                            bar.set_hatch("xxx")
                            bar.set_edgecolor("black")
                            ax.annotate(
                                "implausible",
                                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center",
                                va="bottom",
                                fontsize=6,
                                color="red",
                                rotation=90,
                            )
                ax.axhline(1.0, color="black", lw=0.8)
                _log(ax, x=False)
                ax.set_xticks(range(len(batches)), [str(b) for b in batches])
                ax.set_xlabel("batch")
                ax.set_ylabel(f"speed-up over {baseline}")
                ax.set_title(_t(f"{dtype}, {t} thread{'s' if t != 1 else ''}"))
        handles, names = axes[0][0].get_legend_handles_labels()
        for ax in axes.flat[1:]:
            for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
                if n not in names:
                    handles.append(h)
                    names.append(n)
        fig.legend(handles, names, loc="center right", frameon=False)
        fig.suptitle(
            f"{_title(workload, variant)}: speed-up over {baseline} (95% CI; hatched red = implausible)"
        )
        return _svg(fig, f"speedup-{workload}-{variant}")


def time_vs_batch(df: pd.DataFrame, workload: str, variant: str) -> str | None:
    """Per-call median vs batch on log-log axes, one line per backend, with the bandwidth bound."""
    sub = df[(df.workload == workload) & (df.variant == variant) & (df.n > 0) & df.timed_ok]
    if sub.empty:
        return None
    with plt.rc_context(RC):
        fig, axes, dtypes, threads = _grid(sub)
        colors = _color_map(sub.label)
        for i, dtype in enumerate(dtypes):
            for j, t in enumerate(threads):
                ax = axes[i][j]
                cell = sub[(sub.dtype == dtype) & (sub.threads == t)]
                for label, rows in cell.groupby("label", sort=True):
                    rows = rows.sort_values("batch")
                    y = rows.median_ns.to_numpy() / 1e3
                    err = np.vstack([y - rows.ci_lo_ns.to_numpy() / 1e3, rows.ci_hi_ns.to_numpy() / 1e3 - y])
                    ax.errorbar(
                        rows.batch,
                        y,
                        yerr=err,
                        marker="o",
                        ms=3,
                        lw=1,
                        capsize=2,
                        color=colors[label],
                        label=_t(label),
                    )
                bound = cell[cell.device == "cpu"].groupby("batch").bandwidth_bound_ns.min().dropna()
                if not bound.empty:
                    ax.plot(
                        bound.index,
                        bound.to_numpy() / 1e3,
                        "k--",
                        lw=1.2,
                        label="bandwidth bound (bytes / measured limit)",
                    )
                _log(ax)
                ax.set_xlabel("batch")
                ax.set_ylabel("time per call (µs)")
                ax.set_title(_t(f"{dtype}, {t} thread{'s' if t != 1 else ''}"))
        _shared_legend(fig, axes)
        fig.suptitle(f"{_title(workload, variant)}: time per call vs batch (median, 95% CI)")
        return _svg(fig, f"time-{workload}-{variant}")


def bandwidth_vs_batch(df: pd.DataFrame, workload: str, variant: str, limits: dict) -> str | None:
    """Achieved GB/s (cost-model bytes / median time) vs batch, against the measured limits."""
    sub = df[
        (df.workload == workload) & (df.variant == variant) & (df.n > 0) & df.timed_ok & (df.device == "cpu")
    ]
    if sub.empty or sub.gb_per_s.isna().all():
        return None
    with plt.rc_context(RC):
        fig, axes, dtypes, threads = _grid(sub)
        colors = _color_map(sub.label)
        dram = (limits or {}).get("memory_bandwidth_bytes_per_s")
        for i, dtype in enumerate(dtypes):
            for j, t in enumerate(threads):
                ax = axes[i][j]
                cell = sub[(sub.dtype == dtype) & (sub.threads == t)]
                for label, rows in cell.groupby("backend", sort=True):
                    rows = rows.sort_values("batch")
                    ax.plot(
                        rows.batch,
                        rows.gb_per_s,
                        marker="o",
                        ms=3,
                        lw=1,
                        color=colors[label],
                        label=_t(label),
                    )
                limit = cell.groupby("batch").bw_limit_gb_per_s.max().dropna()
                if not limit.empty:
                    ax.step(
                        limit.index,
                        limit.to_numpy(),
                        "k--",
                        where="mid",
                        lw=1.2,
                        label="measured limit for the working set",
                    )
                if dram:
                    ax.axhline(dram / 1e9, color="gray", ls=":", lw=1.2, label="DRAM bandwidth (all threads)")
                _log(ax)
                ax.set_xlabel("batch")
                ax.set_ylabel("achieved GB/s")
                ax.set_title(_t(f"{dtype}, {t} thread{'s' if t != 1 else ''}"))
        _shared_legend(fig, axes)
        fig.suptitle(f"{_title(workload, variant)}: achieved bandwidth vs the measured limit")
        return _svg(fig, f"bw-{workload}-{variant}")


def distributions(df: pd.DataFrame, batch: int = 128) -> str | None:
    """Box plots of per-call samples (relative to their median) for every backend, one panel per
    workload, at the batch closest to `batch`, first dtype, fewest threads: how noisy is each?"""
    ok = df[(df.n > 0) & df.timed_ok]
    if ok.empty:
        return None
    panels = list(dict.fromkeys(zip(ok.workload, ok.variant, strict=True)))
    with plt.rc_context(RC):
        cols = min(3, len(panels))
        rows_n = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.8 * cols, 2.6 * rows_n + 0.4), squeeze=False)
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.18, top=0.9, wspace=0.3, hspace=0.75)
        for ax in axes.flat[len(panels) :]:
            ax.set_visible(False)
        for ax, (workload, variant) in zip(axes.flat, panels, strict=False):
            cell = ok[(ok.workload == workload) & (ok.variant == variant)]
            near = min(set(cell.batch), key=lambda b: (abs(math.log(b / batch)), b))
            dtype = "float64" if "float64" in set(cell.dtype) else sorted(set(cell.dtype))[0]
            t = min(cell.threads)
            cell = cell[(cell.batch == near) & (cell.dtype == dtype) & (cell.threads == t)]
            data, labels = [], []
            for _, r in cell.iterrows():
                samples = r["m"].per_call_ns
                data.append(samples / np.median(samples))
                labels.append(r["label"])
            ax.boxplot(data, showfliers=True, flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(labels) + 1), [_t(x) for x in labels], rotation=30, ha="right")
            ax.axhline(1.0, color="black", lw=0.6)
            ax.set_ylabel("sample / median")
            ax.set_title(f"{_title(workload, variant)}, B={near}, {_t(dtype)}, t={t}")
        fig.suptitle("Noise: per-call samples relative to their median")
        return _svg(fig, "distributions")


def roofline(df: pd.DataFrame, limits: dict) -> str | None:
    """Achieved GFLOP/s vs arithmetic intensity (flops / byte) with the measured roofs."""
    ok = df[(df.n > 0) & df.timed_ok & (df.device == "cpu") & (df.bytes > 0) & (df.flops > 0)]
    peak, bw = (limits or {}).get("peak_flops"), (limits or {}).get("memory_bandwidth_bytes_per_s")
    if ok.empty:
        return None
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(8, 3.8))
        fig.subplots_adjust(left=0.08, right=0.72, bottom=0.13, top=0.9)
        markers = "osD^v<>p"
        for k, (workload, rows) in enumerate(ok.groupby("workload", sort=True)):
            ax.scatter(
                rows.flops / rows.bytes,
                rows.gflop_per_s,
                s=10,
                marker=markers[k % len(markers)],
                color=COLORS[k % len(COLORS)],
                label=_t(workload),
                alpha=0.7,
            )
        if peak and bw:
            ai = np.logspace(
                math.log10((ok.flops / ok.bytes).min() / 2), math.log10((ok.flops / ok.bytes).max() * 2)
            )
            ax.plot(
                ai, np.minimum(peak, ai * bw) / 1e9, "k--", lw=1.2, label="roof: DRAM bandwidth, float64 peak"
            )
        _log(ax)
        ax.set_xlabel("arithmetic intensity (flops / byte, cost model)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(
            "Roofline: memory-bound kernels sit on the slope, compute-bound ones under the flat roof"
        )
        fig.legend(loc="center right", frameon=False)
        return _svg(fig, "roofline")


def training_losses(training) -> str | None:
    curves = [t for t in training if t.losses]
    if not curves:
        return None
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(8, 3.4))
        fig.subplots_adjust(left=0.08, right=0.7, bottom=0.14, top=0.9)
        for k, t in enumerate(curves):
            label = _t(f"{t.backend} {t.device} {t.dtype} t={t.threads}")
            ax.plot(
                np.arange(1, len(t.losses) + 1),
                t.losses,
                lw=1,
                color=COLORS[k % len(COLORS)],
                label=label,
                ls=("-", "--", ":", "-.")[k % 4],
            )
        first = curves[0]
        ax.set_xlabel("step")
        ax.set_ylabel("loss (negative ELBO per example)")
        ax.set_title(
            _t(f"Training on {first.dataset or '?'}: batch {first.batch or '?'}, lr {first.lr or '?'}")
        )
        fig.legend(loc="center right", frameon=False)
        return _svg(fig, "training")


def _shared_legend(fig, axes) -> None:
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="center right", frameon=False)
