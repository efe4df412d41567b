"""Plots of a run, as inline SVG strings (matplotlib, Agg; text stays text, no external references).

Each function takes the measurement table of tables.measurement_table (one run) and returns an SVG
string, or None when there is nothing to draw. Strings from the results file reach the SVG only as
text, which matplotlib XML-escapes; '$' is escaped (`_t`) so a name never turns into math text.

One look everywhere: a backend keeps its colour and marker in every figure (`backend_style`: a fixed
palette for the known backends, a colour from a hash of the name for any other); a device other
than the CPU is drawn in the same colour, dashed, with hollow markers. Legends sit below the axes,
never over data; facets that show the same quantity share their y range. Every series is tagged in
the SVG with data-backend / data-device attributes, so a test (or a reader's tool) can tell which
backend a path belongs to.

The SVG is made small: coordinates rounded (0.1 pt in paths, 0.01 elsewhere), the per-text font
list and identity transforms dropped (the page's CSS sets the font), matplotlib's unreferenced
element ids removed, whitespace between tags collapsed, and the styles repeated on every grid line,
tick and spine replaced by classes (the page includes SVG_CSS).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import re
import textwrap
from dataclasses import dataclass
from html import escape

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402

from elbolab.analyse.verdict import judge  # noqa: E402
from elbolab.model.backend import is_control  # noqa: E402
from elbolab.model.roofline import bandwidth_limit_for, flops_limit_for, size_text, sweep_limit  # noqa: E402

# sizes in pt; a figure is at most ~12.5 in wide, so at 96 px/in it is shown at its natural size in a
# 1400 px window and 9 pt is 12 px
RC = {
    "svg.fonttype": "none",
    "font.size": 10,
    "axes.titlesize": 10.5,
    "figure.titlesize": 12,
    "legend.fontsize": 10,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "elbolab",
}

# The fixed palette: one colour and marker per known backend (colour-blind-friendlier Tableau hues).
PALETTE: dict[str, tuple[str, str]] = {
    "numpy": ("#1f77b4", "o"),
    "torch": ("#ff7f0e", "s"),
    "torch-compile": ("#8c564b", "D"),
    "numba": ("#2ca02c", "^"),
    "numba-parallel": ("#17becf", "v"),
    "rust": ("#d62728", "P"),
    "rust-inner": ("#9467bd", "X"),
    "rust-tutorial": ("#e377c2", "*"),
}
_HASH_MARKERS = "hpd<>8H"
WORKLOAD_MARKERS = {"elbo": "o", "elbo_grad": "s", "iwae": "^", "vae_step": "D"}
BOUND_COLOUR = "#555555"
FLAG_COLOUR = "#b3261e"


def _digest(name: str) -> bytes:
    return hashlib.sha256(str(name).encode("utf-8")).digest()


def backend_colour(backend: str) -> str:
    """The backend's colour: fixed for the known ones, else a deterministic colour from its name."""
    if backend in PALETTE:
        return PALETTE[backend][0]
    h = _digest(backend)
    hue = int.from_bytes(h[:2], "big") / 65536
    light = 0.35 + 0.15 * h[2] / 255
    r, g, b = colorsys.hls_to_rgb(hue, light, 0.65)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def backend_marker(backend: str) -> str:
    if backend in PALETTE:
        return PALETTE[backend][1]
    return _HASH_MARKERS[_digest(backend)[3] % len(_HASH_MARKERS)]


def backend_order(backend: str) -> tuple:
    """Sort key: the known backends in palette order, then the others by name."""
    names = list(PALETTE)
    return (names.index(backend), "") if backend in names else (len(names), str(backend))


def series_order(pair: tuple[str, str]) -> tuple:
    backend, device = pair
    return (*backend_order(backend), device != "cpu", device)


def backend_style(backend: str, device: str = "cpu") -> dict:
    """Line2D keyword arguments: colour and marker of the backend; another device dashed and hollow."""
    colour = backend_colour(backend)
    on_cpu = device == "cpu"
    return {
        "color": colour,
        "marker": backend_marker(backend),
        "linestyle": "-" if on_cpu else "--",
        "markerfacecolor": colour if on_cpu else "white",
        "markeredgecolor": colour,
    }


def series_label(backend: str, device: str) -> str:
    return _t(backend if device == "cpu" else f"{backend} ({device})")


class _Tags:
    """Series of one figure: each artist gets a gid that _svg turns into data attributes."""

    def __init__(self) -> None:
        self.series: list[tuple[str, str]] = []

    def __call__(self, artist, backend: str, device: str = "cpu"):
        artist.set_gid(f"elbolab-series-{len(self.series)}")
        self.series.append((str(backend), str(device)))
        return artist


# ------------------------------------------------------------------------------------ SVG output

