"""The summary of a Hydra multirun: one table of every job's parameters and each detector's figures, one plot of the
trade-off.

A multirun (``-m``: the basic grid sweeper or ``hparams_search=optuna``) writes each job under
``<sweep dir>/<job num>/`` with its ``results.json`` (:func:`ami_lightning.reporting.results.results_dict`) and Hydra's
``.hydra/overrides.yaml`` (the job's command-line overrides, its parameters). :class:`SweepSummary`, a Hydra callback
registered in ``conf/hydra/default.yaml``, then writes into the sweep folder:

* ``summary.md`` and ``summary.csv`` (:func:`summary_markdown`, :func:`summary_csv`): one row per job and detector
  (a job evaluates one or more detectors), failed jobs included (one row when they left no readable
  ``results.json``): its overrides, the detector, its benign FPR, its mean detection rate and mean undetected success
  rate over the attack sets, its detection rate on each attack set, whether the row is on its detector's Pareto
  fronts, the job's status (a failed job: its error);
* ``tradeoff.png`` (:func:`plot_tradeoff`): benign FPR against mean detection and against mean undetected success,
  one point per job and detector labelled with the job's swept values (``weaken=500, strengthen0=2``), a colour and
  a Pareto front (a step line through its marked points) per detector.

A job that raises (a config refused by validation, a crash, a logger that fails after ``results.json`` is written)
is recorded by :meth:`SweepSummary.on_job_end` in ``<job folder>/error.json`` (:func:`write_job_error`: the job's
number, overrides and error), so that the summary lists it with its error even when the job removed its own folder
(a refused run does; only the record is then left in it).

Means are unweighted, over the attack sets whose value is defined (detection: at least one eligible sample;
undetected: at least one sample). The Pareto fronts (:func:`pareto_front`), per detector over the jobs: lowest
benign FPR with highest mean detection, and lowest benign FPR with lowest mean undetected success.

Each ``results.json`` is read with :func:`ami_lightning.reporting.results.read_results`, so files written before
runs had several detectors read as the one detector ``ami``; the rates follow from the counts.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from hydra.experimental.callback import Callback
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from ami_lightning.pipeline.files import write_text
from ami_lightning.reporting.formatting import fraction_text
from ami_lightning.reporting.plots import palette, save_figure
from ami_lightning.reporting.results import RunResults, read_results
from ami_lightning.reporting.tables import md_cell

log = logging.getLogger(__name__)

NAN = float("nan")
RESULTS = "results.json"
ERROR = "error.json"
"""A failed job's record in its folder (:func:`write_job_error`)."""
OVERRIDES = Path(".hydra") / "overrides.yaml"
FILES = {"md": "summary.md", "csv": "summary.csv", "png": "tradeoff.png"}
"""What :func:`write_summary` writes into the sweep folder."""
OK, FAILED = "ok", "failed"

Sense = Literal["min", "max"]
REASON_CHARS = 400
"""A failed job's error is cut to this many characters in the summary (the whole of it is in ``error.json``)."""


@dataclass
class JobSummary:
    """One job of a sweep and one of its detectors: the job's number, folder, parameters (``overrides``, key ->
    value as written on the command line) and the detector's figures. ``status`` is :data:`OK` when the job's
    ``results.json`` was read and the job left no ``error.json``, else :data:`FAILED` with the ``reason`` (the job's
    error, or what is missing). ``has_results``: the figures come from the job's ``results.json``; a job without
    has one summary, with ``detector`` ``""`` and nan figures.

    ``benign_fpr``: the detector's flag rate on its benign set (``benign_flagged / benign_eligible``);
    ``detection`` / ``undetected``: per attack set (in the file's order) its detection rate and its undetected
    success rate, fractions in [0, 1] (nan where undefined).
    """

    job: int
    path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    status: str = FAILED
    reason: str = ""
    has_results: bool = False
    detector: str = ""
    benign_fpr: float = NAN
    benign_flagged: int | None = None
    benign_eligible: int | None = None
    detection: dict[str, float] = field(default_factory=dict)
    undetected: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the job finished and its results were read."""
        return self.status == OK

    @property
    def mean_detection(self) -> float:
        """Unweighted mean of the defined detection rates of the attack sets (nan when there is none)."""
        return _mean(self.detection.values())

    @property
    def mean_undetected(self) -> float:
        """Unweighted mean of the defined undetected success rates of the attack sets (nan when there is none)."""
        return _mean(self.undetected.values())


def _mean(values: Any) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else NAN


# ---- reading a sweep ------------------------------------------------------------------------------------------------
def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """Hydra's override strings as key -> value, in order: ``"ami.weaken=500"`` -> ``{"ami.weaken": "500"}``
    (a prefix such as ``+`` / ``++`` / ``~`` stays part of the key; a deletion without ``=`` has value ``""``)."""
    out: dict[str, str] = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        out[key.strip()] = value.strip()
    return out


def read_overrides(folder: Path) -> dict[str, str]:
    """The job's ``.hydra/overrides.yaml`` as :func:`parse_overrides` (empty when it is missing)."""
    path = folder / OVERRIDES
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data is None:
        return {}
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of overrides, got {type(data).__name__}")
    return parse_overrides(data)


