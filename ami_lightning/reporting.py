"""The results of one AmI evaluation run: a table (rich and Markdown), ``results.json``, plots and W&B logging.

Rates are fractions in [0, 1], shown as % with their counts ("9.62 % (33/343)"): the benign set's is the
false-positive rate, an attack set's the detection rate, each over its *eligible* samples (benign: the original
model is right; attack: the original model is fooled). A sample is flagged when the original and the steered model
disagree on the top-1 identity. AUROC and ROC points rank the continuous detection score of an attack set's eligible
samples (positives) against the benign set's eligible samples (negatives).

Calibrated operating points (:mod:`ami_lightning.thresholds`): per target benign FPR (e.g. 5 %, 10 %) the score
threshold set on the benign set's eligible scores (flagged when ``score > threshold``, the achieved FPR at most the
target), and each set's detection rate there (column ``det@5%FPR``; for the benign set its achieved FPR). The
*undetected success rate* of an attack set is the fraction of its ``n`` evaluated samples that fool the original
model and are not flagged, ``(eligible - flagged) / n`` (column ``undetected``), and likewise at each threshold.

Files written by :func:`write_all` under ``out_dir`` (each atomically: a temporary file, then ``os.replace``):
``results.json``, ``results.md``, ``detection_rates.png``, ``roc.png``, ``undetected.png`` and, when the run has
sample images, ``samples.png`` (one PNG for all attack sets, see :func:`save_sample_grid`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from torchvision.utils import make_grid, save_image

from ami_lightning.thresholds import OperatingPoint, fpr_suffix, point_metrics, ratio, undetected_rate

COLUMNS = ("set", "metric", "n", "eligible", "flagged", "rate", "AUROC")  # then those of table_columns
DIFF_GAIN = 10.0  # |adversarial - original| is multiplied by this (then clipped to 255) in the sample grid
_GRID_PAD = 2  # pixels between the cells of the sample grid


@dataclass
class SetResult:
    """One data set's figures: ``n`` samples evaluated, ``eligible`` of them counted, ``flagged`` of those flagged.

    ``auroc`` (None for the benign set, or when a side has no eligible sample) and the ROC points ``roc_fpr`` /
    ``roc_tpr`` (fractions in [0, 1]) compare the set's detection scores with the benign set's.
    ``operating_points``: the set at each threshold calibrated to a target benign FPR (empty in results written
    before they existed).
    """

    name: str
    adversarial: bool
    n: int
    eligible: int
    flagged: int
    auroc: float | None = None
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    operating_points: list[OperatingPoint] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """``flagged / eligible`` in [0, 1] (nan when nothing is eligible): FPR for benign, detection rate otherwise."""
        return ratio(self.flagged, self.eligible)

    @property
    def undetected_rate(self) -> float:
        """Attack set: ``(eligible - flagged) / n`` in [0, 1], the samples that fool the original model and are not
        flagged (nan when ``n == 0``); nan for the benign set."""
        return undetected_rate(self.eligible, self.flagged, self.n) if self.adversarial else float("nan")

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

    def undetected_at(self, target_fpr: float) -> float:
        """Attack set: ``(eligible - detected) / n`` at the threshold for ``target_fpr``; nan for the benign set, when
        ``n == 0`` or without a threshold."""
        detected = self.detected_at(target_fpr)
        return undetected_rate(self.eligible, detected, self.n) if self.adversarial else float("nan")

    @property
    def metric(self) -> str:
        """What :attr:`rate` is: ``"detection"`` for an attack set, ``"FPR"`` for the benign set."""
        return "detection" if self.adversarial else "FPR"

    def rate_text(self) -> str:
        """The rate in % with its counts, e.g. ``"9.62 % (33/343)"``; ``"n/a (0/0)"`` when nothing is eligible."""
        return _fraction_text(self.flagged, self.eligible)

    def detection_at_text(self, target_fpr: float) -> str:
        """:meth:`detection_at` in % with its counts, e.g. ``"78.89 % (71/90)"``; ``"-"`` without a threshold."""
        detected = self.detected_at(target_fpr)
        return "-" if detected is None else _fraction_text(detected, self.eligible)

    def undetected_text(self) -> str:
        """:attr:`undetected_rate` in % with its counts, e.g. ``"9.00 % (9/100)"``; ``"-"`` for the benign set."""
        return _fraction_text(self.eligible - self.flagged, self.n) if self.adversarial else "-"

    def auroc_text(self) -> str:
        """AUROC with 3 decimals, ``"-"`` when there is none."""
        return "-" if _missing(self.auroc) else f"{self.auroc:.3f}"


@dataclass
class RunResults:
    """Everything one evaluation run reports.

    ``sets``: the benign set and the attack sets, in display order; ``weaken`` and ``strengthen`` ``(s0, s1)``: the
    AmI steering parameters; ``model``: the model's name; ``extra``: free-form JSON-able figures (e.g. accuracy);
    ``samples``: per attack set, (original, adversarial) float pixels (k, 3, H, W) in [0, 255].
    """

    sets: list[SetResult]
    weaken: float
    strengthen: tuple[float, float]
    model: str
    extra: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

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


# ---- tables ---------------------------------------------------------------------------------------------------------
def _missing(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def _fraction_text(count: int, total: int) -> str:
    """``count / total`` in % with the counts, e.g. ``"9.62 % (33/343)"``; ``"n/a (0/0)"`` when ``total == 0``."""
    percent = f"{100 * count / total:.2f} %" if total else "n/a"
    return f"{percent} ({count}/{total})"


def _percent(fraction: float) -> str:
    """A fraction as a short percentage for headers and labels: 0.05 -> ``"5%"``."""
    return f"{100 * fraction:g}%"


def table_columns(fpr_targets: list[float]) -> tuple[str, ...]:
    """The table's headers: :data:`COLUMNS`, ``det@<t>%FPR`` per target (e.g. ``det@5%FPR``), ``undetected``."""
    return (*COLUMNS, *(f"det@{_percent(t)}FPR" for t in fpr_targets), "undetected")


