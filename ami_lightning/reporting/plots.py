"""The plots of a run's results, each written atomically as a PNG (:func:`save_figure`).

* :func:`plot_detection_rates`: per attack set a bar per detector (one colour each) with its Wilson interval, and
  each detector's benign FPR as a dashed line of its colour over a band of its interval;
* :func:`plot_roc`: a panel per detector, the ROC curve of its score on every attack set;
* :func:`plot_undetected`: a panel per detector, per attack set its undetected success rate at its published rule
  and at each calibrated threshold.

Rates are drawn in % (fractions x 100), an undefined one (nothing eligible, no threshold) as an empty bar marked
``"n/a"``; error bars are asymmetric, to the bounds of the 95 % intervals (:func:`error_bars`). A detector that was
not evaluated on a set has no bar there.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ami_lightning.evaluation.intervals import Interval
from ami_lightning.pipeline.files import atomic_path
from ami_lightning.reporting.formatting import is_missing, short_percent

if TYPE_CHECKING:
    from ami_lightning.reporting.records import RunResults, SetResult

RULE = "published rule"  # the label of a detector's own flag rule (AmI: top-1 disagreement)
ROC_COLUMNS = 3  # at most this many ROC panels side by side
PANEL_HEIGHT = 3.6  # inches per panel of the undetected plot (plus 0.9 for the titles and labels)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120, tight: bool = True) -> Path:
    """Render ``fig`` as a PNG at ``path`` (atomically), laid out tightly unless ``tight`` is False."""
    path = Path(path)
    FigureCanvasAgg(fig)
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def palette(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours: tab10's, or tab20's beyond 10 (repeating beyond 20)."""
    colours = colormaps["tab10" if n <= 10 else "tab20"].colors
    return [colours[i % len(colours)] for i in range(n)]


def _annotate_bars(ax: Axes, xs: list[float], heights: list[float], texts: list[str], fontsize: float = 8) -> None:
    """Write ``texts`` just above the points at ``xs`` of the given ``heights`` (bar or error-bar tops)."""
    for x, height, text in zip(xs, heights, texts, strict=True):
        ax.annotate(text, (x, height), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=fontsize)


def _heights(fractions: list[float]) -> list[float]:
    """Bar heights in % (0 for nan)."""
    return [0.0 if math.isnan(f) else 100 * f for f in fractions]


def error_bars(fractions: list[float], intervals: list[Interval]) -> tuple[list[float], list[float]]:
    """Asymmetric error bars in %: ``(below, above)`` each value of ``fractions``, to its interval's bounds
    (0 where the value or the interval is undefined); for matplotlib's ``yerr``."""
    below, above = [], []
    for value, (low, high) in zip(fractions, intervals, strict=True):
        defined = not (is_missing(value) or is_missing(low) or is_missing(high))
        below.append(max(0.0, 100 * (value - low)) if defined else 0.0)
        above.append(max(0.0, 100 * (high - value)) if defined else 0.0)
    return below, above


def _bar_tops(heights: list[float], above: list[float]) -> list[float]:
    return [h + a for h, a in zip(heights, above, strict=True)]


def _grouped_figure_width(series: int, groups: int) -> float:
    """Inches for ``groups`` groups of ``series`` bars each (between 6 and 16)."""
    return min(16.0, max(6.0, (0.45 * series + 0.4) * groups + 2.5))


def _offsets(series: int) -> tuple[float, list[float]]:
    """Bar width and the offset of each of ``series`` bars from its group's centre (the group 0.8 wide)."""
    width = 0.8 / max(series, 1)
    return width, [(j - (series - 1) / 2) * width for j in range(series)]


def _positions(sets: Sequence[SetResult], names: list[str], offset: float) -> list[float]:
    """The x position of each of ``sets``: its group, the index of its name in ``names``, plus ``offset``."""
    return [names.index(s.name) + offset for s in sets]


def _set_axis(ax: Axes, names: list[str]) -> None:
    """The x axis of grouped bars: a tick per set, rotated names."""
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_xlim(-0.6, max(len(names), 1) - 0.4)


def plot_detection_rates(results: RunResults, path: str | Path) -> Path:
    """Grouped bars, a group per attack set (:attr:`RunResults.set_names`) and a bar per detector in its colour:
    the detection rate (%) with its 95 % Wilson interval as an asymmetric error bar and the rate and counts above
    it; each detector's benign FPR as a dashed line of its colour over a band of its interval. A set with nothing
    eligible gets an empty bar marked "n/a (0/0)"."""
    detectors, names = results.detector_names, results.set_names
    width, offsets = _offsets(len(detectors))
    fig = Figure(figsize=(_grouped_figure_width(len(detectors), len(names)), 4.5))
    ax = fig.add_subplot()
    fontsize = 8 if len(detectors) <= 1 else 7
    for detector, colour, offset in zip(detectors, palette(len(detectors)), offsets, strict=True):
        attacks = results.attacks_of(detector)
        xs = _positions(attacks, names, offset)
        fractions = [s.rate for s in attacks]
        heights = _heights(fractions)
        below, above = error_bars(fractions, [s.rate_ci() for s in attacks])
        ax.bar(xs, heights, color=colour, width=width, yerr=[below, above], capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "black"}, label=f"{detector}: detection rate")
        _annotate_bars(ax, xs, _bar_tops(heights, above), [s.rate_text(ci=False).replace(" (", "\n(") for s in attacks],
                       fontsize)
        benign = results.benign_of(detector)
        if benign is not None and benign.eligible:
            low, high = benign.rate_ci()
            ax.axhspan(100 * low, 100 * high, color=colour, alpha=0.12, linewidth=0)
            ax.axhline(100 * benign.rate, color=colour, linestyle="--",
                       label=f"{detector}: benign FPR {benign.rate_text()}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", ncol=2, fontsize=7, frameon=False)
    _set_axis(ax, names)
    ax.set_ylim(0, 120 + 8 * max(len(detectors), 1))  # room above the 100 % labels for a legend row per detector
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("detection rate (%)")
    ax.set_title(f"{results.title()}\nerror bars: 95 % Wilson intervals", fontsize=10)
    return save_figure(fig, path)


