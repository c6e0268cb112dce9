"""The tables of a run's results: a rich table for the console and ``results.md``.

Both have one row per detector and set, grouped by detector (its benign set first, then its attack sets), with the
columns of :func:`table_columns`: every rate in % with its counts and 95 % Wilson interval, the AUROC with its
bootstrap interval (:mod:`ami_lightning.reporting.results` says what each figure is).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ami_lightning.pipeline.provenance import describe
from ami_lightning.reporting.formatting import json_safe, short_percent
from ami_lightning.reporting.matrix import matrix_markdown, print_matrix

if TYPE_CHECKING:
    from ami_lightning.reporting.records import RunResults, SetResult

COLUMNS = ("detector", "set", "metric", "n", "eligible", "flagged", "rate", "AUROC")  # then those of table_columns
LEFT = 3  # the first columns, left-aligned (names); the others are right-aligned (numbers)


def table_columns(fpr_targets: list[float]) -> tuple[str, ...]:
    """The table's headers: :data:`COLUMNS`, ``det@<t>%FPR`` per target (e.g. ``det@5%FPR``), ``SR@<t>%`` per
    target (success and not flagged at that threshold, over n), ``undetected``."""
    return (*COLUMNS, *(f"det@{short_percent(t)}FPR" for t in fpr_targets),
            *(f"SR@{short_percent(t)}" for t in fpr_targets), "undetected")


def _row(s: SetResult, fpr_targets: list[float]) -> tuple[str, ...]:
    """One set's cells, in :func:`table_columns` order, rates and AUROC with their intervals."""
    return (s.detector, s.name, s.metric, str(s.n), str(s.eligible), str(s.flagged), s.rate_text(), s.auroc_text(),
            *(s.detection_at_text(t) for t in fpr_targets), *(s.success_at_text(t) for t in fpr_targets),
            s.undetected_text())


def _grouped_rows(results: RunResults) -> list[list[tuple[str, ...]]]:
    """The rows of each detector (:meth:`RunResults.sets_of`), in :attr:`RunResults.detector_names` order."""
    targets = results.fpr_targets
    return [[_row(s, targets) for s in results.sets_of(name)] for name in results.detector_names]


def intervals_note(results: RunResults) -> str:
    """One sentence saying what the brackets of the tables are."""
    methods = results.intervals()
    return (f"Intervals in brackets: rates (in %): {methods['rates']} (at a calibrated threshold: given the "
            f"threshold; none for the benign set's achieved FPR); AUROC: {methods['auroc']}.")


def results_table(results: RunResults) -> Table:
    """A rich table, one row per detector and set (columns :func:`table_columns`), a section per detector, titled
    with :meth:`RunResults.title` and captioned with :func:`intervals_note`."""
    table = Table(title=results.title(), caption=intervals_note(results))
    for i, column in enumerate(table_columns(results.fpr_targets)):
        table.add_column(column, justify="left" if i < LEFT else "right")
    for group in _grouped_rows(results):
        for row in group:
            table.add_row(*row)
        table.add_section()
    return table


def print_results(results: RunResults, console: Console | None = None) -> None:
    """Print the detector x attack matrix (:func:`~ami_lightning.reporting.matrix.print_matrix`), then
    :func:`results_table` (to a new stdout console unless one is given; one that is not a terminal, a log file say,
    is 360 characters wide so that the table's columns are not cut short)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=360)
    print_matrix(results, console)
    console.print(results_table(results))


def md_cell(value: Any) -> str:
    """A value as a Markdown table cell: dicts and lists as JSON, ``|`` escaped, line breaks as spaces."""
    value = json_safe(value)
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: tuple[str, ...], rows: list[tuple[Any, ...]], left: int) -> list[str]:
    """A Markdown table whose first ``left`` columns are left-aligned, the others right-aligned."""
    rule = "|" + "|".join(" --- " if i < left else " ---: " for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return lines + ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]


def detector_rows(name: str, description: dict[str, Any]) -> list[tuple[str, Any]]:
    """A detector's parameter table: ``name``, ``type``, each parameter as ``params.<key>``, ``score``, ``rule``
    and ``gradient`` (``"-"`` for what the description lacks)."""
    params = description.get("params") or {}
    rows: list[tuple[str, Any]] = [("name", name), ("type", description.get("type", "-"))]
    rows += [(f"params.{key}", value) for key, value in params.items()]
    return rows + [(key, description.get(key, "-")) for key in ("score", "rule", "gradient")]


def attack_set_rows(results: RunResults) -> list[tuple[str, str, str]]:
    """Per attack set (:attr:`RunResults.set_names`): its name, its attack and the detector it attacked (``"-"``
    where there is none or it is not recorded)."""
    return [(name, (results.attack_sets.get(name) or {}).get("attack") or "-", results.attacked_detector(name) or "-")
            for name in results.set_names]


def results_markdown(results: RunResults) -> str:
    """Markdown: the title, the run's parameters (model, then ``extra``), a parameter table per detector
    (:func:`detector_rows`), the attack sets (:func:`attack_set_rows`), the detector x attack matrix with its paired
    comparisons (:func:`~ami_lightning.reporting.matrix.matrix_markdown`), the results table (rows grouped by
    detector), :func:`intervals_note` and the run's provenance."""
    lines = [f"# {results.title()}", "",
             *_md_table(("parameter", "value"), [("model", results.model), *results.extra.items()], left=2), ""]
    for name in results.detector_names:
        rows = detector_rows(name, results.detectors.get(name, {}))
        lines += [f"## Detector `{name}`", "", *_md_table(("parameter", "value"), rows, left=2), ""]
    if results.set_names:
        lines += ["## Attack sets", "",
                  *_md_table(("set", "attack", "attacked detector"), attack_set_rows(results), left=3), ""]
    if results.set_names:
        lines += ["## Detector x attack matrix", "", *matrix_markdown(results), ""]
    lines += ["## Results", ""]
    lines += _md_table(table_columns(results.fpr_targets), [row for group in _grouped_rows(results) for row in group],
                       left=LEFT)
    lines += ["", intervals_note(results)]
    if results.provenance:
        lines += ["", f"Run: {describe(results.provenance)}."]
    return "\n".join(lines) + "\n"