def _row(s: SetResult, fpr_targets: list[float]) -> tuple[str, ...]:
    """One set's cells, in :func:`table_columns` order."""
    return (s.name, s.metric, str(s.n), str(s.eligible), str(s.flagged), s.rate_text(), s.auroc_text(),
            *(s.detection_at_text(t) for t in fpr_targets), s.undetected_text())


def results_table(results: RunResults) -> Table:
    """A rich table, one row per set (columns :func:`table_columns`), titled with the model and the parameters."""
    table = Table(title=results.title())
    for column in table_columns(results.fpr_targets):
        table.add_column(column, justify="left" if column in ("set", "metric") else "right")
    for s in results.sets:
        table.add_row(*_row(s, results.fpr_targets))
    return table


def print_results(results: RunResults, console: Console | None = None) -> None:
    """Print :func:`results_table` (to a new stdout console unless one is given; one that is not a terminal, a log
    file say, is 200 characters wide so that the table's columns are not cut short)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
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
    """Markdown: a title, the parameters (model, weaken, strengthen, then ``extra``) and the results table."""
    s0, s1 = results.strengthen
    parameters = [("model", results.model), ("weaken", f"{results.weaken:g}"),
                  ("strengthen (s0, s1)", f"({s0:g}, {s1:g})"), *results.extra.items()]
    lines = [f"# {results.title()}", "", *_md_table(("parameter", "value"), parameters, left=2), ""]
    targets = results.fpr_targets
    lines += _md_table(table_columns(targets), [_row(s, targets) for s in results.sets], left=2)
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


def _set_dict(s: SetResult) -> dict[str, Any]:
    """``s`` as a dict with its derived rates: ``metric``, ``rate``, ``undetected`` and, per operating point,
    ``detection`` and ``undetected``."""
    points = [{**asdict(p), "detection": s.detection_at(p.target_fpr), "undetected": s.undetected_at(p.target_fpr)}
              for p in s.operating_points]
    return {**asdict(s), "operating_points": points, "metric": s.metric, "rate": s.rate,
            "undetected": s.undetected_rate}


def results_dict(results: RunResults) -> dict[str, Any]:
    """Everything but the sample pixels, JSON-safe (NaN as None); each set also carries its derived rates
    (:func:`_set_dict`)."""
    return _json_safe({
        "model": results.model,
        "weaken": results.weaken,
        "strengthen": list(results.strengthen),
        "sets": [_set_dict(s) for s in results.sets],
        "extra": results.extra,
    })


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block succeeds it replaces ``path`` in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> Path:
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_results(results: RunResults, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` (:func:`results_dict`, strict JSON) and ``results.md`` (:func:`results_markdown`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results_dict(results), indent=2, allow_nan=False) + "\n"
    return {
        "json": _write_text(out_dir / "results.json", text),
        "md": _write_text(out_dir / "results.md", results_markdown(results)),
    }


def _operating_point(data: dict[str, Any]) -> OperatingPoint:
    """An operating point from ``results.json`` (derived rates dropped; a null threshold or FPR reads as nan)."""
    nan = float("nan")
    return OperatingPoint(target_fpr=data["target_fpr"], detected=data["detected"],
                          threshold=nan if data["threshold"] is None else data["threshold"],
                          benign_fpr=nan if data["benign_fpr"] is None else data["benign_fpr"])


def _set_result(data: dict[str, Any]) -> SetResult:
    names = {f.name for f in fields(SetResult)} - {"operating_points"}
    points = [_operating_point(p) for p in data.get("operating_points", [])]
    return SetResult(**{k: v for k, v in data.items() if k in names}, operating_points=points)


def read_results(path: str | Path) -> RunResults:
    """A ``results.json`` back as :class:`RunResults` (without samples; a null AUROC reads as None). Files written
    before operating points existed read back with none."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return RunResults(
        sets=[_set_result(s) for s in data["sets"]],
        weaken=data["weaken"],
        strengthen=tuple(data["strengthen"]),
        model=data["model"],
        extra=data["extra"],
    )