def _grid(n: int, columns: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels (at least one) in rows of at most ``columns``."""
    n = max(n, 1)
    cols = min(n, columns)
    return math.ceil(n / cols), cols


def _panels(fig: Figure, n: int, columns: int) -> list[Axes]:
    """``n`` panels (at least one) in the grid of :func:`_grid`, row by row; its unused cells hidden."""
    rows, cols = _grid(n, columns)
    axes = fig.subplots(rows, cols, squeeze=False).flatten().tolist()
    for ax in axes[max(n, 1):]:
        ax.set_axis_off()
    return axes[:max(n, 1)]


def _score_title(results: RunResults, detector: str, width: int = 60) -> str:
    """``"<detector>: ROC of <its score>"``, wrapped to ``width`` characters."""
    score = (results.detectors.get(detector) or {}).get("score") or "its score"
    return "\n".join(textwrap.wrap(f"{detector}: ROC of {score}", width))


def plot_roc(results: RunResults, path: str | Path) -> Path:
    """A panel per detector: the ROC curve of its score on each attack set (vs its benign set), AUROC and its
    interval in the legend, the chance diagonal dotted; a cross marks each set's operating point at the detector's
    published rule (benign FPR, detection rate). Panels titled with the detector and its score, at most
    :data:`ROC_COLUMNS` side by side. Colours, one per attack set and the same in every panel: tab10, or tab20 beyond
    10 sets."""
    detectors, names = results.detector_names, results.set_names
    colours = dict(zip(names, palette(len(names)), strict=True))
    rows, cols = _grid(len(detectors), ROC_COLUMNS)
    fig = Figure(figsize=(5.5 * cols, 5.7 * rows), layout="constrained")  # room for titles of several lines
    for ax, detector in zip(_panels(fig, len(detectors), ROC_COLUMNS), detectors, strict=False):  # none: one blank
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        benign = results.benign_of(detector)
        decisions = benign is not None and benign.eligible > 0
        attacks = results.attacks_of(detector)
        for s in attacks:
            if not s.roc_fpr:
                continue
            ax.plot(s.roc_fpr, s.roc_tpr, color=colours[s.name], label=f"{s.name} (AUROC {s.auroc_text()})")
            if decisions and s.eligible:
                ax.plot(benign.rate, s.rate, marker="x", color=colours[s.name], markersize=8, linestyle="none")
        if decisions and any(s.roc_fpr and s.eligible for s in attacks):
            ax.plot([], [], marker="x", color="black", linestyle="none", label=f"{RULE} (FPR, detection)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false-positive rate (benign)")
        ax.set_ylabel("true-positive rate (attack)")
        ax.set_title(_score_title(results, detector), fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"ROC, {results.model}", fontsize=10)
    return save_figure(fig, path, tight=False)


def plot_undetected(results: RunResults, path: str | Path) -> Path:
    """A panel per detector, grouped bars per attack set: its undetected success rate (% of its ``n`` samples:
    fooling the original model, not flagged) at the detector's published rule and at each threshold calibrated to
    a target benign FPR, each with its 95 % Wilson interval as an asymmetric error bar and its value above ("n/a"
    and an empty bar where undefined). The panels share the sets' axis (:attr:`RunResults.set_names`, then
    ``worst_case`` where a detector has one: the faces on which some attack got through, % of the faces attacked)
    and are titled with the detector's name."""
    detectors, targets = results.detector_names, results.fpr_targets
    worst = {d: results.worst_case_of(d) for d in detectors}
    names = results.set_names + sorted({s.name for s in worst.values() if s is not None})
    rules = 1 + len(targets)
    width, offsets = _offsets(rules)
    rows, _ = _grid(len(detectors), 1)
    fig = Figure(figsize=(_grouped_figure_width(rules, len(names)), 0.9 + PANEL_HEIGHT * rows))
    for ax, detector in zip(_panels(fig, len(detectors), 1), detectors, strict=False):  # none: one blank panel
        attacks = results.attacks_of(detector) + ([worst[detector]] if worst[detector] is not None else [])
        series = {RULE: ([s.undetected_rate for s in attacks], [s.undetected_ci() for s in attacks])}
        series |= {f"score > threshold at {short_percent(t)} benign FPR": ([s.undetected_at(t) for s in attacks],
                                                                          [s.undetected_ci_at(t) for s in attacks])
                   for t in targets}
        for (label, (fractions, intervals)), offset in zip(series.items(), offsets, strict=True):
            xs = _positions(attacks, names, offset)
            heights = _heights(fractions)
            below, above = error_bars(fractions, intervals)
            ax.bar(xs, heights, width=width, label=label, yerr=[below, above], capsize=2,
                   error_kw={"elinewidth": 0.8, "ecolor": "black"})
            _annotate_bars(ax, xs, _bar_tops(heights, above),
                           ["n/a" if math.isnan(f) else f"{100 * f:.1f}" for f in fractions], 7)
        _set_axis(ax, names)
        ax.set_ylim(0, 135)  # room above the 100 % labels for a one-row legend
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("undetected success (%)")
        ax.set_title(detector, fontsize=10)
        ax.legend(loc="upper center", ncol=rules, fontsize=7, frameon=False)
    fig.suptitle(f"{results.title()}: undetected success (% of evaluated samples)\n"
                 "error bars: 95 % Wilson intervals", fontsize=10)
    return save_figure(fig, path)