_PATH_D = re.compile(r'(<path id="[^"]*" )?\bd="([^"]*)"')
_ATTR = re.compile(r'\b(viewBox|x|y|x1|x2|y1|y2|width|height|transform|style|points|cx|cy|r)="([^"]*)"')
_TOKEN = re.compile(r"[A-Za-z]|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_LONG_NUMBER = re.compile(r"(?<![\w#.])-?\d+\.\d{3,}")


def _num(x: float, digits: int) -> str:
    """x to `digits` decimals, without trailing zeros after the point ('12.5', '10', never '1')."""
    text = f"{x:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _round_path(d: str, digits: int) -> str:
    """Path data rounded to `digits` decimals; a polyline (M then L only) written with relative
    moves (`l dx dy ...`), which are shorter, computed from the rounded points (no drift)."""
    toks = _TOKEN.findall(d)
    cmds = [t for t in toks if t.isalpha()]
    if len(cmds) >= 4 and cmds[0] == "M" and set(cmds[1:]) <= {"L"} and len(toks) == 3 * len(cmds):
        scale = 10**digits
        pts = [
            (round(float(toks[i + 1]) * scale), round(float(toks[i + 2]) * scale))
            for i in range(0, len(toks), 3)
        ]
        out = [f"M{_num(pts[0][0] / scale, digits)} {_num(pts[0][1] / scale, digits)}l"]
        prev = pts[0]
        moves = []
        for x, y in pts[1:]:
            moves.append(f"{_num((x - prev[0]) / scale, digits)} {_num((y - prev[1]) / scale, digits)}")
            prev = (x, y)
        return out[0] + " ".join(moves)
    out: list[str] = []
    for tok in toks:
        out.append(tok if tok.isalpha() else _num(float(tok), digits))
    return re.sub(r" ?([A-Za-z]) ?", r"\1", " ".join(out))


def _digits(m: re.Match) -> int:
    """Decimals a path keeps: a marker's shape two, a short drawn path one, a long one (a curve of
    many points, a band) none."""
    if m.group(1) and len(m.group(2)) < 160:
        return 2
    return 0 if len(m.group(2)) > 80 else 1


_USES = re.compile(r'<g( clip-path="[^"]*")?>((?:<use [^>]*/>)+)</g>')
_USE_STYLE = re.compile(r' style="([^"]*)"')


def _hoist_use_styles(text: str) -> str:
    """A group of markers that share one style: the style once on the group, not on every <use>."""

    def hoist(m: re.Match) -> str:
        styles = set(_USE_STYLE.findall(m.group(2)))
        if len(styles) != 1 or m.group(2).count("<use") < 2:
            return m.group()
        return f'<g{m.group(1) or ""} style="{styles.pop()}">{_USE_STYLE.sub("", m.group(2))}</g>'

    return _USES.sub(hoist, text)


def _unwrap_bare_groups(text: str) -> str:
    """Drop <g> elements without attributes (matplotlib's wrappers), keeping their content."""
    out, stack, pos = [], [], 0
    for m in re.finditer(r"<g>|<g [^>]*>|</g>", text):
        out.append(text[pos : m.start()])
        tag = m.group()
        if tag == "</g>":
            if stack.pop():
                out.append(tag)
        else:
            bare = tag == "<g>"
            stack.append(not bare)
            if not bare:
                out.append(tag)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


# The styles matplotlib repeats on every grid line, tick and spine, as classes set by the page's CSS
# (SVG_CSS): a grid line's 90-character style attribute becomes class="g".
STYLE_CLASSES = {
    "fill: none; stroke: #b0b0b0; stroke-opacity: 0.3; stroke-width: 0.8; stroke-linecap: square": "g",
    "stroke: #000000; stroke-width: 0.8": "t",
    "fill: none; stroke: #000000; stroke-width: 0.8; stroke-linejoin: miter; stroke-linecap: square": "s",
    "fill: none; stroke: #000000; stroke-linecap: square": "n",
}
SVG_CSS = " ".join(f".fig svg .{c} {{ {style} }}" for style, c in STYLE_CLASSES.items())
_STYLE_ATTR = re.compile(r' style="([^"]*)"')


def _svg(fig, salt: str, tags: _Tags | None = None) -> str:
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML declaration and the DOCTYPE (an external DTD URL)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF namespace URLs
    text = re.sub(r'<style type="text/css">[^<]*</style>', "", text)  # the page's CSS has it
    text = re.sub(r"font-family:[^;\"]*;?\s*", "", text)  # the page's CSS sets the font
    text = re.sub(r' transform="rotate\(-0 [^"]*\)"', "", text)
    text = re.sub(r"\s*<defs>\s*</defs>", "", text)

    # marker shapes (defined once, a few pt wide) keep two decimals, long paths (lines, bands, grids)
    # whole points (1 pt is 1.3 px at the figure's natural size: no kink a reader can see)
    text = _PATH_D.sub(lambda m: f'{m.group(1) or ""}d="{_round_path(m.group(2), _digits(m))}"', text)
    text = _ATTR.sub(
        lambda m: f'{m.group(1)}="{_LONG_NUMBER.sub(lambda n: _num(float(n.group()), 1), m.group(2))}"', text
    )
    if tags is not None:
        text = re.sub(
            r'id="elbolab-series-(\d+)"',
            lambda m: 'data-backend="{}" data-device="{}"'.format(
                *(escape(x, quote=True) for x in tags.series[int(m.group(1))])
            ),
            text,
        )
    referenced = set(re.findall(r"#([\w.-]+)", text))
    text = re.sub(r' id="([^"]*)"', lambda m: m.group() if m.group(1) in referenced else "", text)
    # matplotlib's ids are 11-character hashes, written at every marker and clip: short ones, unique in
    # the page by a prefix of the figure's own; SVG 2's href in place of xlink:href
    prefix = "f" + hashlib.sha256(salt.encode()).hexdigest()[:3]
    short = {old: f"{prefix}{i:x}" for i, old in enumerate(dict.fromkeys(re.findall(r' id="([^"]*)"', text)))}
    text = re.sub(r'(?<= id=")([^"]*)(?=")', lambda m: short.get(m.group(1), m.group(1)), text)
    text = re.sub(r"(?<=#)([\w.-]+)(?=[\")])", lambda m: short.get(m.group(1), m.group(1)), text)
    text = text.replace("xlink:href=", "href=").replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    text = re.sub(r">\s+<", "><", text)
    text = _unwrap_bare_groups(_hoist_use_styles(text))
    text = _STYLE_ATTR.sub(lambda m: f' class="{STYLE_CLASSES[m.group(1)]}"' if m.group(1) in STYLE_CLASSES
                           else m.group(), text)  # fmt: skip
    return text.strip()


# ------------------------------------------------------------------------------------- helpers

_PLAIN = ticker.FuncFormatter(lambda v, _pos: f"{v:g}")


def _time_label(ns: float) -> str:
    """A time tick in its own unit: '100 ns', '1 µs', '10 ms' (never '100000 µs' or '1e+06')."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3), ("ns", 1.0)):
        if ns >= scale * 0.9995:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.2g} ns"


TIME = ticker.FuncFormatter(lambda v, _pos: _time_label(v))
# a speed-up tick: '2x', '1x', '1/8' (never 0.0078125)
RATIO = ticker.FuncFormatter(lambda v, _pos: f"{v:g}x" if v >= 1 else f"1/{1 / v:.3g}")


SHAPE = ("input_dim", "latent_dim", "hidden_dim", "importance_samples")


def common_shape(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Each workload's rows at its most measured shape (D, L, H, K), so a line joins batches of one
    shape only; and a note naming the shape where the run has several."""
    if df.empty:
        return df, ""
    keep, notes = [], []
    for workload, rows in df.groupby("workload", sort=False):
        shapes = rows.groupby(list(SHAPE)).size()
        shape = shapes.idxmax()
        keep.append(rows[(rows[list(SHAPE)] == pd.Series(shape, index=list(SHAPE))).all(axis=1)])
        if len(shapes) > 1:
            notes.append(f"{_t(workload)} at D={shape[0]} L={shape[1]}")
    out = pd.concat(keep) if keep else df
    return out, ("; the most measured shape: " + ", ".join(notes)) if notes else ""


def _say_empty(ax, what: str = "nothing measured here") -> None:
    """An empty panel says so, instead of showing bare axes."""
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="#5b6475")


def _is_empty(ax) -> bool:
    return not ax.lines and not ax.collections and not ax.patches


def plotted(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the plots draw: timed and ok, never the null control (the reference again, whose
    place is the run's resolution and each case's detail, not a line among the backends)."""
    return df[(df.n > 0) & df.timed_ok & ~df.backend.map(is_control)]


def _log(ax, x: bool = True, y: bool = True) -> None:
    """Log axes with plain-text tick labels (math-text tick labels are slow to lay out)."""
    for on, axis, setter in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if on:
            setter("log")
            axis.set_major_locator(ticker.LogLocator(base=10, numticks=8))
            axis.set_major_formatter(_PLAIN)
            axis.set_minor_locator(ticker.NullLocator())
            axis.set_minor_formatter(ticker.NullFormatter())


def _batch_axis(ax, batches) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(batches)))
    ax.xaxis.set_major_formatter(_PLAIN)
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def _t(text) -> str:
    """A string from a results file as literal plot text (no math-text)."""
    return str(text).replace("$", r"\$")


def _variant_text(variant: str) -> str:
    return "eps given" if variant == "eps=given" else _t(variant.replace("=", " "))


def _threads_text(t: int) -> str:
    return f"{t} thread{'s' if t != 1 else ''}"


def headline_setting(df: pd.DataFrame) -> tuple[str, int]:
    """The dtype and thread count a summary shows: float64 if measured, and the fewest threads."""
    dtypes = set(df["dtype"])
    dtype = "float64" if "float64" in dtypes else sorted(dtypes)[0]
    return dtype, int(min(df[df["dtype"] == dtype]["threads"]))


def workload_pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(workload, variant) in the order workloads first appear, eps=given first within one."""
    order = list(dict.fromkeys(df["workload"]))
    pairs = set(zip(df["workload"], df["variant"], strict=True))
    return sorted(pairs, key=lambda p: (order.index(p[0]), p[1] != "eps=given", p[1]))


def _series_handles(pairs) -> tuple[list, list[str]]:
    handles, labels = [], []
    for backend, device in sorted(pairs, key=series_order):
        handles.append(Line2D([], [], ms=6, lw=1.5, **backend_style(backend, device)))
        labels.append(series_label(backend, device))
    return handles, labels


# ------------------------------------------------------------------------------------- layout
# Laid out by hand in inches (matplotlib's constrained layout costs as much again as drawing).

MAX_WIDTH = 12.4  # in: shown at natural size (no down-scaling of the text) in a 1400 px window
LEGEND_ROW = 0.26  # in per legend row at 10 pt


_TEXT = TextToPath()
_LEGEND_FONT = FontProperties(family="DejaVu Sans", size=RC["legend.fontsize"])


def _label_width(label: str) -> float:
    """A legend label's width in inches, from the font's own metrics (the figure's text is set in
    DejaVu Sans; the page's CSS names it first)."""
    return _TEXT.get_text_width_height_descent(label, _LEGEND_FONT, ismath=False)[0] / 72


def _legend_columns(labels: list[str], width: float) -> int:
    """The most legend columns (filled column by column) that fit the figure: each column its
    handle (2.6 em), the pad (0.8 em) and its widest label, 1.2 em between columns, 5% to spare."""
    em = RC["legend.fontsize"] / 72
    est = [_label_width(label) + 3.4 * em for label in labels]
    for ncol in range(min(len(labels), 6), 0, -1):
        # as matplotlib fills them: the first (n mod ncol) columns one entry longer than the rest
        rows, long = divmod(len(labels), ncol)
        sizes = [rows + 1] * long + [rows] * (ncol - long)
        starts = [sum(sizes[:c]) for c in range(ncol)]
        cols = [est[a : a + n] for a, n in zip(starts, sizes, strict=True)]
        if 1.05 * (sum(max(c) for c in cols if c) + 1.2 * em * (ncol - 1)) <= width - 0.3:
            return ncol
    return 1


@dataclass
class _Layout:
    fig: object
    axes: np.ndarray
    ncol: int
    height: float
    title: str


def _layout(
    nrows: int,
    ncols: int,
    panel: tuple[float, float],
    legend: list[str],
    title: str,
    *,
    left: float = 0.9,
    right: float = 0.25,
    top: float = 0.8,
    bottom: float = 0.6,
    wspace: float = 0.22,
    hspace: float = 0.45,
    **kw,
) -> _Layout:
    pw, ph = panel
    pw = min(pw, (MAX_WIDTH - left - right - (ncols - 1) * wspace) / ncols)
    width = left + right + ncols * pw + (ncols - 1) * wspace
    ncol = _legend_columns(legend, width) if legend else 1
    legend_h = (math.ceil(len(legend) / ncol) * LEGEND_ROW + 0.12) if legend else 0.0
    title = textwrap.fill(title, max(20, int((width - 0.4) / 0.105)))  # ~0.1 in per character at 12 pt
    top += 0.24 * title.count("\n")
    height = top + nrows * ph + (nrows - 1) * hspace + bottom + legend_h
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kw)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=(bottom + legend_h) / height, wspace=wspace / pw, hspace=hspace / ph)  # fmt: skip
    return _Layout(fig, axes, ncol, height, title)


def _finish(lay: _Layout, handles, labels) -> None:
    fig = lay.fig
    fig.suptitle(lay.title, y=1 - 0.1 / lay.height, va="top")
    if handles:
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.04 / lay.height), ncol=lay.ncol,
                   frameon=False, handlelength=2.6, columnspacing=1.2, borderaxespad=0)  # fmt: skip


