"""The results of one AmI evaluation run: a table (rich and Markdown), ``results.json``, plots and W&B logging.

Rates are fractions in [0, 1], shown as % with their counts ("9.62 % (33/343)"): the benign set's is the
false-positive rate, an attack set's the detection rate, each over its *eligible* samples (benign: the original
model is right; attack: the original model is fooled). A sample is flagged when the original and the steered model
disagree on the top-1 identity. AUROC and ROC points rank the continuous detection score of an attack set's eligible
samples (positives) against the benign set's eligible samples (negatives).

Calibrated operating points (:mod:`ami_lightning.evaluation.thresholds`): per target benign FPR (e.g. 5 %, 10 %) the
score
threshold set on the benign set's eligible scores (flagged when ``score > threshold``, the achieved FPR at most the
target), and each set's detection rate there (column ``det@5%FPR``; for the benign set its achieved FPR). The
*undetected success rate* of an attack set is the fraction of its ``n`` evaluated samples that fool the original
model and are not flagged, ``(eligible - flagged) / n`` (column ``undetected``), and likewise at each threshold.

Intervals (:mod:`ami_lightning.evaluation.intervals`, all at 95 %): every rate carries its Wilson score interval,
derived from
its counts (``"87.50 % (7/8) [52.9, 97.8]"``, bounds in %); a rate at a calibrated threshold is taken given the
threshold (the calibration's own variation is not included), and the benign set's achieved FPR there, fixed by the
calibration on those very samples, carries none. Every AUROC carries its stratified percentile bootstrap interval,
computed by the evaluation module from the scores (``"0.943 [0.901, 0.977]"``); ``results.json`` states both
methods under ``intervals`` and the bootstrap's settings under ``bootstrap``.

Files written by :func:`write_all` under ``out_dir`` (each atomically,
:func:`ami_lightning.pipeline.files.atomic_path`):
``results.json``, ``results.md``, ``detection_rates.png``, ``roc.png``, ``undetected.png`` and, per attack set with
sample images, ``samples/<set>.png`` (:func:`save_sample_figure`: original / adversarial / difference, captioned).
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from ami_lightning.evaluation.intervals import CONFIDENCE, NAN_INTERVAL, Interval, wilson_interval
from ami_lightning.evaluation.thresholds import OperatingPoint, fpr_suffix, point_metrics, ratio, undetected_rate
from ami_lightning.pipeline.files import atomic_path, write_text
from ami_lightning.pipeline.provenance import describe

COLUMNS = ("set", "metric", "n", "eligible", "flagged", "rate", "AUROC")  # then those of table_columns
DIFF_GAIN = 10.0  # |adversarial - original| is multiplied by this (then clipped to 255) in the sample figures
THUMBNAIL = 112  # px: the longer side of a sample thumbnail (larger images are area-downsampled to it)
FLAG_COLOURS = {True: "tab:green", False: "tab:red"}  # caption colour: flagged by AmI / not flagged
SAMPLE_ROWS = ("original", "adversarial", "|difference| x {gain:g}")  # the rows of a sample figure, top to bottom

# sample figure layout, in pixels at _SAMPLE_DPI (so that a thumbnail is drawn one to one)
_SAMPLE_DPI = 100
_CELL = THUMBNAIL  # a cell's side
_GAP = 8  # between cells
_LEFT = 96  # the row labels
_RIGHT = 10
_TOP = 64  # the title
_CAPTION = 78  # under the last row: the per-column captions
_CAPTION_WIDTH = 21  # characters per caption line
_CAPTION_LINES = 2  # at most this many lines per caption part (longer names are cut with an ellipsis)
_CAPTION_PT = 7.0


@dataclass
class SampleBatch:
    """k samples of one attack set: pixels float (k, 3, H, W) RGB in [0, 255]."""

    original: torch.Tensor
    adversarial: torch.Tensor
    true_identity: list[str]
    adversarial_identity: list[str]
    flagged: list[bool]

    def __post_init__(self) -> None:
        check_sample_batch(self)

    def __len__(self) -> int:
        """``k``, the number of samples."""
        return len(self.original)


def check_sample_batch(batch: SampleBatch, name: str = "samples") -> None:
    """ValueError unless ``original`` and ``adversarial`` are both (k, 3, H, W) of one shape with k >= 1 and the
    three lists have k entries each (``name`` prefixes the message)."""
    original, adversarial = batch.original, batch.adversarial
    if original.dim() != 4 or original.shape[1] != 3 or len(original) == 0:
        raise ValueError(f"{name}: original pixels must be (k, 3, H, W) RGB with k >= 1, got {tuple(original.shape)}")
    if original.shape != adversarial.shape:
        raise ValueError(f"{name}: original {tuple(original.shape)} and adversarial {tuple(adversarial.shape)} "
                         "pixels differ in shape")
    k = len(original)
    lengths = {"true_identity": len(batch.true_identity), "adversarial_identity": len(batch.adversarial_identity),
               "flagged": len(batch.flagged)}
    wrong = {key: length for key, length in lengths.items() if length != k}
    if wrong:
        raise ValueError(f"{name}: {k} samples but {wrong} entries")


@dataclass
class SetResult:
    """One data set's figures: ``n`` samples evaluated, ``eligible`` of them counted, ``flagged`` of those flagged.

    ``auroc`` (None for the benign set, or when a side has no eligible sample) and the ROC points ``roc_fpr`` /
    ``roc_tpr`` (fractions in [0, 1]) compare the set's detection scores with the benign set's; ``auroc_ci``: the
    AUROC's bootstrap interval ``(low, high)`` (None where there is no AUROC, and in results written before
    intervals existed). ``operating_points``: the set at each threshold calibrated to a target benign FPR (empty in
    results written before they existed). The Wilson intervals of the rates are derived from the counts
    (:meth:`rate_ci`, :meth:`undetected_ci`, :meth:`detection_ci_at`, :meth:`undetected_ci_at`).
    """

    name: str
    adversarial: bool
    n: int
    eligible: int
    flagged: int
    auroc: float | None = None
    auroc_ci: tuple[float, float] | None = None
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    operating_points: list[OperatingPoint] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """``flagged / eligible`` in [0, 1] (nan when nothing is eligible): FPR for benign, detection rate otherwise."""
        return ratio(self.flagged, self.eligible)

    def rate_ci(self, confidence: float = CONFIDENCE) -> Interval:
        """Wilson interval of :attr:`rate` (fractions); (nan, nan) when nothing is eligible."""
        return wilson_interval(self.flagged, self.eligible, confidence)

    @property
    def undetected_rate(self) -> float:
        """Attack set: ``(eligible - flagged) / n`` in [0, 1], the samples that fool the original model and are not
        flagged (nan when ``n == 0``); nan for the benign set."""
        return undetected_rate(self.eligible, self.flagged, self.n) if self.adversarial else float("nan")

    def undetected_ci(self, confidence: float = CONFIDENCE) -> Interval:
        """Wilson interval of :attr:`undetected_rate` (``eligible - flagged`` of ``n``); (nan, nan) for the benign
        set or when ``n == 0``."""
        return wilson_interval(self.eligible - self.flagged, self.n, confidence) if self.adversarial else NAN_INTERVAL

    def point(self, target_fpr: float) -> OperatingPoint | None:
        """The operating point calibrated to ``target_fpr`` (None if the set has none)."""
        return next((p for p in self.operating_points if p.target_fpr == target_fpr), None)

    def detected_at(self, target_fpr: float) -> int | None:
        """How many eligible samples score above the threshold for ``target_fpr`` (None without one)."""
        point = self.point(target_fpr)
        return None if point is None else point.detected

    def detection_at(self, target_fpr: float) -> float:
        """``detected / eligible`` at the threshold for ``target_fpr`` (benign set: its achieved FPR); nan when
        nothing is eligible or there is no threshold."""
        return ratio(self.detected_at(target_fpr), self.eligible)

    def detection_ci_at(self, target_fpr: float, confidence: float = CONFIDENCE) -> Interval:
        """Attack set: Wilson interval of :meth:`detection_at` given the threshold; (nan, nan) without a threshold,
        when nothing is eligible, and for the benign set (its achieved FPR is fixed by the calibration on these very
        samples)."""
        detected = self.detected_at(target_fpr)
        if not self.adversarial or detected is None:
            return NAN_INTERVAL
        return wilson_interval(detected, self.eligible, confidence)

    def undetected_at(self, target_fpr: float) -> float:
        """Attack set: ``(eligible - detected) / n`` at the threshold for ``target_fpr``; nan for the benign set, when
        ``n == 0`` or without a threshold."""
        detected = self.detected_at(target_fpr)
        return undetected_rate(self.eligible, detected, self.n) if self.adversarial else float("nan")

    def undetected_ci_at(self, target_fpr: float, confidence: float = CONFIDENCE) -> Interval:
        """Attack set: Wilson interval of :meth:`undetected_at` given the threshold; (nan, nan) where that is
        nan."""
        detected = self.detected_at(target_fpr)
        if not self.adversarial or detected is None:
            return NAN_INTERVAL
        return wilson_interval(self.eligible - detected, self.n, confidence)

    @property
    def metric(self) -> str:
        """What :attr:`rate` is: ``"detection"`` for an attack set, ``"FPR"`` for the benign set."""
        return "detection" if self.adversarial else "FPR"

    def rate_text(self, ci: bool = True) -> str:
        """The rate in % with its counts and (``ci``) its interval in %, e.g. ``"87.50 % (7/8) [52.9, 97.8]"``;
        ``"n/a (0/0)"`` when nothing is eligible."""
        return _fraction_text(self.flagged, self.eligible, self.rate_ci() if ci else None)

    def detection_at_text(self, target_fpr: float, ci: bool = True) -> str:
        """:meth:`detection_at` in % with its counts and (``ci``, attack sets) its interval, e.g.
        ``"78.89 % (71/90) [69.4, 86.0]"``; ``"-"`` without a threshold."""
        detected = self.detected_at(target_fpr)
        interval = self.detection_ci_at(target_fpr) if ci else None
        return "-" if detected is None else _fraction_text(detected, self.eligible, interval)

    def undetected_text(self, ci: bool = True) -> str:
        """:attr:`undetected_rate` in % with its counts and (``ci``) its interval, e.g.
        ``"9.00 % (9/100) [4.8, 16.2]"``; ``"-"`` for the benign set."""
        if not self.adversarial:
            return "-"
        return _fraction_text(self.eligible - self.flagged, self.n, self.undetected_ci() if ci else None)

    def auroc_text(self, ci: bool = True) -> str:
        """AUROC with 3 decimals and (``ci``, where there is one) its interval, e.g. ``"0.943 [0.901, 0.977]"``;
        ``"-"`` when there is none."""
        if _missing(self.auroc):
            return "-"
        interval = f" {_interval_text(self.auroc_ci, 1.0, 3)}" if ci and _has_interval(self.auroc_ci) else ""
        return f"{self.auroc:.3f}{interval}"


@dataclass
class RunResults:
    """Everything one evaluation run reports.

    ``sets``: the benign set and the attack sets, in display order; ``weaken`` and ``strengthen`` ``(s0, s1)``: the
    AmI steering parameters; ``model``: the model's name; ``extra``: free-form JSON-able figures (e.g. accuracy);
    ``samples``: per attack set, a few of its samples (:class:`SampleBatch`); ``bootstrap``: the settings of the
    AUROC intervals' bootstrap, ``{"resamples": int, "seed": int}`` (``AmIEvalModule.bootstrap``; None when not
    known, e.g. results written before intervals existed); ``provenance``: the command, commit and machine of the
    run (:func:`ami_lightning.pipeline.provenance.provenance`; None for older files).
    """

    sets: list[SetResult]
    weaken: float
    strengthen: tuple[float, float]
    model: str
    extra: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, SampleBatch] = field(default_factory=dict)
    bootstrap: dict[str, int] | None = None
    provenance: dict[str, Any] | None = None

    @property
    def benign(self) -> SetResult | None:
        """The first non-adversarial set (None if the run has none)."""
        return next((s for s in self.sets if not s.adversarial), None)

    @property
    def attacks(self) -> list[SetResult]:
        """The adversarial sets, in order."""
        return [s for s in self.sets if s.adversarial]

    @property
    def fpr_targets(self) -> list[float]:
        """The target benign FPRs of the sets' operating points, ascending (empty for results without them)."""
        return sorted({p.target_fpr for s in self.sets for p in s.operating_points})

    def title(self) -> str:
        """One line naming the model and the steering parameters."""
        s0, s1 = self.strengthen
        return f"AmI on {self.model}: weaken {self.weaken:g}, strengthen ({s0:g}, {s1:g})"

    def intervals(self) -> dict[str, str]:
        """How the intervals were computed (:func:`interval_methods` of :attr:`bootstrap`)."""
        return interval_methods(self.bootstrap)