def write_job_error(folder: str | Path, job: int, overrides: Sequence[str], error: BaseException) -> Path:
    """Record a failed job in ``<folder>/error.json`` (the folder made again if the job removed it), atomically:
    ``{"job": int, "overrides": [str], "error": {"type": str, "message": str}}``."""
    record = {"job": int(job), "overrides": [str(o) for o in overrides],
              "error": {"type": type(error).__name__, "message": str(error)}}
    return write_text(Path(folder) / ERROR, json.dumps(record, indent=1) + "\n")


def read_job_error(folder: Path) -> dict[str, Any] | None:
    """The job's ``error.json`` (:func:`write_job_error`); None when there is none, ValueError when it is not such a
    record."""
    path = folder / ERROR
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or not isinstance(record.get("error"), dict):
        raise ValueError(f"{path}: expected an object with an 'error' object")
    return record


def error_text(record: dict[str, Any], limit: int = REASON_CHARS) -> str:
    """A job's error (:func:`read_job_error`) on one line: ``"<type>: <message>"``, the message's lines joined by
    spaces (a ``ConfigError`` lists its problems on lines of their own), cut to ``limit`` characters."""
    error = record["error"]
    kind = str(error.get("type") or "error")
    message = " ".join(line.strip() for line in str(error.get("message") or "").splitlines() if line.strip())
    text = f"{kind}: {message}" if message else kind
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _job_number(folder: Path) -> int | None:
    """The job number of a sweep's sub-folder: its name when it is an integer (Hydra's default ``subdir``), else
    ``hydra.job.num`` of its ``.hydra/hydra.yaml``, else the ``job`` of its ``error.json``; None when it is not a
    job's folder."""
    if folder.name.isdigit():
        return int(folder.name)
    try:
        hydra_yaml = folder / ".hydra" / "hydra.yaml"
        if hydra_yaml.is_file():
            return int(yaml.safe_load(hydra_yaml.read_text(encoding="utf-8"))["hydra"]["job"]["num"])
        record = read_job_error(folder)
        return None if record is None else int(record["job"])
    except Exception:  # not a readable job folder: not one of ours
        return None


def read_job(folder: Path, job: int) -> list[JobSummary]:
    """One job folder as a :class:`JobSummary` per detector of its ``results.json`` (in the file's order); never
    raises. A job with an ``error.json`` failed: its error is the reason (its figures are kept when it wrote
    ``results.json`` before failing); a job without a readable ``results.json`` gives one failed summary with the
    reason. Unreadable overrides alone are noted in ``reason`` but keep a job with results ``ok``; a folder without
    ``.hydra/overrides.yaml`` (a refused job's, removed) takes the overrides of its ``error.json``."""
    summary = JobSummary(job=job, path=folder)
    notes, failure = [], []
    try:
        summary.overrides = read_overrides(folder)
    except Exception as error:
        notes.append(f"unreadable {OVERRIDES}: {error}")
    try:
        record = read_job_error(folder)
    except Exception as error:
        record = None
        failure.append(f"unreadable {ERROR}: {type(error).__name__}: {error}")
    if record is not None:
        failure.append(error_text(record))
        if not (folder / OVERRIDES).exists():
            summary.overrides = parse_overrides(record.get("overrides") or [])
    path = folder / RESULTS
    if not path.is_file():
        summary.reason = "; ".join(failure or [f"no {RESULTS}", *notes])
        return [summary]
    try:
        results = read_results(path)
    except Exception as error:
        summary.reason = "; ".join([*failure, f"unreadable {RESULTS}: {type(error).__name__}: {error}", *notes])
        return [summary]
    return [replace(summary, status=FAILED if failure else OK, reason="; ".join([*failure, *notes]),
                    has_results=True, detector=detector, **_figures(results, detector))
            for detector in results.detector_names or [""]]