def _pairs_of(df: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(set(zip(df["backend"], df["device"], strict=True)), key=series_order)


def _name(workload: str, variant: str) -> str:
    return _t(workload if variant == "eps=given" else f"{workload}, {variant.replace('=', ' ')}")


# --------------------------------------------------------------------------------------- figures


def time_vs_batch(df: pd.DataFrame, workload: str) -> str | None:
    """Per-call median vs batch (log-log) for one workload: a panel per dtype (rows) and per variant
    and thread count, the fewest and the most (columns), one line per backend (its 95% CI as a band where the band would be
    visible) and the bandwidth bound. All panels share both axes."""
    sub, shape = common_shape(plotted(df[df.workload == workload]))
    if sub.empty:
        return None
    dtypes = [d for d in ("float64", "float32") if d in set(sub.dtype)]
    dtypes += sorted(set(sub.dtype) - set(dtypes))
    variants = [v for _, v in workload_pairs(sub)]
    # the fewest and the most threads (the thread-scaling figure has the counts between)
    ends = sorted(set(sub.threads))
    ends = [ends[0], ends[-1]] if len(ends) > 1 else ends
    cols = [(v, t) for v in variants for t in ends if ((sub.variant == v) & (sub.threads == t)).any()]
    pairs = _pairs_of(sub)
    handles, labels = _series_handles(pairs)
    handles.append(Line2D([], [], color=BOUND_COLOUR, ls=":", lw=2))
    labels.append("bandwidth bound")
    if sub.implausible.any():
        handles.append(Line2D([], [], ls="none", marker="o", ms=11, mfc="none", mec=FLAG_COLOUR, mew=1.8))
        labels.append("implausible time")
    tags = _Tags()
    batches = sorted(set(sub.batch))
    with plt.rc_context(RC):
        title = (
            f"{_t(workload)}: time per call vs batch (median; band: its 95% CI, where wider than 5%){shape}"
        )
        lay = _layout(len(dtypes), len(cols), (3.3 if len(cols) <= 2 else 2.75, 2.1), labels, title,
                      sharex=True, sharey=True)  # fmt: skip
        for i, dtype in enumerate(dtypes):
            for j, (variant, t) in enumerate(cols):
                ax = lay.axes[i][j]
                cell = sub[(sub.dtype == dtype) & (sub.variant == variant) & (sub.threads == t)]
                for (backend, device), rows in sorted(
                    cell.groupby(["backend", "device"], sort=False), key=lambda kv: series_order(kv[0])
                ):
                    rows = rows.sort_values("batch")
                    style = backend_style(backend, device)
                    x, y = rows.batch.to_numpy(), rows.median_ns.to_numpy()
                    lo, hi = rows.ci_lo_ns.to_numpy(), rows.ci_hi_ns.to_numpy()
                    if len(x) > 1 and np.nanmax(hi / lo) > 1.05:  # a band only where it can be seen
                        tags(
                            ax.fill_between(x, lo, hi, color=style["color"], alpha=0.18, lw=0),
                            backend,
                            device,
                        )
                    tags(ax.plot(x, y, ms=5, lw=1.5, **style)[0], backend, device)
                    bad = rows[rows.implausible]
                    if not bad.empty:
                        ax.plot(bad.batch, bad.median_ns, ls="none", marker="o", ms=11, mfc="none",
                                mec=FLAG_COLOUR, mew=1.8)  # fmt: skip
                bound = cell[cell.device == "cpu"].groupby("batch").bandwidth_bound_ns.min().dropna()
                if not bound.empty:
                    ax.plot(bound.index, bound.to_numpy(), color=BOUND_COLOUR, ls=":", lw=2)
                ax.set_title(f"{_t(dtype)}, {_variant_text(variant)}, {_threads_text(t)}")
                if _is_empty(ax):
                    _say_empty(ax, f"not measured in {_t(dtype)}")
                if j == 0:
                    ax.set_ylabel("time per call")
                if i == len(dtypes) - 1:
                    ax.set_xlabel("batch")
        for ax in lay.axes.flat:
            _log(ax, x=False)
            ax.yaxis.set_major_formatter(TIME)
            _batch_axis(ax, batches)
        _finish(lay, handles, labels)
        return _svg(lay.fig, f"time-{workload}", tags)


def bandwidth(df: pd.DataFrame, limits: dict) -> str | None:
    """Achieved GB/s (cost-model bytes / median time) vs batch, one panel per workload (the headline
    dtype and fewest threads), against the bandwidth measured for the working set. Shared y."""
    sub, shape = common_shape(plotted(df[df.device == "cpu"]))
    if sub.empty or sub.gb_per_s.isna().all():
        return None
    pairs = workload_pairs(sub)
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    dram = (limits or {}).get("memory_bandwidth_bytes_per_s")
    handles, labels = _series_handles(_pairs_of(sub))
    handles.append(Line2D([], [], color=BOUND_COLOUR, ls="--", lw=1.6))
    labels.append("measured for the working set")
    if dram:
        handles.append(Line2D([], [], color=BOUND_COLOUR, ls=":", lw=1.6))
        labels.append("DRAM, all threads")
    tags = _Tags()
    with plt.rc_context(RC):
        title = f"Achieved bandwidth (cost-model bytes / median time) against the measured bandwidth{shape}"
        lay = _layout(nrows, ncols, (3.6, 2.3), labels, title, hspace=0.85, sharey=True)
        for ax in lay.axes.flat[len(pairs) :]:
            ax.set_visible(False)
        for k, (ax, (workload, variant)) in enumerate(zip(lay.axes.flat, pairs, strict=False)):
            cell = sub[(sub.workload == workload) & (sub.variant == variant)]
            dtype, t = headline_setting(cell)
            cell = cell[(cell.dtype == dtype) & (cell.threads == t)]
            for (backend, device), rows in sorted(
                cell.groupby(["backend", "device"], sort=False), key=lambda kv: series_order(kv[0])
            ):
                rows = rows.sort_values("batch")
                tags(ax.plot(rows.batch, rows.gb_per_s, ms=5, lw=1.5, **backend_style(backend, device))[0],
                     backend, device)  # fmt: skip
            limit = cell.groupby("batch").bw_limit_gb_per_s.max().dropna()
            if not limit.empty:
                ax.step(limit.index, limit.to_numpy(), color=BOUND_COLOUR, ls="--", where="mid", lw=1.6)
            if dram:
                ax.axhline(dram / 1e9, color=BOUND_COLOUR, ls=":", lw=1.6)
            _log(ax, x=False)
            _batch_axis(ax, cell.batch.unique())
            ax.set_title(f"{_name(workload, variant)} ({_t(dtype)}, {_threads_text(t)})")
            if k % ncols == 0:
                ax.set_ylabel("achieved GB/s")
            ax.set_xlabel("batch")
        _finish(lay, handles, labels)
        return _svg(lay.fig, "bandwidth", tags)


def spread(values: list, n: int) -> list:
    """At most n of the sorted values, the first and the last among them, evenly spread between."""
    if len(values) <= n:
        return values
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


def _roofs(limits: dict, threads: int) -> list[tuple[str, float]]:
    """(label, bytes/s) of every working-set size the run's probes measured, at this thread count
    (the nearest measured), smallest first."""
    out = []
    sweep = (limits or {}).get("bandwidth_sweep") or []
    sizes = sorted({r["working_set_bytes"] for r in sweep if r.get("working_set_bytes")})
    for size in spread(sizes, 4):  # a sweep has 15 or more sizes: four roofs, smallest to largest
        ceiling = sweep_limit(sweep, size, threads)
        if ceiling:
            out.append((size_text(size), ceiling[0]))
    for level in (limits or {}).get("bandwidth_by_size") or []:
        by_t = {int(k): float(v) for k, v in (level.get("bytes_per_s") or {}).items()}
        if by_t:
            t = min(by_t, key=lambda k: (abs(k - threads), k))
            out.append((str(level.get("size_label")), by_t[t]))
    if not out and (limits or {}).get("memory_bandwidth_bytes_per_s"):
        out.append(("dram", float(limits["memory_bandwidth_bytes_per_s"])))
    return out


def roofline(df: pd.DataFrame, limits: dict) -> str | None:
    """Achieved GFLOP/s vs arithmetic intensity (flops / byte) with the measured roofs, a panel per
    batch (a working-set size: the same kernel has the same intensity at every batch, so one panel
    would stack them), the headline dtype and fewest threads; colour by backend, marker by workload,
    each backend nudged sideways so a workload's column of points can be read. The bold roof is the
    bandwidth measured for the panel's median working set; the thin ones, the other sizes probed."""
    ok, shape = common_shape(plotted(df[(df.device == "cpu") & (df.bytes > 0) & (df.flops > 0)]))
    if ok.empty:
        return None
    dtype, t = headline_setting(ok)
    ok = ok[(ok.dtype == dtype) & (ok.threads == t)]
    peak = flops_limit_for(limits, dtype, t)
    roofs = _roofs(limits, t)
    batches = spread(sorted(set(ok.batch)), 4)
    ok = ok[ok.batch.isin(batches)]
    workloads = list(dict.fromkeys(ok.workload))
    markers = {w: WORKLOAD_MARKERS.get(w, "hpd<>8"[i % 6]) for i, w in enumerate(workloads)}
    backends = sorted(set(ok.backend), key=backend_order)
    nudge = {b: 1.12 ** (i - (len(backends) - 1) / 2) for i, b in enumerate(backends)}
    handles, labels = [], []
    for backend in backends:
        handles.append(Line2D([], [], ls="none", marker="o", ms=7, color=backend_colour(backend)))
        labels.append(_t(backend))
    for w in workloads:
        handles.append(Line2D([], [], ls="none", marker=markers[w], ms=7, color="#888888"))
        labels.append(_t(w))
    if roofs or peak:
        handles.append(Line2D([], [], color=BOUND_COLOUR, ls="--", lw=1.6))
        labels.append("roofs: bandwidth at the working set, peak flops")
    ai_all = ok.flops / ok.bytes
    x_lo, x_hi = float(ai_all.min()) / 2.5, float(ai_all.max()) * 2.5
    tags = _Tags()
    ncols = min(len(batches), 4)
    nrows = math.ceil(len(batches) / ncols)
    with plt.rc_context(RC):
        title = (f"Roofline per batch ({_t(dtype)}, {_threads_text(t)}): memory-bound kernels sit under the slope, "
                 f"compute-bound ones under the flat roof{shape}")  # fmt: skip
        lay = _layout(nrows, ncols, (3.0, 2.6), labels, title, sharex=True, sharey=True, hspace=0.6)
        for ax in lay.axes.flat[len(batches) :]:
            ax.set_visible(False)
        ai = np.logspace(math.log10(x_lo), math.log10(x_hi), 40)
        for k, (ax, batch) in enumerate(zip(lay.axes.flat, batches, strict=False)):
            at = ok[ok.batch == batch]
            ws = float(at.bytes.median())
            own = bandwidth_limit_for(limits or {}, ws, t) if limits else None
            for _, bw in roofs:
                bold = own is not None and math.isclose(bw, own[0])
                y = ai * bw / 1e9 if not peak else np.minimum(peak / 1e9, ai * bw / 1e9)
                ax.plot(ai, y, color=BOUND_COLOUR, ls="--", lw=1.6 if bold else 0.7, alpha=1 if bold else 0.5)
            if peak and not roofs:
                ax.axhline(peak / 1e9, color=BOUND_COLOUR, ls="--", lw=1.6)
            for (backend, workload), rows in sorted(at.groupby(["backend", "workload"], sort=False),
                                                    key=lambda kv: (backend_order(kv[0][0]), kv[0][1])):  # fmt: skip
                tags(ax.scatter(rows.flops / rows.bytes * nudge[backend], rows.gflop_per_s, s=30, marker=markers[workload],
                                color=backend_colour(backend), edgecolors="white", linewidths=0.4, alpha=0.9),
                     backend)  # fmt: skip
            _log(ax)
            ax.set_xlim(x_lo, x_hi)
            level = f", roof: {own[1]}" if own else ""
            ax.set_title(f"B={batch} (~{ws / 2**20:.2g} MiB{level})" if ws >= 2**19 else
                         f"B={batch} (~{ws / 2**10:.3g} KiB{level})")  # fmt: skip
            if k % ncols == 0:
                ax.set_ylabel("achieved GFLOP/s")
            if k >= len(batches) - ncols:
                ax.set_xlabel("flops / byte")
        _finish(lay, handles, labels)
        return _svg(lay.fig, "roofline", tags)


def training_losses(training) -> str | None:
    """The training runs: the reference loss curve (NumPy float64) with the bias-only loss, and each
    backend's relative difference from NumPy's curve in the same dtype, the largest up to each step
    (log scale, shared y)."""
    curves = [t for t in training if t.losses]
    if not curves:
        return None
    numpy_of = {t.dtype: t for t in curves if t.backend == "numpy" and t.device == "cpu"}
    ref = numpy_of.get("float64") or next(iter(numpy_of.values()), curves[0])
    dtypes = [d for d in ("float64", "float32") if any(t.dtype == d for t in curves)]
    dtypes += sorted({t.dtype for t in curves} - set(dtypes))
    others = [t for t in curves if t is not numpy_of.get(t.dtype)]
    handles, labels = _series_handles({(t.backend, t.device) for t in others})
    floor = 1e-17
    tags = _Tags()
    with plt.rc_context(RC):
        title = _t(f"Training on {ref.dataset or '?'}: batch {ref.batch or '?'}, lr {ref.lr or '?'}, "
                   f"{len(ref.losses)} steps")  # fmt: skip
        lay = _layout(1, 1 + len(dtypes), (3.3, 2.6), labels, title, top=1.0, wspace=0.9)
        ax0 = lay.axes[0][0]
        steps = np.arange(1, len(ref.losses) + 1)
        style = backend_style(ref.backend, ref.device) | {"marker": None}
        tags(ax0.plot(steps, ref.losses, lw=1.6, **style)[0], ref.backend, ref.device)
        if ref.bias_only_loss is not None:
            ax0.axhline(ref.bias_only_loss, color=BOUND_COLOUR, ls="--", lw=1.4)
            note = "dashed: bias-only model"
        else:
            note = "bias-only loss not recorded"
        ax0.set_xlabel("step")
        ax0.set_ylabel("loss (−ELBO per example)")
        ax0.set_title(f"{series_label(ref.backend, ref.device)} {_t(ref.dtype)} loss\n({note})")
        for k, dtype in enumerate(dtypes):
            ax = lay.axes[0][1 + k]
            if k:
                ax.sharey(lay.axes[0][1])
                ax.tick_params(labelleft=False)
            base = numpy_of.get(dtype)
            if base is None:
                ax.text(0.5, 0.5, _t(f"no NumPy {dtype} curve"), ha="center", transform=ax.transAxes)
            else:
                b = np.asarray(base.losses, dtype=float)
                for t in sorted(others, key=lambda c: series_order((c.backend, c.device))):
                    if t.dtype != dtype:
                        continue
                    n = min(len(b), len(t.losses))
                    diff = np.abs(np.asarray(t.losses[:n], dtype=float) - b[:n]) / np.maximum(
                        np.abs(b[:n]), 1e-300
                    )
                    diff = np.maximum.accumulate(diff)  # the largest so far: monotone, readable
                    tags(ax.plot(np.arange(1, n + 1), np.maximum(diff, floor), lw=1.3, ms=5,
                                 markevery=max(1, n // 6), **backend_style(t.backend, t.device))[0],
                         t.backend, t.device)  # fmt: skip
            _log(ax, x=False)
            ax.set_xlabel("step")
            if k == 0:
                ax.set_ylabel("largest relative difference so far")
            ax.set_title(
                f"{_t(dtype)}: |loss − NumPy's| / NumPy's\n(NumPy in {_t(dtype)}; 0 drawn at {floor:g})"
            )
        _finish(lay, handles, labels)
        return _svg(lay.fig, "training", tags)


# ------------------------------------------------------------------------------- thread scaling


@dataclass(frozen=True)
class Scaling:
    """What a thread-scaling figure of one workload shows: its setting and one row per point."""

    workload: str
    variant: str
    dtype: str
    batches: list[int]  # a mid batch (when there is one) and the largest
    points: pd.DataFrame  # backend, device, batch, threads, speedup, lo, hi, efficiency, verdict


def thread_scaling_data(df: pd.DataFrame, workload: str) -> Scaling | None:
    """Each backend's speed-up over its own 1-thread time at every thread count it was measured at
    (Hodges-Lehmann ratio of the per-call samples, with its 95% interval and the shared verdict),
    float64 (else the headline dtype), eps given (else the workload's first variant), at the largest
    batch and one mid batch. Only backends measured at more than one thread count; None when none is."""
    sub = plotted(df[df.workload == workload])
    if sub.empty or sub.threads.nunique() < 2:
        return None
    variant = workload_pairs(sub)[0][1]
    sub = sub[sub.variant == variant]
    dtype, _ = headline_setting(sub)
    sub = sub[sub.dtype == dtype]
    dims = ["input_dim", "latent_dim", "hidden_dim", "importance_samples"]
    common = sub.groupby(dims).size().idxmax()  # one shape: the most measured one
    sub = sub[(sub[dims] == pd.Series(common, index=dims)).all(axis=1)]
    scaled = {}
    for key, rows in sub.groupby(["backend", "device", "batch"]):
        if rows.threads.nunique() > 1 and (rows.threads == 1).any():
            scaled[key] = rows
    if not scaled:
        return None
    batches = sorted({k[2] for k in scaled})
    largest = batches[-1]
    rest = batches[:-1]
    picked = [largest]
    if rest:  # the batch nearest the middle of the range on a log scale
        middle = math.sqrt(batches[0] * largest)
        picked.insert(0, min(rest, key=lambda b: (abs(math.log(b / middle)), -b)))
    out = []
    for (backend, device, batch), rows in scaled.items():
        if batch not in picked:
            continue
        one = rows[rows.threads == 1].iloc[0]
        out.append(dict(backend=backend, device=device, batch=batch, threads=1, speedup=1.0, lo=1.0, hi=1.0,
                        efficiency=1.0, verdict=""))  # fmt: skip
        for r in rows[rows.threads > 1].sort_values("threads").itertuples():
            j = judge(one.m.per_call_ns, r.m.per_call_ns, workload=workload)
            s = j.speedup
            out.append(dict(backend=backend, device=device, batch=batch, threads=int(r.threads), speedup=s.value,
                            lo=s.ci95[0], hi=s.ci95[1], efficiency=s.value / r.threads,
                            verdict=j.verdict.value))  # fmt: skip
    points = pd.DataFrame(out).sort_values(["batch", "backend", "device", "threads"], ignore_index=True)
    return Scaling(workload, variant, dtype, picked, points)


def _pow2_axis(axis, lo: float, hi: float) -> None:
    """A base-2 log axis with plain labels at powers of two from lo to hi (every other one, or
    sparser, over a wide range: at most seven ticks)."""
    k_lo, k_hi = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, math.ceil((k_hi - k_lo + 1) / 7))
    ticks = [2.0**k for k in range(k_lo, k_hi + 1) if (k - k_lo) % step == 0 or k == 0]
    axis.set_major_locator(ticker.FixedLocator(ticks))
    axis.set_major_formatter(_PLAIN)
    axis.set_minor_locator(ticker.NullLocator())


def thread_scaling(df: pd.DataFrame, workload: str) -> str | None:
    """Speed-up over each backend's own 1-thread time against threads (log-log, with the ideal line
    speed-up = threads and the 95% intervals as bars), and the parallel efficiency (speed-up /
    threads) below it: a column per batch (a mid one and the largest). Each row shares its y."""
    sc = thread_scaling_data(df, workload)
    if sc is None:
        return None
    pts = sc.points
    pairs = sorted(set(zip(pts.backend, pts.device, strict=True)), key=series_order)
    handles, labels = _series_handles(pairs)
    handles.append(Line2D([], [], color=BOUND_COLOUR, ls=":", lw=2))
    labels.append("ideal: speed-up = threads")
    threads = sorted(set(pts.threads))
    s_lo = min(0.5, float(np.nanmin(pts.lo)) * 0.9)
    s_hi = max(
        float(threads[-1]), float(np.nanmax(pts.hi[np.isfinite(pts.hi)])) if np.isfinite(pts.hi).any() else 1
    )
    e_hi = max(1.1, float(pts.efficiency.max()) * 1.08)
    tags = _Tags()
    with plt.rc_context(RC):
        title = (f"{_name(workload, sc.variant)}: thread scaling, {_t(sc.dtype)}: speed-up over each backend's own "
                 "1-thread time (bars: 95% CI)")  # fmt: skip
        lay = _layout(2, len(sc.batches), (3.6, 2.0), labels, title, hspace=0.55)
        for j, batch in enumerate(sc.batches):
            top, bottom = lay.axes[0][j], lay.axes[1][j]
            at = pts[pts.batch == batch]
            for (backend, device), rows in sorted(at.groupby(["backend", "device"], sort=False),
                                                  key=lambda kv: series_order(kv[0])):  # fmt: skip
                style = backend_style(backend, device)
                x = rows.threads.to_numpy()
                lo, hi = rows.lo.to_numpy(), np.minimum(rows.hi.to_numpy(), s_hi * 4)
                top.vlines(x[1:], lo[1:], hi[1:], color=style["color"], lw=1.2)
                tags(top.plot(x, rows.speedup, ms=5, lw=1.5, **style)[0], backend, device)
                tags(bottom.plot(x, 100 * rows.efficiency, ms=5, lw=1.5, **style)[0], backend, device)
            top.plot(threads, threads, color=BOUND_COLOUR, ls=":", lw=2)
            bottom.axhline(100, color=BOUND_COLOUR, ls=":", lw=2)
            top.set_title(f"B={batch}: speed-up")
            bottom.set_title(f"B={batch}: efficiency (speed-up / threads)")
            for ax in (top, bottom):
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_locator(ticker.FixedLocator(threads))  # the counts run, nothing between
                ax.xaxis.set_major_formatter(_PLAIN)
                ax.xaxis.set_minor_locator(ticker.NullLocator())
                ax.set_xlim(threads[0] / 1.25, threads[-1] * 1.25)
            top.set_yscale("log", base=2)
            _pow2_axis(top.yaxis, s_lo, s_hi)
            top.yaxis.set_major_formatter(RATIO)
            top.set_ylim(s_lo / 1.1, s_hi * 1.15)
            bottom.set_ylim(0, 100 * e_hi)
            bottom.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:.0f}%"))
            bottom.set_xlabel("threads")
            if j == 0:
                top.set_ylabel("speed-up")
                bottom.set_ylabel("efficiency")
            else:
                top.tick_params(labelleft=False)
                bottom.tick_params(labelleft=False)
        _finish(lay, handles, labels)
        return _svg(lay.fig, f"threads-{workload}", tags)