# ---- plots ----------------------------------------------------------------------------------------------------------
def _save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def _annotate_bars(ax: Axes, xs: list[float], heights: list[float], texts: list[str], fontsize: float = 8) -> None:
    """Write ``texts`` just above the bars at ``xs`` of the given ``heights``."""
    for x, height, text in zip(xs, heights, texts, strict=True):
        ax.annotate(text, (x, height), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=fontsize)


def _heights(fractions: list[float]) -> list[float]:
    """Bar heights in % (0 for nan)."""
    return [0.0 if math.isnan(f) else 100 * f for f in fractions]


def plot_detection_rates(results: RunResults, path: str | Path) -> Path:
    """Bar chart of each attack set's detection rate (%), rate and counts above each bar; the benign FPR as a red
    dashed line. A set with nothing eligible gets an empty bar marked "n/a (0/0)"."""
    attacks = results.attacks
    fig = Figure(figsize=(max(6.0, 1.1 * len(attacks) + 2.5), 4.5))
    ax = fig.add_subplot()
    heights = _heights([s.rate for s in attacks])
    ax.bar(range(len(attacks)), heights, color="tab:blue", width=0.6)
    ax.set_xticks(range(len(attacks)), [s.name for s in attacks], rotation=30, ha="right")
    _annotate_bars(ax, list(range(len(attacks))), heights, [s.rate_text().replace(" (", "\n(") for s in attacks])
    benign = results.benign
    if benign is not None and benign.eligible:
        ax.axhline(100 * benign.rate, color="tab:red", linestyle="--", label=f"benign FPR {benign.rate_text()}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-0.6, max(len(attacks), 1) - 0.4)
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("detection rate (%)")
    ax.set_title(results.title(), fontsize=10)
    return _save_figure(fig, path)


def plot_roc(results: RunResults, path: str | Path) -> Path:
    """ROC curve of the detection score per attack set (vs the benign set), AUROC in the legend, the chance
    diagonal dotted; a cross marks each set's top-1-disagreement operating point (benign FPR, detection rate).
    Colours: tab10, or tab20 beyond 10 sets, so that no two curves share one."""
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
    ax.legend(loc="lower right", fontsize=8)
    return _save_figure(fig, path)


def plot_undetected(results: RunResults, path: str | Path) -> Path:
    """Grouped bars per attack set: its undetected success rate (% of its ``n`` samples: fooling the original model,
    not flagged) at the top-1-disagreement rule and at each threshold calibrated to a target benign FPR, each value
    above its bar ("n/a" and an empty bar where undefined)."""
    attacks, targets = results.attacks, results.fpr_targets
    rules = {"top-1 disagreement": [s.undetected_rate for s in attacks]}
    rules |= {f"score > threshold at {_percent(t)} benign FPR": [s.undetected_at(t) for s in attacks] for t in targets}
    width = 0.8 / len(rules)
    fig = Figure(figsize=(min(16.0, max(6.0, (0.45 * len(rules) + 0.4) * len(attacks) + 2.5)), 4.5))
    ax = fig.add_subplot()
    for j, (label, fractions) in enumerate(rules.items()):
        xs = [i + (j - (len(rules) - 1) / 2) * width for i in range(len(attacks))]
        heights = _heights(fractions)
        ax.bar(xs, heights, width=width, label=label)
        _annotate_bars(ax, xs, heights, ["n/a" if math.isnan(f) else f"{100 * f:.1f}" for f in fractions], 7)
    ax.set_xticks(range(len(attacks)), [s.name for s in attacks], rotation=30, ha="right")
    ax.set_xlim(-0.6, max(len(attacks), 1) - 0.4)
    ax.set_ylim(0, 135)  # room above the 100 % labels for a one-row legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("undetected success (% of evaluated samples)")
    ax.set_title(results.title(), fontsize=10)
    ax.legend(loc="upper center", ncol=len(rules), fontsize=7, frameon=False)
    return _save_figure(fig, path)


def _check_samples(samples: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    if not samples:
        raise ValueError("no sample images to draw")
    shapes = {tuple(t.shape[1:]) for pair in samples.values() for t in pair}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"sample images must all be (k, C, H, W) of one size; got {sorted(shapes)}")
    for name, (original, adversarial) in samples.items():
        if original.shape != adversarial.shape:
            raise ValueError(f"{name}: original {tuple(original.shape)} vs adversarial {tuple(adversarial.shape)}")


def sample_rows(samples: dict[str, tuple[torch.Tensor, torch.Tensor]], gain: float = DIFF_GAIN) -> torch.Tensor:
    """The grid's cells, (3 x sets x k, C, H, W) in [0, 1], row by row: per set (in ``samples`` order) its
    originals, adversarials and ``|adversarial - original| x gain`` clipped to 255; ``k`` is the largest sample
    count, shorter rows are filled with white cells."""
    _check_samples(samples)
    k = max(len(original) for original, _ in samples.values())
    rows = []
    for original, adversarial in samples.values():
        original, adversarial = original.detach().float().cpu(), adversarial.detach().float().cpu()
        for row in (original, adversarial, ((adversarial - original).abs() * gain).clamp(0, 255)):
            blank = torch.full((k - len(row), *row.shape[1:]), 255.0)
            rows.append(torch.cat([row, blank]))
    return torch.cat(rows) / 255


def save_sample_grid(
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path, gain: float = DIFF_GAIN
) -> Path:
    """One PNG for all attack sets: per set (in ``samples`` order) three rows of ``k`` cells, original /
    adversarial / |difference| x ``gain`` (clipped), 2-px white gaps (see :func:`sample_rows`). Its size is
    ``(3 * sets * (H + 2) + 2) x (k * (W + 2) + 2)`` pixels (height x width)."""
    path = Path(path)
    cells = sample_rows(samples, gain)
    k = len(cells) // (3 * len(samples))
    with _atomic(path) as tmp:
        save_image(make_grid(cells, nrow=k, padding=_GRID_PAD, pad_value=1.0), tmp, format="png")
    return path


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


def scalar_metrics(results: RunResults) -> dict[str, float | int]:
    """Per set ``<set>/rate`` (fraction, nan when nothing is eligible), ``<set>/flagged``, ``<set>/eligible``,
    ``<set>/n``, where there is one, ``<set>/auroc``, and the operating-point figures of
    :func:`~ami_lightning.thresholds.point_metrics` (e.g. ``<set>/undetected``, ``<set>/detection_at_fpr_0.05``,
    ``benign/threshold_at_fpr_0.05``); plus the numbers in ``extra`` as ``extra/<key>``."""
    metrics: dict[str, float | int] = {}
    for s in results.sets:
        metrics.update({f"{s.name}/rate": s.rate, f"{s.name}/flagged": s.flagged, f"{s.name}/eligible": s.eligible,
                        f"{s.name}/n": s.n})
        if s.auroc is not None:
            metrics[f"{s.name}/auroc"] = s.auroc
        points = point_metrics(s.operating_points, s.n, s.eligible, s.flagged, s.adversarial)
        metrics.update({f"{s.name}/{key}": value for key, value in points.items()})
    return {**metrics, **_flatten_numbers(results.extra, "extra")}


def log_to_wandb(results: RunResults, logger_or_run: Any, figures: dict[str, Path]) -> None:
    """Log to W&B in one ``run.log`` call: :func:`scalar_metrics`, the table as ``results`` (a ``wandb.Table``,
    rates as fractions, missing values as None; after ``auroc`` one ``detection_at_fpr_<t>`` column per target,
    ``undetected``, then one ``undetected_at_fpr_<t>`` per target) and each figure as ``figures/<name>`` (a
    ``wandb.Image``).

    ``logger_or_run``: a Lightning ``WandbLogger`` (its ``.experiment`` is used) or a ``wandb`` run. Raises
    ImportError, when called, if wandb is not installed.
    """
    wandb = _import_wandb()
    run = logger_or_run.experiment if is_wandb_logger(logger_or_run) else logger_or_run
    targets = results.fpr_targets
    columns = ["set", "metric", "n", "eligible", "flagged", "rate", "auroc",
               *(f"detection_{fpr_suffix(t)}" for t in targets), "undetected",
               *(f"undetected_{fpr_suffix(t)}" for t in targets)]
    rows = [_json_safe([s.name, s.metric, s.n, s.eligible, s.flagged, s.rate, s.auroc,
                        *(s.detection_at(t) for t in targets), s.undetected_rate,
                        *(s.undetected_at(t) for t in targets)])
            for s in results.sets]
    order = ", ".join(results.samples)
    captions = {"samples": f"rows per set ({order}): original / adversarial / |difference| x {DIFF_GAIN:g}"}
    images = {f"figures/{name}": wandb.Image(str(path), caption=captions.get(name)) for name, path in figures.items()}
    run.log({**scalar_metrics(results), "results": wandb.Table(columns=columns, data=rows), **images})


def write_all(results: RunResults, out_dir: str | Path, logger: Any = None) -> dict[str, Path]:
    """Write the results files, the plots and (when the run has samples) the sample grid under ``out_dir``; log
    them to W&B when ``logger`` is a Lightning ``WandbLogger``. Returns name -> path: ``json``, ``md``,
    ``detection_rates``, ``roc``, ``undetected`` and maybe ``samples``."""
    out_dir = Path(out_dir)
    paths = write_results(results, out_dir)
    figures = {
        "detection_rates": plot_detection_rates(results, out_dir / "detection_rates.png"),
        "roc": plot_roc(results, out_dir / "roc.png"),
        "undetected": plot_undetected(results, out_dir / "undetected.png"),
    }
    if results.samples:
        figures["samples"] = save_sample_grid(results.samples, out_dir / "samples.png")
    if is_wandb_logger(logger):
        log_to_wandb(results, logger, figures)
    return {**paths, **figures}