def _figures(results: RunResults, detector: str) -> dict[str, Any]:
    """The :class:`JobSummary` figures of ``detector`` in ``results``: its benign FPR with the counts (nan and
    None without a benign set), its detection and undetected success rates per attack set."""
    benign = results.benign_of(detector)
    attacks = results.attacks_of(detector)
    return {"benign_fpr": NAN if benign is None else benign.rate,
            "benign_flagged": None if benign is None else benign.flagged,
            "benign_eligible": None if benign is None else benign.eligible,
            "detection": {s.name: s.rate for s in attacks},
            "undetected": {s.name: s.undetected_rate for s in attacks}}


def collect_jobs(sweep_dir: str | Path) -> list[JobSummary]:
    """Every job of the sweep in ``sweep_dir`` (:func:`read_job`: a summary per detector), by job number: its
    sub-folders named by an integer (or holding a ``.hydra/hydra.yaml`` or an ``error.json`` with the job's number). A
    job that failed or left no readable ``results.json`` is listed as failed, not dropped. Empty when the folder is
    missing or holds no job."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    jobs = []
    for folder in sweep_dir.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        num = _job_number(folder)
        if num is not None:
            jobs += read_job(folder, num)
    return sorted(jobs, key=lambda j: (j.job, j.path.name))  # stable: a job's detectors stay in the file's order


# ---- Pareto fronts --------------------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]], senses: tuple[Sense, Sense] = ("min", "max")) -> list[bool]:
    """Which of ``points`` are on the Pareto front, ``x`` and ``y`` each minimised or maximised per ``senses``.

    A point is on the front when no other point dominates it: is at least as good on both axes and strictly better
    on one. Ties: points equal on both axes do not dominate each other, so duplicates of a front point are all on
    it; of points with the same ``x``, only those with the best ``y`` can be (and likewise for the same ``y``). A
    point with a non-finite coordinate is never on the front and dominates nothing. O(n log n).
    """
    for sense in senses:
        if sense not in ("min", "max"):
            raise ValueError(f"senses must be 'min' or 'max', got {senses!r}")
    signs = tuple(1.0 if sense == "min" else -1.0 for sense in senses)
    keyed = [(signs[0] * x, signs[1] * y, i) for i, (x, y) in enumerate(points)
             if math.isfinite(x) and math.isfinite(y)]  # both minimised from here on
    keyed.sort()
    front = [False] * len(points)
    best_before = math.inf  # the lowest y of the points with a strictly lower x
    start = 0
    while start < len(keyed):
        end = start
        while end < len(keyed) and keyed[end][0] == keyed[start][0]:
            end += 1
        group_best = keyed[start][1]  # sorted: the group's lowest y comes first
        if group_best < best_before:
            for _, y, i in keyed[start:end]:
                front[i] = y == group_best
        best_before = min(best_before, group_best)
        start = end
    return front


def _detectors(jobs: Sequence[JobSummary]) -> list[str]:
    """The detectors of the jobs whose results were read, in order of first appearance."""
    return list(dict.fromkeys(j.detector for j in jobs if j.has_results))


def _fronts(jobs: Sequence[JobSummary]) -> tuple[list[bool], list[bool]]:
    """Per summary: on its detector's (min FPR, max mean detection) front; on its detector's (min FPR, min mean
    undetected) front, each front over the summaries of that detector that have results (a job without never)."""
    front_det, front_und = [False] * len(jobs), [False] * len(jobs)
    for detector in _detectors(jobs):
        rows = [i for i, j in enumerate(jobs) if j.has_results and j.detector == detector]
        detection = pareto_front([(jobs[i].benign_fpr, jobs[i].mean_detection) for i in rows], ("min", "max"))
        undetected = pareto_front([(jobs[i].benign_fpr, jobs[i].mean_undetected) for i in rows], ("min", "min"))
        for i, on_det, on_und in zip(rows, detection, undetected, strict=True):
            front_det[i], front_und[i] = on_det, on_und
    return front_det, front_und


# ---- tables ---------------------------------------------------------------------------------------------------------
def _job_counts(jobs: Sequence[JobSummary]) -> tuple[int, int]:
    """(jobs, failed jobs): a job counted once however many detectors it has."""
    folders = {j.path: j.ok for j in jobs}
    return len(folders), sum(not ok for ok in folders.values())


def _override_keys(jobs: Sequence[JobSummary]) -> list[str]:
    """Every override key of the jobs, in order of first appearance."""
    return list(dict.fromkeys(k for j in jobs for k in j.overrides))


def _varying_keys(jobs: Sequence[JobSummary]) -> tuple[list[str], list[str]]:
    """The override keys whose value differs between jobs (or is missing from some), and the others."""
    keys = _override_keys(jobs)
    varying = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    return varying, [k for k in keys if k not in varying]


def override_columns(keys: Sequence[str], taken: Sequence[str]) -> list[str]:
    """The column names of the override ``keys`` in a table whose own columns are ``taken``: the key itself, or
    ``override:<key>`` where the key is the name of one of those columns (the override ``detector=[ami]`` beside the
    ``detector`` column), so that every column name is unique."""
    return [f"override:{key}" if key in taken else key for key in keys]


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each override key by its last dotted part, without Hydra's ``+`` / ``~`` prefix (``ami.weaken`` ->
    ``weaken``); keys whose short names would clash keep their whole name."""
    short = {key: key.lstrip("+~").rsplit(".", 1)[-1] for key in keys}
    clashing = {name for name in short.values() if list(short.values()).count(name) > 1}
    return {key: key if name in clashing else name for key, name in short.items()}


