"""The detector x attack matrix of a run: which detector holds against which attack, and whether the differences
between detectors are real at this n.

Rows are detectors; columns are the attack sets, grouped: the published attacks first, then the adaptive sets
against each detector (in detector order), then the worst case over attacks. A cell is the share of the set's
samples (for the worst case: faces) that fool the model and pass the detector unflagged by its own rule, with k/n and
its Wilson interval, and beside it SR@5 (the same at the threshold calibrated to 5 % benign FPR) where the detector
has a score threshold. Paired comparisons (:mod:`ami_lightning.evaluation.paired`: exact McNemar per set, Holm over
the set's pairs) mark the detectors a row's detector catches significantly more often than: ``> other``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from rich.console import Console
from rich.table import Table

from ami_lightning.evaluation.paired import LEVEL
from ami_lightning.reporting import plots
from ami_lightning.reporting.formatting import interval_text

if TYPE_CHECKING:
    from ami_lightning.reporting.records import RunResults, SetResult

WORST = "worst_case"
SR_AT = 0.05
"""The benign FPR of the calibrated threshold whose SR is shown beside each cell (SR@5)."""


def matrix_columns(results: RunResults) -> list[tuple[str, str]]:
    """(group, set) per column: ``("published", set)`` for sets that attack no detector, ``("vs <detector>", set)``
    for the adaptive sets against each detector (detector order), then ``("worst case", "worst_case")`` when some
    detector has a worst case."""
    names = results.set_names
    published = [("published", s) for s in names if results.attacked_detector(s) is None]
    adaptive = [(f"vs {d}", s) for d in results.detector_names for s in names if results.attacked_detector(s) == d]
    worst = [("worst case", WORST)] if any(results.worst_case_of(d) for d in results.detector_names) else []
    return published + adaptive + worst


def _cell(results: RunResults, detector: str, set_name: str) -> SetResult | None:
    return next((s for s in results.sets_of(detector) if s.name == set_name), None)


def better_than(results: RunResults, detector: str, set_name: str) -> list[str]:
    """The detectors that ``detector`` catches significantly more often than on ``set_name`` (Holm-adjusted exact
    McNemar p below :data:`~ami_lightning.evaluation.paired.LEVEL`)."""
    out = []
    for c in results.comparisons:
        if c.set == set_name and c.better == detector:
            out.append(c.second if c.first == detector else c.first)
    return out


def cell_text(results: RunResults, detector: str, set_name: str, marks: bool = True) -> str:
    """``"<k>/<n> <pct> % [low, high]"`` undetected successes of one cell, ``"; SR@5 <k>/<n>"`` where a threshold
    applies and ``"; > a, b"`` for the detectors it is significantly better than; ``"-"`` without the set."""
    s = _cell(results, detector, set_name)
    if s is None:
        return "-"
    through = s.eligible - s.flagged
    text = f"{through}/{s.n}"
    if s.n:
        text += f" {100 * through / s.n:.0f} % {interval_text(s.undetected_ci(), 100.0, 0)}"
    evaded = s.evaded_at(SR_AT)
    if evaded is not None:
        text += f"; SR@5 {evaded}/{s.n}"
    beaten = better_than(results, detector, set_name) if marks else []
    if beaten:
        text += f"; > {', '.join(beaten)}"
    return text


def matrix_rows(results: RunResults) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the matrix: ``detector`` then one column per :func:`matrix_columns` (``set`` under its
    group), one row per detector."""
    columns = matrix_columns(results)
    header = ["detector", *(f"{s} ({g})" if g.startswith("vs ") else s for g, s in columns)]
    rows = [[d, *(cell_text(results, d, s) for _, s in columns)] for d in results.detector_names]
    return header, rows