def interval_methods(bootstrap: dict[str, int] | None, confidence: float = CONFIDENCE) -> dict[str, str]:
    """The methods of a run's intervals, in words: ``rates`` (Wilson score), ``auroc`` (stratified percentile
    bootstrap, with the number of resamples and the seed of ``bootstrap`` when known) and ``calibrated`` (what the
    interval of a rate at a calibrated threshold covers); e.g. ``{"rates": "Wilson score, 95 %", "auroc":
    "stratified bootstrap, percentile, 95 %, 1000 resamples, seed 0", ...}``."""
    level = f"{100 * confidence:g} %"
    auroc = f"stratified bootstrap, percentile, {level}"
    if bootstrap:
        auroc += f", {bootstrap['resamples']} resamples, seed {bootstrap['seed']}"
    else:
        auroc += " (resamples and seed not recorded)"
    calibrated = (f"Wilson score, {level}, given the threshold (the calibration's own variation is not included); "
                  "none for the benign set's achieved FPR")
    return {"rates": f"Wilson score, {level}", "auroc": auroc, "calibrated": calibrated}


# ---- tables ---------------------------------------------------------------------------------------------------------
def _missing(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def _has_interval(interval: tuple[float, float] | None) -> bool:
    return interval is not None and not any(_missing(bound) for bound in interval)


def _interval_text(interval: tuple[float, float], scale: float, digits: int) -> str:
    """``"[low, high]"`` with the bounds times ``scale`` to ``digits`` decimals, e.g. ``"[52.9, 97.8]"``."""
    low, high = interval
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def _fraction_text(count: int, total: int, interval: tuple[float, float] | None = None) -> str:
    """``count / total`` in % with the counts and, when given and finite, the interval in % with one decimal, e.g.
    ``"87.50 % (7/8) [52.9, 97.8]"``; ``"n/a (0/0)"`` when ``total == 0``."""
    percent = f"{100 * count / total:.2f} %" if total else "n/a"
    bounds = f" {_interval_text(interval, 100.0, 1)}" if _has_interval(interval) else ""
    return f"{percent} ({count}/{total}){bounds}"


def _percent(fraction: float) -> str:
    """A fraction as a short percentage for headers and labels: 0.05 -> ``"5%"``."""
    return f"{100 * fraction:g}%"


def table_columns(fpr_targets: list[float]) -> tuple[str, ...]:
    """The table's headers: :data:`COLUMNS`, ``det@<t>%FPR`` per target (e.g. ``det@5%FPR``), ``undetected``."""
    return (*COLUMNS, *(f"det@{_percent(t)}FPR" for t in fpr_targets), "undetected")


def _row(s: SetResult, fpr_targets: list[float]) -> tuple[str, ...]:
    """One set's cells, in :func:`table_columns` order, rates and AUROC with their intervals."""
    return (s.name, s.metric, str(s.n), str(s.eligible), str(s.flagged), s.rate_text(), s.auroc_text(),
            *(s.detection_at_text(t) for t in fpr_targets), s.undetected_text())


def intervals_note(results: RunResults) -> str:
    """One sentence saying what the brackets of the tables are."""
    methods = results.intervals()
    return (f"Intervals in brackets: rates (in %): {methods['rates']} (at a calibrated threshold: given the "
            f"threshold; none for the benign set's achieved FPR); AUROC: {methods['auroc']}.")


def results_table(results: RunResults) -> Table:
    """A rich table, one row per set (columns :func:`table_columns`), titled with the model and the parameters and
    captioned with :func:`intervals_note`."""
    table = Table(title=results.title(), caption=intervals_note(results))
    for column in table_columns(results.fpr_targets):
        table.add_column(column, justify="left" if column in ("set", "metric") else "right")
    for s in results.sets:
        table.add_row(*_row(s, results.fpr_targets))
    return table


def print_results(results: RunResults, console: Console | None = None) -> None:
    """Print :func:`results_table` (to a new stdout console unless one is given; one that is not a terminal, a log
    file say, is 250 characters wide so that the table's columns are not cut short)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=250)
    console.print(results_table(results))


def _md_cell(value: Any) -> str:
    value = _json_safe(value)
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text.replace("|", "\\|")


def _md_table(header: tuple[str, ...], rows: list[tuple[Any, ...]], left: int) -> list[str]:
    """A Markdown table whose first ``left`` columns are left-aligned, the others right-aligned."""
    rule = "|" + "|".join(" --- " if i < left else " ---: " for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]


def results_markdown(results: RunResults) -> str:
    """Markdown: a title, the parameters (model, weaken, strengthen, then ``extra``), the results table and
    :func:`intervals_note`."""
    s0, s1 = results.strengthen
    parameters = [("model", results.model), ("weaken", f"{results.weaken:g}"),
                  ("strengthen (s0, s1)", f"({s0:g}, {s1:g})"), *results.extra.items()]
    lines = [f"# {results.title()}", "", *_md_table(("parameter", "value"), parameters, left=2), ""]
    targets = results.fpr_targets
    lines += _md_table(table_columns(targets), [_row(s, targets) for s in results.sets], left=2)
    lines += ["", intervals_note(results)]
    if results.provenance:
        lines += ["", f"Run: {describe(results.provenance)}."]
    return "\n".join(lines) + "\n"


# ---- files ----------------------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """``value`` with tensors / arrays as lists, paths as strings and non-finite floats as None."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _ci_json(interval: tuple[float, float] | None) -> list[float] | None:
    """An interval as ``[low, high]``, or None when it is missing or undefined."""
    return [float(interval[0]), float(interval[1])] if _has_interval(interval) else None


def _set_dict(s: SetResult) -> dict[str, Any]:
    """``s`` as a dict with its derived rates and intervals: ``metric``, ``rate``, ``rate_ci``, ``undetected``,
    ``undetected_ci`` and, per operating point, ``detection``, ``detection_ci``, ``undetected`` and
    ``undetected_ci`` (each interval ``[low, high]`` or None where undefined)."""
    points = [{**asdict(p), "detection": s.detection_at(p.target_fpr),
               "detection_ci": _ci_json(s.detection_ci_at(p.target_fpr)), "undetected": s.undetected_at(p.target_fpr),
               "undetected_ci": _ci_json(s.undetected_ci_at(p.target_fpr))}
              for p in s.operating_points]
    return {**asdict(s), "auroc_ci": _ci_json(s.auroc_ci), "operating_points": points, "metric": s.metric,
            "rate": s.rate, "rate_ci": _ci_json(s.rate_ci()), "undetected": s.undetected_rate,
            "undetected_ci": _ci_json(s.undetected_ci())}


def results_dict(results: RunResults) -> dict[str, Any]:
    """Everything but the sample pixels, JSON-safe (NaN as None): the parameters, ``intervals``
    (:func:`interval_methods`), ``bootstrap`` (its settings or None), and the sets, each with its derived rates and
    intervals (:func:`_set_dict`)."""
    return _json_safe({
        "model": results.model,
        "weaken": results.weaken,
        "strengthen": list(results.strengthen),
        "intervals": results.intervals(),
        "bootstrap": results.bootstrap,
        "sets": [_set_dict(s) for s in results.sets],
        "extra": results.extra,
        "provenance": results.provenance,
    })


def write_results(results: RunResults, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` (:func:`results_dict`, strict JSON) and ``results.md`` (:func:`results_markdown`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results_dict(results), indent=2, allow_nan=False) + "\n"
    return {
        "json": write_text(out_dir / "results.json", text),
        "md": write_text(out_dir / "results.md", results_markdown(results)),
    }


def _operating_point(data: dict[str, Any]) -> OperatingPoint:
    """An operating point from ``results.json`` (derived rates dropped; a null threshold or FPR reads as nan)."""
    nan = float("nan")
    return OperatingPoint(target_fpr=data["target_fpr"], detected=data["detected"],
                          threshold=nan if data["threshold"] is None else data["threshold"],
                          benign_fpr=nan if data["benign_fpr"] is None else data["benign_fpr"])


def _read_interval(value: list[float | None] | None) -> tuple[float, float] | None:
    """An interval from ``results.json``: ``[low, high]`` as a tuple; None when absent or null."""
    if value is None or any(bound is None for bound in value):
        return None
    low, high = value
    return float(low), float(high)


def _set_result(data: dict[str, Any]) -> SetResult:
    names = {f.name for f in fields(SetResult)} - {"operating_points", "auroc_ci"}
    points = [_operating_point(p) for p in data.get("operating_points", [])]
    return SetResult(**{k: v for k, v in data.items() if k in names}, operating_points=points,
                     auroc_ci=_read_interval(data.get("auroc_ci")))


def read_results(path: str | Path) -> RunResults:
    """A ``results.json`` back as :class:`RunResults` (without samples; a null AUROC reads as None). Files written
    before operating points existed read back with none; files written before intervals existed read back with no
    AUROC interval and ``bootstrap`` None (the Wilson intervals follow from the counts)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return RunResults(
        sets=[_set_result(s) for s in data["sets"]],
        weaken=data["weaken"],
        strengthen=tuple(data["strengthen"]),
        model=data["model"],
        extra=data["extra"],
        bootstrap=data.get("bootstrap"),
        provenance=data.get("provenance"),
    )


# ---- plots ----------------------------------------------------------------------------------------------------------
def _save_figure(fig: Figure, path: str | Path, dpi: int = 120, tight: bool = True) -> Path:
    """Render ``fig`` as a PNG at ``path`` (atomically), laid out tightly unless ``tight`` is False."""
    path = Path(path)
    FigureCanvasAgg(fig)
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


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
        defined = not (_missing(value) or _missing(low) or _missing(high))
        below.append(max(0.0, 100 * (value - low)) if defined else 0.0)
        above.append(max(0.0, 100 * (high - value)) if defined else 0.0)
    return below, above


def _bar_tops(heights: list[float], above: list[float]) -> list[float]:
    return [h + a for h, a in zip(heights, above, strict=True)]


def plot_detection_rates(results: RunResults, path: str | Path) -> Path:
    """Bar chart of each attack set's detection rate (%) with its 95 % Wilson interval as an asymmetric error bar,
    rate and counts above each bar; the benign FPR as a red dashed line over a band of its interval. A set with
    nothing eligible gets an empty bar marked "n/a (0/0)"."""
    attacks = results.attacks
    fig = Figure(figsize=(max(6.0, 1.1 * len(attacks) + 2.5), 4.5))
    ax = fig.add_subplot()
    fractions = [s.rate for s in attacks]
    heights = _heights(fractions)
    below, above = error_bars(fractions, [s.rate_ci() for s in attacks])
    ax.bar(range(len(attacks)), heights, color="tab:blue", width=0.6, yerr=[below, above], capsize=3,
           error_kw={"elinewidth": 1, "ecolor": "black"}, label="detection rate, 95 % Wilson interval")
    ax.set_xticks(range(len(attacks)), [s.name for s in attacks], rotation=30, ha="right")
    _annotate_bars(ax, list(range(len(attacks))), _bar_tops(heights, above),
                   [s.rate_text(ci=False).replace(" (", "\n(") for s in attacks])
    benign = results.benign
    if benign is not None and benign.eligible:
        low, high = benign.rate_ci()
        ax.axhspan(100 * low, 100 * high, color="tab:red", alpha=0.12, linewidth=0)
        ax.axhline(100 * benign.rate, color="tab:red", linestyle="--", label=f"benign FPR {benign.rate_text()}")
    if attacks or (benign is not None and benign.eligible):
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-0.6, max(len(attacks), 1) - 0.4)
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("detection rate (%)")
    ax.set_title(results.title(), fontsize=10)
    return _save_figure(fig, path)


def plot_roc(results: RunResults, path: str | Path) -> Path:
    """ROC curve of the detection score per attack set (vs the benign set), AUROC and its interval in the legend,
    the chance diagonal dotted; a cross marks each set's top-1-disagreement operating point (benign FPR, detection
    rate). Colours: tab10, or tab20 beyond 10 sets, so that no two curves share one."""
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    ax.set_prop_cycle(color=colormaps["tab10" if len(results.attacks) <= 10 else "tab20"].colors)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    benign = results.benign
    decisions = benign is not None and benign.eligible > 0
    for s in results.attacks:
        if not s.roc_fpr:
            continue
        (line,) = ax.plot(s.roc_fpr, s.roc_tpr, label=f"{s.name} (AUROC {s.auroc_text()})")
        if decisions and s.eligible:
            ax.plot(benign.rate, s.rate, marker="x", color=line.get_color(), markersize=8, linestyle="none")
    if decisions and any(s.roc_fpr and s.eligible for s in results.attacks):
        ax.plot([], [], marker="x", color="black", linestyle="none", label="top-1 disagreement (FPR, detection)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (benign)")
    ax.set_ylabel("true-positive rate (attack)")
    ax.set_title(f"ROC of the AmI score, {results.model}", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    return _save_figure(fig, path)


def plot_undetected(results: RunResults, path: str | Path) -> Path:
    """Grouped bars per attack set: its undetected success rate (% of its ``n`` samples: fooling the original model,
    not flagged) at the top-1-disagreement rule and at each threshold calibrated to a target benign FPR, each with its
    95 % Wilson interval as an asymmetric error bar and its value above ("n/a" and an empty bar where undefined)."""
    attacks, targets = results.attacks, results.fpr_targets
    rules = {"top-1 disagreement": ([s.undetected_rate for s in attacks], [s.undetected_ci() for s in attacks])}
    rules |= {f"score > threshold at {_percent(t)} benign FPR": ([s.undetected_at(t) for s in attacks],
                                                                 [s.undetected_ci_at(t) for s in attacks])
              for t in targets}
    width = 0.8 / len(rules)
    fig = Figure(figsize=(min(16.0, max(6.0, (0.45 * len(rules) + 0.4) * len(attacks) + 2.5)), 4.5))
    ax = fig.add_subplot()
    for j, (label, (fractions, intervals)) in enumerate(rules.items()):
        xs = [i + (j - (len(rules) - 1) / 2) * width for i in range(len(attacks))]
        heights = _heights(fractions)
        below, above = error_bars(fractions, intervals)
        ax.bar(xs, heights, width=width, label=label, yerr=[below, above], capsize=2,
               error_kw={"elinewidth": 0.8, "ecolor": "black"})
        _annotate_bars(ax, xs, _bar_tops(heights, above),
                       ["n/a" if math.isnan(f) else f"{100 * f:.1f}" for f in fractions], 7)
    ax.set_xticks(range(len(attacks)), [s.name for s in attacks], rotation=30, ha="right")
    ax.set_xlim(-0.6, max(len(attacks), 1) - 0.4)
    ax.set_ylim(0, 135)  # room above the 100 % labels for a one-row legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("undetected success (% of evaluated samples)")
    ax.set_title(f"{results.title()}\nerror bars: 95 % Wilson intervals", fontsize=10)
    ax.legend(loc="upper center", ncol=len(rules), fontsize=7, frameon=False)
    return _save_figure(fig, path)


# ---- sample figures -------------------------------------------------------------------------------------------------
def sample_caption(true_identity: str, adversarial_identity: str, flagged: bool) -> tuple[str, str, str]:
    """The caption of one sample column, three parts: ``"true: <identity>"``, ``"model: <identity>"`` (the
    identity the model gives the adversarial image; `` (not fooled)`` appended when it is the true one) and
    ``"flagged"`` or ``"NOT flagged"`` (whether AmI flags the adversarial image; drawn in
    ``FLAG_COLOURS[flagged]``)."""
    fooled = "" if adversarial_identity != true_identity else " (not fooled)"
    return f"true: {true_identity}", f"model: {adversarial_identity}{fooled}", "flagged" if flagged else "NOT flagged"


def sample_figure_caption(set_name: str, gain: float = DIFF_GAIN) -> str:
    """What a sample figure shows, in one line (the W&B image caption)."""
    rows = " / ".join(SAMPLE_ROWS).format(gain=gain)
    return (f"{set_name}: rows {rows} (clipped to 255); per column the true identity, the identity the model gives "
            "the adversarial image, and whether AmI flags it")


def thumbnail_rows(batch: SampleBatch, gain: float = DIFF_GAIN, size: int = THUMBNAIL) -> torch.Tensor:
    """The cells of a sample figure, (3, k, 3, h, w) float in [0, 1] on the CPU: the originals, the adversarials and
    ``|adversarial - original| x gain`` clipped to 255 (computed at full resolution), each clipped to [0, 255] and,
    when larger than ``size`` px on its longer side, area-downsampled to it (aspect kept; smaller images are left
    as they are). ValueError for a malformed ``batch`` (:func:`check_sample_batch`)."""
    check_sample_batch(batch)
    original = batch.original.detach().float().cpu().clamp(0, 255)
    adversarial = batch.adversarial.detach().float().cpu().clamp(0, 255)
    rows = torch.stack([original, adversarial, ((adversarial - original).abs() * gain).clamp(0, 255)])
    h, w = rows.shape[-2:]
    scale = size / max(h, w)
    if scale < 1:
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
        rows = F.interpolate(rows.flatten(0, 1), size=shape, mode="area").unflatten(0, rows.shape[:2])
    return rows / 255


def sample_figure_size(k: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of a sample figure with ``k`` columns."""
    return _LEFT + k * _CELL + (k - 1) * _GAP + _RIGHT, _TOP + 3 * _CELL + 2 * _GAP + _CAPTION


def sample_cell_box(row: int, column: int) -> tuple[int, int, int, int]:
    """The pixel box ``(left, top, right, bottom)`` (right and bottom exclusive) of the cell at ``row`` (0 original,
    1 adversarial, 2 difference) and ``column`` of a sample figure; an image fills its box's width or height, centred
    (a square one fills it)."""
    left, top = _LEFT + column * (_CELL + _GAP), _TOP + row * (_CELL + _GAP)
    return left, top, left + _CELL, top + _CELL


def _wrap(text: str, width: int = _CAPTION_WIDTH, lines: int = _CAPTION_LINES) -> list[str]:
    """``text`` wrapped to ``width`` characters, at most ``lines`` lines (the last cut with an ellipsis)."""
    wrapped = textwrap.wrap(text, width, break_on_hyphens=True) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[:lines - 1], wrapped[lines - 1][:width - 1] + "\u2026"]
    return wrapped


def save_sample_figure(batch: SampleBatch, path: str | Path, title: str, gain: float = DIFF_GAIN) -> Path:
    """One labelled PNG of an attack set's samples: a column per sample, rows original / adversarial /
    ``|difference| x gain`` (clipped; :func:`thumbnail_rows`, thumbnails of at most :data:`THUMBNAIL` px drawn one to
    one), the row names on the left, under each column its :func:`sample_caption` (the flag in green when flagged,
    red when not) and ``title`` (wrapped) on top. Size :func:`sample_figure_size` (k), cells at
    :func:`sample_cell_box`. ValueError for a malformed ``batch``."""
    cells = thumbnail_rows(batch, gain)
    k = cells.shape[1]
    width, height = sample_figure_size(k)
    fig = Figure(figsize=(width / _SAMPLE_DPI, height / _SAMPLE_DPI), dpi=_SAMPLE_DPI)
    for row in range(3):
        for column in range(k):
            left, top, right, bottom = sample_cell_box(row, column)
            ax = fig.add_axes((left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height))
            ax.imshow(cells[row, column].permute(1, 2, 0).numpy(), interpolation="nearest", vmin=0, vmax=1)
            ax.set_axis_off()
        label = SAMPLE_ROWS[row].format(gain=gain).replace("| x", "|\nx")
        fig.text((_LEFT - 8) / width, 1 - (_TOP + row * (_CELL + _GAP) + _CELL / 2) / height, label, ha="right",
                 va="center", fontsize=8)
    line = _CAPTION_PT * 1.25 / 72 * _SAMPLE_DPI  # px per caption line
    for column in range(k):
        left, _, right, bottom = sample_cell_box(2, column)
        x, y = (left + right) / 2 / width, bottom + 4
        truth, given, flag = sample_caption(batch.true_identity[column], batch.adversarial_identity[column],
                                            bool(batch.flagged[column]))
        lines = [*_wrap(truth), *_wrap(given)]
        fig.text(x, 1 - y / height, "\n".join(lines), ha="center", va="top", fontsize=_CAPTION_PT, linespacing=1.25)
        fig.text(x, 1 - (y + len(lines) * line) / height, flag, ha="center", va="top", fontsize=_CAPTION_PT,
                 fontweight="bold", color=FLAG_COLOURS[bool(batch.flagged[column])])
    title_lines = textwrap.wrap(title, max(20, (width - 10) // 7))
    fig.text(0.5, 1 - 6 / height, "\n".join(title_lines[:3]), ha="center", va="top", fontsize=9)
    return _save_figure(fig, path, dpi=_SAMPLE_DPI, tight=False)


def _file_stem(name: str) -> str:
    """A set name as a file name: characters other than letters, digits, ``_``, ``-`` and ``.`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"


def save_sample_figures(results: RunResults, out_dir: str | Path, gain: float = DIFF_GAIN) -> dict[str, Path]:
    """:func:`save_sample_figure` of each set of ``results.samples`` as ``out_dir/samples/<set>.png``, titled with
    the set and the detector (:meth:`RunResults.title`). Returns ``samples/<set>`` -> path, in ``samples`` order.
    TypeError for a value that is not a :class:`SampleBatch`, ValueError for a malformed one."""
    paths = {}
    for name, batch in results.samples.items():
        if not isinstance(batch, SampleBatch):
            raise TypeError(f"RunResults.samples[{name!r}] must be a SampleBatch, got {type(batch).__name__}")
        check_sample_batch(batch, name)
        path = Path(out_dir) / "samples" / f"{_file_stem(name)}.png"
        paths[f"samples/{name}"] = save_sample_figure(batch, path, f"{name}: {results.title()}", gain)
    return paths


# ---- Weights & Biases -----------------------------------------------------------------------------------------------
def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise ImportError("logging to W&B needs the wandb package: pip install 'ami-lightning[framework]'") from error
    return wandb


def is_wandb_logger(logger: Any) -> bool:
    """Whether ``logger`` is a Lightning ``WandbLogger`` (False when Lightning or wandb is not installed)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        return False
    return isinstance(logger, WandbLogger)


def _flatten_numbers(values: dict[str, Any], prefix: str) -> dict[str, float | int]:
    """The int / float leaves of a nested dict, keyed ``<prefix>/<key>/<key>...`` (bools left out)."""
    out: dict[str, float | int] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(_flatten_numbers(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def _ci_metrics(name: str, interval: tuple[float, float]) -> dict[str, float]:
    """``{<name>_ci_low: low, <name>_ci_high: high}``."""
    return {f"{name}_ci_low": interval[0], f"{name}_ci_high": interval[1]}


def set_intervals(s: SetResult, fpr_targets: list[float]) -> dict[str, tuple[float, float]]:
    """A set's intervals keyed by the name of the figure they bound (fractions, nan where undefined): ``rate``,
    ``auroc`` (where there is one) and, for an attack set, ``undetected`` and per target ``detection_at_fpr_<t>``
    and ``undetected_at_fpr_<t>``."""
    intervals = {"rate": s.rate_ci()}
    if s.auroc_ci is not None:
        intervals["auroc"] = s.auroc_ci
    if s.adversarial:
        intervals["undetected"] = s.undetected_ci()
        for t in fpr_targets:
            intervals[f"detection_{fpr_suffix(t)}"] = s.detection_ci_at(t)
            intervals[f"undetected_{fpr_suffix(t)}"] = s.undetected_ci_at(t)
    return intervals


def scalar_metrics(results: RunResults) -> dict[str, float | int]:
    """Per set ``<set>/rate`` (fraction, nan when nothing is eligible), ``<set>/flagged``, ``<set>/eligible``,
    ``<set>/n``, where there is one, ``<set>/auroc``, the operating-point figures of
    :func:`~ami_lightning.evaluation.thresholds.point_metrics` (e.g. ``<set>/undetected``,
    ``<set>/detection_at_fpr_0.05``,
    ``benign/threshold_at_fpr_0.05``) and the bounds of each interval (:func:`set_intervals`) as
    ``<set>/<figure>_ci_low`` / ``_ci_high`` (e.g. ``<set>/rate_ci_low``, ``<set>/auroc_ci_high``,
    ``<set>/undetected_at_fpr_0.05_ci_low``); plus the numbers in ``extra`` as ``extra/<key>``."""
    metrics: dict[str, float | int] = {}
    for s in results.sets:
        metrics.update({f"{s.name}/rate": s.rate, f"{s.name}/flagged": s.flagged, f"{s.name}/eligible": s.eligible,
                        f"{s.name}/n": s.n})
        if s.auroc is not None:
            metrics[f"{s.name}/auroc"] = s.auroc
        points = point_metrics(s.operating_points, s.n, s.eligible, s.flagged, s.adversarial)
        metrics.update({f"{s.name}/{key}": value for key, value in points.items()})
        for key, interval in set_intervals(s, [p.target_fpr for p in s.operating_points]).items():
            metrics.update(_ci_metrics(f"{s.name}/{key}", interval))
    return {**metrics, **_flatten_numbers(results.extra, "extra")}


def _with_ci(name: str) -> list[str]:
    return [name, f"{name}_ci_low", f"{name}_ci_high"]


def wandb_table_rows(results: RunResults) -> tuple[list[str], list[list[Any]]]:
    """The W&B results table, (columns, rows): ``set``, ``metric``, ``n``, ``eligible``, ``flagged``, then each
    figure followed by its interval's ``_ci_low`` / ``_ci_high``: ``rate``, ``auroc``, ``detection_at_fpr_<t>`` per
    target, ``undetected``, ``undetected_at_fpr_<t>`` per target. Rates as fractions, missing values as None."""
    targets = results.fpr_targets
    columns = ["set", "metric", "n", "eligible", "flagged", *_with_ci("rate"), *_with_ci("auroc"),
               *(c for t in targets for c in _with_ci(f"detection_{fpr_suffix(t)}")), *_with_ci("undetected"),
               *(c for t in targets for c in _with_ci(f"undetected_{fpr_suffix(t)}"))]
    rows = []
    for s in results.sets:
        auroc_ci = s.auroc_ci if s.auroc_ci is not None else NAN_INTERVAL
        rows.append(_json_safe([
            s.name, s.metric, s.n, s.eligible, s.flagged, s.rate, *s.rate_ci(), s.auroc, *auroc_ci,
            *(v for t in targets for v in (s.detection_at(t), *s.detection_ci_at(t))),
            s.undetected_rate, *s.undetected_ci(),
            *(v for t in targets for v in (s.undetected_at(t), *s.undetected_ci_at(t)))]))
    return columns, rows


def log_to_wandb(results: RunResults, logger_or_run: Any, figures: dict[str, Path]) -> None:
    """Log to W&B in one ``run.log`` call: :func:`scalar_metrics`, the table as ``results`` (a ``wandb.Table``,
    :func:`wandb_table_rows`) and each figure as ``figures/<name>`` (a ``wandb.Image``; a sample figure, named
    ``samples/<set>``, captioned with :func:`sample_figure_caption`).

    ``logger_or_run``: a Lightning ``WandbLogger`` (its ``.experiment`` is used) or a ``wandb`` run. Raises
    ImportError, when called, if wandb is not installed.
    """
    wandb = _import_wandb()
    run = logger_or_run.experiment if is_wandb_logger(logger_or_run) else logger_or_run
    columns, rows = wandb_table_rows(results)
    images = {}
    for name, path in figures.items():
        set_name = name.removeprefix("samples/") if name.startswith("samples/") else None
        caption = sample_figure_caption(set_name) if set_name is not None else None
        images[f"figures/{name}"] = wandb.Image(str(path), caption=caption)
    run.log({**scalar_metrics(results), "results": wandb.Table(columns=columns, data=rows), **images})


def write_all(results: RunResults, out_dir: str | Path, logger: Any = None) -> dict[str, Path]:
    """Write the results files, the plots and (when the run has samples) one sample figure per set under
    ``out_dir``; log them to W&B when ``logger`` is a Lightning ``WandbLogger``. Returns name -> path: ``json``,
    ``md``, ``detection_rates``, ``roc``, ``undetected`` and ``samples/<set>`` per set of ``results.samples``."""
    out_dir = Path(out_dir)
    paths = write_results(results, out_dir)
    figures = {
        "detection_rates": plot_detection_rates(results, out_dir / "detection_rates.png"),
        "roc": plot_roc(results, out_dir / "roc.png"),
        "undetected": plot_undetected(results, out_dir / "undetected.png"),
        **save_sample_figures(results, out_dir),
    }
    if is_wandb_logger(logger):
        log_to_wandb(results, logger, figures)
    return {**paths, **figures}