def job_labels(jobs: Sequence[JobSummary]) -> dict[int, str]:
    """Per job number, its swept values as ``"weaken=500, strengthen0=2"``: the overrides that vary between the
    jobs (:func:`_short_keys`), in order of first appearance; ``"job <n>"`` for a job without any."""
    varying, _ = _varying_keys(jobs)
    names = _short_keys(varying)
    return {j.job: ", ".join(f"{names[k]}={j.overrides[k]}" for k in varying if k in j.overrides) or f"job {j.job}"
            for j in jobs}


def _attack_sets(jobs: Sequence[JobSummary]) -> list[str]:
    """Every attack set of the jobs, in order of first appearance."""
    return list(dict.fromkeys(name for j in jobs for name in j.detection))


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f} %" if math.isfinite(fraction) else "-"


def _fpr_text(job: JobSummary) -> str:
    """The benign FPR with its counts (:func:`~ami_lightning.reporting.formatting.fraction_text`); ``"-"`` without
    a benign set or an eligible benign sample."""
    if job.benign_flagged is None or job.benign_eligible is None or not math.isfinite(job.benign_fpr):
        return "-"
    return fraction_text(job.benign_flagged, job.benign_eligible)


def _front_text(jobs: Sequence[JobSummary], flags: list[bool]) -> str:
    """Per detector the jobs on its front: ``"ami: jobs 0, 1; feature_squeezing: jobs 2"`` (``none`` for a detector
    without one; ``"none"`` when no job was read)."""
    parts = []
    for detector in _detectors(jobs):
        numbers = [str(j.job) for j, flag in zip(jobs, flags, strict=True) if flag and j.detector == detector]
        parts.append(f"{detector}: jobs {', '.join(numbers) if numbers else 'none'}")
    return "; ".join(parts) if parts else "none"