def comparison_sentences(results: RunResults) -> list[str]:
    """One generated sentence per attack set (and the worst case) saying which detectors are distinguishable at
    this n and which are not."""
    sentences = []
    for _, set_name in matrix_columns(results):
        pairs = [c for c in results.comparisons if c.set == set_name]
        if not pairs:
            continue
        unit = "faces" if set_name == WORST else "samples that fool the model"
        total = pairs[0].total
        found = [f"{c.better} > {c.second if c.better == c.first else c.first} (Holm p = {c.p_holm:.2g})"
                 for c in pairs if c.better]
        tied = [f"{c.first} ~ {c.second}" for c in pairs if not c.better]
        text = f"`{set_name}` ({total} {unit}): "
        text += ("; ".join(found) if found else "no pair distinguishable")
        if found and tied:
            text += f"; not distinguishable: {', '.join(tied)}"
        sentences.append(text + ".")
    return sentences


def matrix_markdown(results: RunResults) -> list[str]:
    """The matrix as Markdown lines: a legend, the table and :func:`comparison_sentences`."""
    header, rows = matrix_rows(results)
    lines = [f"Each cell: samples (worst case: faces) that fool the model and pass the detector unflagged by its "
             f"rule, k/n, % and 95 % Wilson interval; SR@5: the same at the threshold of 5 % benign FPR; `> x`: "
             f"catches significantly more often than x (exact McNemar on the discordant samples, Holm-adjusted over "
             f"the set's pairs, p < {LEVEL:g}).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    sentences = comparison_sentences(results)
    if sentences:
        lines += ["", "Paired comparisons:", "", *(f"- {s}" for s in sentences)]
    return lines


def matrix_table(results: RunResults) -> Table:
    """The matrix as a rich table for the console."""
    header, rows = matrix_rows(results)
    table = Table(title="undetected successes (k/n, % [95 % CI]); SR@5; > significantly better than")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_matrix(results: RunResults, console: Console | None = None) -> None:
    """Print :func:`matrix_table` and :func:`comparison_sentences` (a 360-wide console when not a terminal)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=360)
    console.print(matrix_table(results))
    for sentence in comparison_sentences(results):
        console.print(f"  {sentence}")


def plot_matrix(results: RunResults, path: str | Path) -> Path:
    """``matrix.png``: the matrix as a heatmap (colour: the undetected-success rate, 0 white to 1 dark red; grey
    without samples), each cell's k/n as text, the adaptive columns against a row's own detector outlined."""
    columns = matrix_columns(results)
    detectors = results.detector_names
    fig = Figure(figsize=(max(4.5, 1.6 + 1.1 * len(columns)), 1.2 + 0.55 * len(detectors)))
    ax = fig.add_subplot()
    cmap = colormaps["Reds"]
    for r, d in enumerate(detectors):
        for c, (_, s) in enumerate(columns):
            cell = _cell(results, d, s)
            value = (cell.eligible - cell.flagged) / cell.n if cell is not None and cell.n else None
            colour = (0.85, 0.85, 0.85) if value is None else cmap(0.1 + 0.8 * value)
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor=colour, edgecolor="white"))
            if cell is not None:
                dark = value is not None and value > 0.6
                ax.text(c + 0.5, r + 0.5, f"{cell.eligible - cell.flagged}/{cell.n}", ha="center", va="center",
                        fontsize=8, color="white" if dark else "black")
            if results.attacked_detector(s) == d:
                ax.add_patch(Rectangle((c + 0.04, r + 0.04), 0.92, 0.92, fill=False, edgecolor="black", lw=1.5))
    ax.set_xlim(0, len(columns))
    ax.set_ylim(len(detectors), 0)
    ax.set_xticks([c + 0.5 for c in range(len(columns))],
                  [s if not g.startswith("vs ") else f"{s}\n({g})" for g, s in columns], rotation=60, ha="right",
                  fontsize=7)
    ax.set_yticks([r + 0.5 for r in range(len(detectors))], detectors, fontsize=8)
    ax.set_title("undetected successes (k/n; darker = more)\noutlined: a set made against that row's detector",
                 fontsize=8)
    return plots.save_figure(fig, path)