def summary_markdown(jobs: Sequence[JobSummary], sweep_dir: str | Path | None = None) -> str:
    """Markdown: the counts, the overrides common to all jobs, one table row per job and detector (job, detector,
    the overrides that vary, benign FPR with its counts, mean detection, mean undetected, whether on each of its
    detector's Pareto fronts, each attack set's detection rate, status), then the jobs of each detector's fronts
    and a link to ``tradeoff.png``."""
    total, failed = _job_counts(jobs)
    where = f"`{sweep_dir}`: " if sweep_dir is not None else ""
    lines = ["# Sweep summary", "", f"{where}{total} jobs, {total - failed} ok, {failed} failed.", ""]
    if not jobs:
        return "\n".join([*lines, "No job folder found (`<sweep dir>/<job num>/`)."]) + "\n"
    varying, fixed = _varying_keys(jobs)
    if fixed:
        common = ", ".join(f"`{k}={jobs[0].overrides[k]}`" if k in jobs[0].overrides else f"`{k}`" for k in fixed)
        lines += [f"Overrides of every job: {common}", ""]
    sets = _attack_sets(jobs)
    front_det, front_und = _fronts(jobs)
    figures = ["benign FPR", "mean detection", "mean undetected", "front (detection)", "front (undetected)",
               *(f"{name} detection" for name in sets), "status"]
    header = ["job", "detector", *override_columns(varying, ["job", "detector", *figures]), *figures]
    rows = []
    for j, on_det, on_und in zip(jobs, front_det, front_und, strict=True):
        status = j.status if not j.reason else f"{j.status}: {j.reason}"
        rows.append([str(j.job), j.detector or "-", *(j.overrides.get(k, "") for k in varying), _fpr_text(j),
                     _percent(j.mean_detection), _percent(j.mean_undetected), "yes" if on_det else "",
                     "yes" if on_und else "", *(_percent(j.detection.get(name, NAN)) for name in sets), status])
    numbers = {"benign FPR", "mean detection", "mean undetected", *(f"{name} detection" for name in sets)}
    lines.append("| " + " | ".join(md_cell(h) for h in header) + " |")
    lines.append("|" + "|".join(" ---: " if h in numbers else " --- " for h in header) + "|")
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    lines += [
        "",
        "Benign FPR: the detector's flag rate on the benign set; mean detection / mean undetected: unweighted means "
        "over the job's attack sets of the detection rate (flagged among the samples that fool the model) and the "
        "undetected success rate (fooling and not flagged, among all samples). Pareto fronts are per detector.",
        "",
        f"Pareto front, lowest benign FPR and highest mean detection: {_front_text(jobs, front_det)}.",
        "",
        f"Pareto front, lowest benign FPR and lowest mean undetected success: {_front_text(jobs, front_und)}.",
        "",
        f"![trade-off]({FILES['png']})",
    ]
    return "\n".join(lines) + "\n"


def _csv_number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ""


def summary_csv(jobs: Sequence[JobSummary]) -> str:
    """CSV, one row per job and detector: ``job``, ``detector`` (empty for a job without results), every override
    key (:func:`override_columns`: ``override:detector`` for the override ``detector``; empty where a job has none),
    ``benign_fpr``, ``benign_flagged``, ``benign_eligible``, ``mean_detection``,
    ``mean_undetected``, ``front_detection``, ``front_undetected`` (``true`` / ``false``, on the detector's front),
    ``detection:<set>`` then ``undetected:<set>`` per attack set, ``status``, ``reason`` (a failed job's error).
    Rates are fractions in [0, 1], empty where undefined. Column names are unique."""
    keys, sets = _override_keys(jobs), _attack_sets(jobs)
    front_det, front_und = _fronts(jobs)
    figures = ["benign_fpr", "benign_flagged", "benign_eligible", "mean_detection", "mean_undetected",
               "front_detection", "front_undetected", *(f"detection:{s}" for s in sets),
               *(f"undetected:{s}" for s in sets), "status", "reason"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["job", "detector", *override_columns(keys, ["job", "detector", *figures]), *figures])
    for j, on_det, on_und in zip(jobs, front_det, front_und, strict=True):
        counts = ["" if c is None else str(c) for c in (j.benign_flagged, j.benign_eligible)]
        writer.writerow([j.job, j.detector, *(j.overrides.get(k, "") for k in keys), _csv_number(j.benign_fpr),
                         *counts, _csv_number(j.mean_detection), _csv_number(j.mean_undetected), str(on_det).lower(),
                         str(on_und).lower(), *(_csv_number(j.detection.get(s, NAN)) for s in sets),
                         *(_csv_number(j.undetected.get(s, NAN)) for s in sets), j.status, j.reason])
    return buffer.getvalue()


# ---- plot -----------------------------------------------------------------------------------------------------------
def _panel(ax: Axes, jobs: Sequence[JobSummary], ys: list[float], sense: Sense, ylabel: str) -> None:
    """One panel: benign FPR (%) against ``ys`` (fractions), per detector in its colour a point per job with results,
    labelled with the job's swept values (:func:`job_labels`), and the detector's Pareto front as one line artist:
    its points marked, joined by a step line when there are two distinct ones or more (so that its legend entry shows
    what is drawn)."""
    ax.set_xlabel("benign FPR (%)")
    ax.set_ylabel(f"{ylabel} (%)")
    ax.grid(True, alpha=0.3)
    detectors = _detectors(jobs)
    names = job_labels(jobs)
    drawn = False
    for detector, colour in zip(detectors, palette(len(detectors)), strict=True):
        shown = [(j, j.benign_fpr, y) for j, y in zip(jobs, ys, strict=True)
                 if j.has_results and j.detector == detector and math.isfinite(j.benign_fpr) and math.isfinite(y)]
        if not shown:
            continue
        drawn = True
        front = pareto_front([(x, y) for _, x, y in shown], ("min", sense))
        ax.scatter([100 * x for _, x, _ in shown], [100 * y for _, _, y in shown], color=colour, s=25, zorder=2,
                   alpha=0.6, label=f"{detector}: jobs")
        on_front = sorted((x, y) for (_, x, y), flag in zip(shown, front, strict=True) if flag)
        ax.plot([100 * x for x, _ in on_front], [100 * y for _, y in on_front], drawstyle="steps-post",
                linestyle="-" if len(set(on_front)) > 1 else "none", marker="o", markersize=7, markeredgecolor="black",
                markeredgewidth=0.6, color=colour, zorder=3,
                label=f"{detector}: Pareto front ({sense} {ylabel}, min FPR)")
        labels: dict[tuple[float, float], list[str]] = {}
        for j, x, y in shown:
            labels.setdefault((x, y), []).append(names[j.job])
        for (x, y), texts in labels.items():
            ax.annotate("\n".join(dict.fromkeys(texts)), (100 * x, 100 * y), xytext=(4, 4),
                        textcoords="offset points", fontsize=7, color=colour)
    if not drawn:
        ax.text(0.5, 0.5, "no job with a benign FPR\nand an attack set", ha="center", va="center",
                transform=ax.transAxes, color="grey")
        return
    ax.legend(loc="best", fontsize=7)


def tradeoff_figure(jobs: Sequence[JobSummary], title: str = "") -> Figure:
    """Two panels (:func:`_panel`), benign FPR (%) against mean detection and against mean undetected success (%):
    per detector, in its colour, one point per job that has both values, labelled with the job's swept values (jobs
    at the same point share a label, one line each), and the detector's Pareto front. The title counts the jobs, the
    failed ones and those without results (not shown)."""
    fig = Figure(figsize=(11, 4.8))
    left, right = fig.subplots(1, 2)
    _panel(left, jobs, [j.mean_detection for j in jobs], "max", "mean detection")
    _panel(right, jobs, [j.mean_undetected for j in jobs], "min", "mean undetected success")
    total, failed = _job_counts(jobs)
    missing = len({j.path for j in jobs if not j.has_results})
    counts = (f"{total} jobs" + (f", {failed} failed" if failed else "")
              + (f", {missing} without results (not shown)" if missing else ""))
    fig.suptitle(f"{title}: {counts}" if title else counts, fontsize=10)
    return fig


def plot_tradeoff(jobs: Sequence[JobSummary], path: str | Path, title: str = "") -> Path:
    """:func:`tradeoff_figure` written atomically as PNG at ``path``."""
    return save_figure(tradeoff_figure(jobs, title), path)


# ---- writing and the Hydra callback ---------------------------------------------------------------------------------
def write_summary(sweep_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Collect the jobs of ``sweep_dir`` and write ``summary.md``, ``summary.csv`` and (``plot``) ``tradeoff.png``
    into it, each atomically. Never raises: what cannot be written is skipped with a warning. Returns what was
    written (``md``, ``csv``, ``png``)."""
    sweep_dir = Path(sweep_dir)
    try:
        jobs = collect_jobs(sweep_dir)
    except Exception as error:  # e.g. the folder cannot be listed
        warnings.warn(f"sweep summary: cannot read {sweep_dir}: {error}", stacklevel=2)
        jobs = []
    if not jobs:
        warnings.warn(f"sweep summary: no job folder in {sweep_dir}", stacklevel=2)
    elif not any(j.ok for j in jobs):
        warnings.warn(f"sweep summary: no job of {sweep_dir} has a readable {RESULTS}", stacklevel=2)
    writers = {
        "md": lambda p: write_text(p, summary_markdown(jobs, sweep_dir)),
        "csv": lambda p: write_text(p, summary_csv(jobs)),
    }
    if plot:
        writers["png"] = lambda p: plot_tradeoff(jobs, p, title=sweep_dir.name)
    written = {}
    for key, writer in writers.items():
        try:
            written[key] = writer(sweep_dir / FILES[key])
        except Exception as error:  # the sweep's own results matter more than its summary
            warnings.warn(f"sweep summary: cannot write {sweep_dir / FILES[key]}: {type(error).__name__}: {error}",
                          stacklevel=2)
    return written


def _job_sweep_dir(config: DictConfig) -> Path:
    """A job's sweep folder: its output folder less ``hydra.sweep.subdir`` (the same in a launcher's other process,
    where ``hydra.sweep.dir`` may resolve to another time stamp)."""
    out = Path(str(config.hydra.runtime.output_dir))
    depth = len(Path(str(config.hydra.sweep.subdir)).parts)
    return out.parents[depth - 1] if 0 < depth <= len(out.parents) else Path(str(config.hydra.sweep.dir))


class SweepSummary(Callback):
    """Hydra callback: after a multirun, :func:`write_summary` into ``hydra.sweep.dir`` and print where.

    It also records each failed job's error (``error.json``) and rewrites the summary after each job of a multirun
    (silently), so that a sweep stopped by a failed job (Hydra then skips ``on_multirun_end``) still has one, with
    every job. ``tasks``: the ``task_name`` values it summarises (None:
    all; ``ami-witness`` and ``ami-attack`` write no ``results.json``); ``plot``: whether to draw ``tradeoff.png``.
    Never raises: a failure becomes a warning, the multirun goes on.
    """

    def __init__(self, tasks: Sequence[str] | None = None, plot: bool = True) -> None:
        self.tasks = None if tasks is None else [str(t) for t in tasks]
        self.plot = plot

    def _wanted(self, config: DictConfig) -> bool:
        return self.tasks is None or OmegaConf.select(config, "task_name") in self.tasks

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """In a multirun: a failed job's error recorded in its folder (:func:`write_job_error`, also when the job
        removed its folder), then the summary refreshed."""
        try:
            from hydra.core.utils import JobStatus
            from hydra.types import RunMode

            if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN or not self._wanted(config):
                return
            if job_return is not None and job_return.status == JobStatus.FAILED:
                # JobReturn.return_value re-raises a failed job's error; the error itself is _return_value
                write_job_error(config.hydra.runtime.output_dir, config.hydra.job.num, job_return.overrides or [],
                                job_return._return_value)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the final summary warns; the running one stays quiet
                write_summary(_job_sweep_dir(config), plot=self.plot)
        except Exception as error:
            log.warning("sweep summary after a job failed: %s: %s", type(error).__name__, error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write ``summary.md``, ``summary.csv`` and ``tradeoff.png`` into the sweep folder and print their paths."""
        try:
            if not self._wanted(config):
                return
            sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
            written = write_summary(sweep_dir, plot=self.plot)
            if written:
                print(f"sweep summary ({', '.join(p.name for p in written.values())}) -> {sweep_dir}")
                for path in written.values():
                    print(f"  {path}")
        except Exception as error:
            warnings.warn(f"sweep summary failed: {type(error).__name__}: {error}", stacklevel=2)
