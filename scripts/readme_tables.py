"""Write the tables of figures in README.md and docs/*.md from the runs that produced them, keep each run's figures in
the repository, and check every table against them.

Each table sits in README.md or in one file of ``docs/`` between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` (a block name lives in exactly one file; the script finds it). Writing a block from a run::

    python -m scripts.readme_tables KIND RUN_DIR [--block NAME]      # NAME defaults to KIND

copies what the kind reads from ``RUN_DIR`` (its ``results.json``, less what no table shows: the ROC points, the list
of skipped files, the fit sets' file lists; for ``orthogonal-projection`` also each set's params from the run's
``.hydra/config.yaml``) to ``docs/results/NAME.json`` and renders the block from that copy: the table, any sentences
generated from the same figures, and a line naming the command, commit and machine recorded in the run
(:mod:`ami_lightning.pipeline.provenance`). Checking::

    python -m scripts.readme_tables --check                  # every block that has a docs/results/<block>.json
    python -m scripts.readme_tables KIND RUN_DIR --check     # one block against a run folder (tables only)

The first re-renders every block from its copy and exits 1, naming the block and printing a diff, when the text
differs (a hand edit, or a change of the code that renders it: ``--rewrite`` then writes every block from its
copy); it also fails on a copy without its block and on a block name found in two files, and lists the blocks that
have no copy (not measured yet). It needs no run folder, so the tests run it. The second compares the tables only
(not the provenance line) with a run folder on the machine that made it. Usage (repository root)::

    .venv/bin/ami-run                                    # the main job: three blocks
    python -m scripts.readme_tables matrix logs/run/<stamp>
    python -m scripts.readme_tables default-run logs/run/<stamp>
    python -m scripts.readme_tables attacks-on-detectors logs/run/<stamp>
    .venv/bin/ami-run experiment=benchmark               # every detector and attack set, 32 faces
    python -m scripts.readme_tables matrix logs/run/<stamp> --block benchmark
    python -m scripts.readme_tables orthogonal-projection logs/eval/<stamp>   # the ami-eval run of docs/results.md
    .venv/bin/ami-calibrate
    python -m scripts.readme_tables calibration logs/calibrate/<stamp>
    python -m scripts.bench_distributed --out logs/bench_distributed
    python -m scripts.readme_tables distributed logs/bench_distributed
    python -m scripts.bench_main_job --out logs/bench_main_job
    python -m scripts.readme_tables main-job logs/bench_main_job          # also main-job-summary (README)
    python -m scripts.bench_detector --out logs/bench_detector
    python -m scripts.readme_tables detector-speed logs/bench_detector
    python -m scripts.bench_tests --out logs/bench_tests                # a clean clone: install and the tests
    python -m scripts.readme_tables test-time logs/bench_tests

Kinds of table: ``matrix`` (any ``ami-run`` / ``ami-eval`` results: the detector x attack matrix of undetected
successes with the paired comparisons' sentences, :func:`ami_lightning.reporting.matrix.matrix_markdown`),
``default-run`` (the same results, every figure per detector and set), ``attacks-on-detectors`` (the same results,
per detector: BIM and the attacks made to evade detectors, with SR@N, and the worst case over every set),
``orthogonal-projection`` (the same results, per detector: BIM, selective PGD and each orthogonal PGD set against it
with its ``project``, read from the run's ``.hydra/config.yaml``, and one generated sentence per detector on whether
the projections are told apart), ``calibration`` (``ami-calibrate``), ``distributed``
(``scripts/bench_distributed.py``), ``main-job`` (``scripts/bench_main_job.py``: the main job and the smoke run, cold
and warm), ``main-job-summary`` (the same figures as one sentence, for the README; written with ``main-job``),
``detector-speed`` (``scripts/bench_detector.py``) and ``test-time`` (``scripts/bench_tests.py``: the install and the
tests on a clean clone).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import sys
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ami_lightning.attacks.detector_pgd import PROJECTIONS, OrthogonalPGD
from ami_lightning.cli.calibrate import calibration_markdown
from ami_lightning.pipeline.provenance import describe
from ami_lightning.reporting.matrix import matrix_markdown
from ami_lightning.reporting.results import RunResults, read_results
from scripts.bench_detector import detector_speed_markdown
from scripts.bench_distributed import distributed_markdown
from scripts.bench_main_job import main_job_markdown, minutes
from scripts.bench_tests import tests_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS_DIR = Path("docs") / "results"
"""Where the copies of the runs' figures live, relative to the repository root: ``<block>.json``."""
META = "readme_tables"
"""The key of a copy that says how to render it: ``kind``, ``source`` (the run folder it was copied from) and, for
``orthogonal-projection``, ``attack_params``."""
RUN_KINDS = ("matrix", "default-run", "attacks-on-detectors", "orthogonal-projection")
"""The kinds written from an evaluation run's ``results.json``."""


def main_job_summary(figures: dict[str, Any]) -> str:
    """The main-job benchmark's wall times as one sentence (the README's summary of the ``main-job`` table)."""
    parts = []
    for label, run in figures["runs"].items():
        what, cache = label.split(", ")
        parts.append(f"{what} (`{run['command']}`) {minutes(run['seconds'])} with the cache "
                     f"{'empty' if cache == 'cold' else 'warm'}")
    return "Wall time: " + "; ".join(parts) + "."


BENCHMARKS = {"distributed": distributed_markdown, "main-job": main_job_markdown,
              "main-job-summary": main_job_summary, "detector-speed": detector_speed_markdown,
              "test-time": tests_markdown}
"""The kinds written from a benchmark script's ``--out DIR/results.json``: its renderer."""
KINDS = (*RUN_KINDS, "calibration", *BENCHMARKS)
COMPANIONS = {"main-job": ("main-job-summary",)}
"""Blocks written with a kind's default block, from the same run, when some document holds them."""


def run_table(results: RunResults) -> str:
    """The table of an evaluation run: one row per detector and set, grouped by detector (its benign FPR row, then
    its attack sets), naming the detector an adaptive set attacked (``-`` for the others); rates with their counts and
    95 % Wilson intervals, AUROC with its bootstrap interval, detection at each calibrated FPR and undetected
    success."""
    targets = results.fpr_targets
    header = ["detector", "set", "attacked detector", "n", "eligible", "rate (FPR / detection)", "AUROC",
              *(f"det@{100 * t:g}%FPR" for t in targets), "undetected"]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | --- |" + " ---: |" * (len(header) - 3)]
    for detector in results.detector_names:
        for s in results.sets_of(detector):
            name = s.name if s.adversarial else f"{s.name} (FPR)"
            attacked = (results.attacked_detector(s.name) if s.adversarial else None) or "-"
            cells = [detector, name, attacked, str(s.n), str(s.eligible), s.rate_text(), s.auroc_text(),
                     *(s.detection_at_text(t) for t in targets), s.undetected_text()]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


STRONG_ATTACKS = ("bim", "adaptive_transfer", "adaptive_gradient", "selective_pgd", "orthogonal_pgd")
"""The attacks of the ``attacks-on-detectors`` table, in its order: BIM, then the attacks made against a detector."""


def attacks_table(results: RunResults) -> str:
    """Per detector, a table of the attack sets made by :data:`STRONG_ATTACKS` (in that order) and its worst case
    over every attack set of the run: the set, the detector it attacked, n, successes (on target, or fooled where
    untargeted), detection rate and undetected success by the detector's rule, and SR@N at each calibrated FPR."""
    targets = results.fpr_targets
    header = ["set", "attack", "attacked detector", "n", "detection (rule)", "undetected (rule)",
              *(f"SR@{100 * t:g}%" for t in targets)]
    order = {name: k for k, name in enumerate(STRONG_ATTACKS)}
    blocks = []
    for detector in results.detector_names:
        sets = [s for s in results.attacks_of(detector)
                if (results.attack_sets.get(s.name) or {}).get("attack") in order]
        sets.sort(key=lambda s: (order[results.attack_sets[s.name]["attack"]], s.name))
        worst = results.worst_case_of(detector)
        lines = [f"**{detector}**", "", "| " + " | ".join(header) + " |",
                 "| --- | --- | --- |" + " ---: |" * (len(header) - 3)]
        for s in [*sets, *([worst] if worst else [])]:
            name, attack = (f"worst case ({worst.n} faces, all sets)", "-") if s.worst_case else (
                s.name, results.attack_sets[s.name]["attack"])
            cells = [name, attack, results.attacked_detector(s.name) or "-", str(s.n), s.rate_text(),
                     s.undetected_text(), *(s.success_at_text(t) for t in targets)]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def attack_params(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per attack set of the run in ``run_dir``, its ``params`` as the run composed them (``.hydra/config.yaml``,
    written by Hydra beside ``results.json``; interpolations left unresolved). SystemExit when the file is missing."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; the orthogonal-projection table reads each set's params from the Hydra "
                         "config of an ami-eval / ami-run folder")
    attacks = OmegaConf.load(path).get("attacks") or {}
    return {str(name): OmegaConf.to_container(node.get("params") or {}) for name, node in attacks.items()}


PROJECTION_ATTACKS = ("bim", "selective_pgd", "orthogonal_pgd")
"""The attacks of the ``orthogonal-projection`` table, in its order: BIM, selective PGD, orthogonal PGD."""


def _projection_rows(results: RunResults, params: dict[str, dict[str, Any]], detector: str) -> list[tuple]:
    """((attack order, projection order), set, attack, project) of the table's rows for ``detector``, sorted."""
    default = inspect.signature(OrthogonalPGD).parameters["project"].default
    rows = []
    for s in results.attacks_of(detector):
        attack = (results.attack_sets.get(s.name) or {}).get("attack")
        if attack not in PROJECTION_ATTACKS or (attack != "bim" and results.attacked_detector(s.name) != detector):
            continue
        project = str(params.get(s.name, {}).get("project", default)) if attack == "orthogonal_pgd" else "-"
        order = (PROJECTION_ATTACKS.index(attack), PROJECTIONS.index(project) if project in PROJECTIONS else 0)
        rows.append((order, s, attack, project))
    return sorted(rows, key=lambda row: (row[0], row[1].name))


def projection_table(results: RunResults, params: dict[str, dict[str, Any]]) -> str:
    """Per detector: BIM, then the selective and orthogonal PGD sets made against that detector, the orthogonal ones
    in the order of :data:`~ami_lightning.attacks.detector_pgd.PROJECTIONS`, each with its ``project`` (from
    ``params``, set -> params; the attack's default when a set gives none), n, undetected success by the detector's
    rule and SR@N at each calibrated FPR, with 95 % Wilson intervals."""
    targets = results.fpr_targets
    header = ["detector", "set", "attack", "project", "n", "undetected (rule)", *(f"SR@{100 * t:g}%" for t in targets)]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | --- | --- |" + " ---: |" * (len(header) - 4)]
    for detector in results.detector_names:
        for _, s, attack, project in _projection_rows(results, params, detector):
            cells = [detector, s.name, attack, project, str(s.n), s.undetected_text(),
                     *(s.success_at_text(t) for t in targets)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def projection_findings(results: RunResults, params: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per detector with two or more orthogonal PGD sets against it: whether the 95 % Wilson intervals
    of their undetected success (rule) overlap (no projection told apart from another at this n) or which pairs are
    disjoint (the set whose interval lies higher named first)."""
    sentences = []
    for detector in results.detector_names:
        rows = [(s, project) for _, s, attack, project in _projection_rows(results, params, detector)
                if attack == "orthogonal_pgd"]
        if len(rows) < 2:
            continue
        sizes = "/".join(sorted({str(s.n) for s, _ in rows}, key=int))
        apart = []
        for (a, pa), (b, pb) in combinations(rows, 2):
            (a_low, a_high), (b_low, b_high) = a.undetected_ci(), b.undetected_ci()
            if a_low > b_high or b_low > a_high:
                (hi, p_hi), (lo, p_lo) = ((a, pa), (b, pb)) if a_low > b_high else ((b, pb), (a, pa))
                apart.append(f"`{hi.name}` ({p_hi}) above `{lo.name}` ({p_lo})")
        if apart:
            sentences.append(f"Against {detector} (n = {sizes}), undetected success (rule) tells projections apart: "
                             f"{'; '.join(apart)} (disjoint 95 % intervals); the other pairs overlap.")
        else:
            sentences.append(f"Against {detector} (n = {sizes}), the 95 % intervals of undetected success (rule) of "
                             f"the {len(rows)} orthogonal sets ({', '.join(p for _, p in rows)}) overlap: no "
                             "projection is told apart from another.")
    return sentences


def slim_results(data: dict[str, Any]) -> dict[str, Any]:
    """A run's ``results.json`` without what no table renders: each set's ROC points, ``extra.skipped_files`` (the
    count ``extra.skipped`` stays) and the fit sets' file lists (``detectors.<name>.fit_set.files``)."""
    out = dict(data)
    out["sets"] = [{k: v for k, v in s.items() if k not in ("roc_fpr", "roc_tpr")} for s in data.get("sets", [])]
    if isinstance(out.get("extra"), dict):
        out["extra"] = {k: v for k, v in out["extra"].items() if k != "skipped_files"}
    if isinstance(out.get("detectors"), dict):
        detectors = {}
        for name, described in out["detectors"].items():
            if isinstance(described, dict) and isinstance(described.get("fit_set"), dict):
                described = {**described, "fit_set": {k: v for k, v in described["fit_set"].items() if k != "files"}}
            detectors[name] = described
        out["detectors"] = detectors
    return out


def stored_copy(kind: str, run_dir: Path) -> dict[str, Any]:
    """What ``docs/results/<block>.json`` keeps of ``run_dir`` for a block of ``kind``: under :data:`META` the kind,
    the folder and, for ``orthogonal-projection``, each set's params; then the run's ``results.json``
    (:func:`slim_results` for an evaluation run, whole for the others)."""
    if kind not in KINDS:
        raise SystemExit(f"unknown table kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = run_dir / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; a {kind} block is written from the results.json of its run folder")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    meta: dict[str, Any] = {"kind": kind, "source": str(run_dir)}
    if kind in RUN_KINDS:
        data = slim_results(data)
        if kind == "orthogonal-projection":
            meta["attack_params"] = attack_params(run_dir)
    return {META: meta, **{k: v for k, v in data.items() if k != META}}


def dump_copy(data: dict[str, Any]) -> str:
    """``data`` as strict JSON, one line per top-level key and, for a list or object value, one line per element
    (a set, a detector, ...): small, and a rerun's diff shows which sets changed."""

    def one(value: Any) -> str:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)

    entries = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            inner = ",\n".join(f"  {one(v)}" for v in value)
            entries.append(f" {one(key)}: [\n{inner}\n ]")
        elif isinstance(value, dict) and value:
            inner = ",\n".join(f"  {one(k)}: {one(v)}" for k, v in value.items())
            entries.append(f" {one(key)}: {{\n{inner}\n }}")
        else:
            entries.append(f" {one(key)}: {one(value)}")
    return "{\n" + ",\n".join(entries) + "\n}\n"


def _run_results(data: dict[str, Any]) -> RunResults:
    """``data`` (a run's results.json as a dict) read back by :func:`~ami_lightning.reporting.results.read_results`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "results.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        return read_results(path)


def render_stored(data: dict[str, Any]) -> str:
    """A block's content from its copy (:func:`stored_copy`): the table, the sentences generated with it and the
    line naming the command, commit and machine of the run."""
    meta = data.get(META) or {}
    kind = meta.get("kind")
    source = meta.get("source", "?")
    if kind in RUN_KINDS:
        results = _run_results({k: v for k, v in data.items() if k != META})
        if kind == "matrix":
            table = "\n".join(matrix_markdown(results))
            if "comparisons" not in data and len(results.detector_names) > 1:
                table += ("\n\nThis run's results.json predates the paired comparisons: no cell could be marked "
                          "`> x`, whatever the differences.")
        elif kind == "default-run":
            table = run_table(results)
        elif kind == "attacks-on-detectors":
            table = attacks_table(results)
        else:
            params = meta.get("attack_params") or {}
            table = "\n\n".join([projection_table(results, params), *projection_findings(results, params)])
        record = results.provenance
    elif kind == "calibration":
        table, record = calibration_markdown(data), data.get("provenance")
    elif kind in BENCHMARKS:
        table, record = BENCHMARKS[kind](data), data.get("provenance")
    else:
        raise SystemExit(f"unknown table kind {kind!r} (from {source}); expected one of {', '.join(KINDS)}")
    if not record:
        raise SystemExit(f"{source}/results.json records no provenance (command, commit, machine): rerun it with "
                         "this version")
    return f"{table}\n\nWritten by `scripts/readme_tables.py {kind}` from {describe(record)}."


def render(kind: str, run_dir: Path) -> str:
    """The content of a ``kind`` block written from ``run_dir`` (rendered from what its copy would keep)."""
    return render_stored(stored_copy(kind, run_dir))


# ---- documents and blocks ----------------------------------------------------------------------------------------
OPENING = re.compile(r"^<!-- results:([A-Za-z0-9_.-]+) -->$", re.M)


def documents(root: Path) -> list[Path]:
    """The files that may hold blocks: ``root/README.md`` and ``root/docs/*.md``."""
    readme = [root / "README.md"] if (root / "README.md").is_file() else []
    return readme + sorted((root / "docs").glob("*.md"))


def _pattern(name: str) -> re.Pattern[str]:
    """Block ``name``: its opening marker alone on a line, its content, its closing marker at a line's start."""
    return re.compile(rf"^(<!-- results:{re.escape(name)} -->\n)(.*?)^(<!-- /results:{re.escape(name)} -->)",
                      re.S | re.M)


def blocks_of(files: list[Path]) -> dict[str, list[Path]]:
    """Block name -> the files that hold it (each name should have exactly one)."""
    found: dict[str, list[Path]] = {}
    for path in files:
        for name in OPENING.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(path)
    return found


def locate(name: str, files: list[Path]) -> Path:
    """The one file of ``files`` holding block ``name``; SystemExit when none or several do."""
    holders = blocks_of(files).get(name, [])
    if not holders:
        searched = ", ".join(str(path) for path in files) or "no file"
        raise SystemExit(f"no document has block <!-- results:{name} --> ... <!-- /results:{name} --> "
                         f"(searched: {searched})")
    if len(holders) > 1:
        raise SystemExit(f"block {name} is in {len(holders)} files ({', '.join(map(str, holders))}); a block lives "
                         "in exactly one")
    return holders[0]


def block_content(text: str, name: str) -> str | None:
    """What block ``name`` of ``text`` holds (without the newline before its closing marker); None without it."""
    match = _pattern(name).search(text)
    return None if match is None else match.group(2).removesuffix("\n")


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` holding ``content``; SystemExit when ``text`` has no such block."""
    pattern = _pattern(name)
    if not pattern.search(text):
        raise SystemExit(f"no block <!-- results:{name} --> ... <!-- /results:{name} --> here")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(3), text, count=1)


def _tables(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Written by `scripts/readme_tables.py")]


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def write_block(kind: str, run_dir: Path, block: str, root: Path, files: list[Path]) -> Path:
    """Copy ``run_dir``'s figures to ``root/docs/results/<block>.json`` and write block ``block`` from that copy
    into the file of ``files`` that holds it; returns that file."""
    target = locate(block, files)
    data = stored_copy(kind, run_dir)
    content = render_stored(data)
    copy = root / RESULTS_DIR / f"{block}.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(dump_copy(data), encoding="utf-8")
    target.write_text(replace_block(target.read_text(encoding="utf-8"), block, content), encoding="utf-8")
    print(f"{_shown(target, root)}: block {block} written from {run_dir} (kept in {_shown(copy, root)})")
    return target


def check_all(root: Path, files: list[Path]) -> int:
    """Re-render every block that has a copy under ``root/docs/results/`` and compare it with the text; 1 (with a
    diff per block) when any differs, a copy has no block, or a block name is in several files; 0 otherwise. The
    blocks without a copy are listed."""
    found = blocks_of(files)
    copies = sorted((root / RESULTS_DIR).glob("*.json"))
    failures: list[str] = []
    for name, holders in found.items():
        if len(holders) > 1:
            failures.append(f"block {name} is in {len(holders)} files: {', '.join(_shown(p, root) for p in holders)}")
    for copy in copies:
        name = copy.stem
        holders = found.get(name, [])
        if len(holders) != 1:
            if not holders:
                failures.append(f"{_shown(copy, root)}: no document has block <!-- results:{name} -->")
            continue
        text = holders[0].read_text(encoding="utf-8")
        current = block_content(text, name)
        if current is None:
            failures.append(f"{_shown(holders[0], root)}: block {name} has no closing <!-- /results:{name} -->")
            continue
        expected = render_stored(json.loads(copy.read_text(encoding="utf-8")))
        if current != expected:
            diff = difflib.unified_diff(current.splitlines(), expected.splitlines(), lineterm="",
                                        fromfile=f"{_shown(holders[0], root)} (block {name})",
                                        tofile=f"rendered from {_shown(copy, root)}")
            failures.append(f"block {name} differs from {_shown(copy, root)}:\n" + "\n".join(diff))
    checked = [copy.stem for copy in copies if copy.stem in found]
    uncovered = sorted(name for name in found if not (root / RESULTS_DIR / f"{name}.json").is_file())
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"checked {len(checked)} blocks against {RESULTS_DIR}/: {', '.join(checked) or 'none'}; "
          f"{len(failures)} problems")
    if uncovered:
        print(f"not covered (no {RESULTS_DIR}/<block>.json): {', '.join(uncovered)}")
    return 1 if failures else 0


def rewrite_all(root: Path, files: list[Path]) -> int:
    """Write every block that has a copy under ``root/docs/results/`` from that copy (after a deliberate change of
    the code that renders a kind, when the run folders are gone); 1 when a copy has no block or several, else 0."""
    found = blocks_of(files)
    status = 0
    for copy in sorted((root / RESULTS_DIR).glob("*.json")):
        holders = found.get(copy.stem, [])
        if len(holders) != 1:
            print(f"{_shown(copy, root)}: block {copy.stem} is in {len(holders)} files; expected one", file=sys.stderr)
            status = 1
            continue
        text = holders[0].read_text(encoding="utf-8")
        content = render_stored(json.loads(copy.read_text(encoding="utf-8")))
        new = replace_block(text, copy.stem, content)
        if new != text:
            holders[0].write_text(new, encoding="utf-8")
            print(f"{_shown(holders[0], root)}: block {copy.stem} rewritten from {_shown(copy, root)}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", nargs="?", choices=KINDS, help="the kind of table (none: with --check, every block)")
    parser.add_argument("run_dir", nargs="?", type=Path, help="the run folder holding results.json")
    parser.add_argument("--block", help="block name (default: the kind)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the repository: README.md and docs/*.md hold the blocks, docs/results/ the copies")
    parser.add_argument("--readme", type=Path,
                        help="the one file holding the block (its folder is then the root)")
    parser.add_argument("--check", action="store_true",
                        help="alone: re-render every block from docs/results/ and exit 1 on any difference; with "
                             "KIND RUN_DIR: compare that block's tables (not its provenance line) with the run")
    parser.add_argument("--rewrite", action="store_true",
                        help="alone: write every block from its docs/results/ copy (after a deliberate change of the "
                             "code that renders it)")
    args = parser.parse_args(argv)
    root = args.readme.resolve().parent if args.readme else args.root.resolve()
    files = [args.readme.resolve()] if args.readme else documents(root)
    if args.kind is None:
        if args.check == args.rewrite or args.run_dir is not None or args.block:
            parser.error("give KIND RUN_DIR to write a block, or --check or --rewrite alone for every block")
        return check_all(root, files) if args.check else rewrite_all(root, files)
    if args.rewrite:
        parser.error("--rewrite takes no KIND RUN_DIR: it writes every block from its docs/results/ copy")
    if args.run_dir is None:
        parser.error(f"{args.kind}: give the run folder holding results.json")
    block = args.block or args.kind
    if args.check:  # the tables must match; the provenance line names another run
        target = locate(block, files)
        text = target.read_text(encoding="utf-8")
        if _tables(replace_block(text, block, render(args.kind, args.run_dir))) != _tables(text):
            print(f"{target}: block {block} differs from {args.run_dir}", file=sys.stderr)
            return 1
        return 0
    write_block(args.kind, args.run_dir, block, root, files)
    if block == args.kind:
        present = blocks_of(files)
        for companion in COMPANIONS.get(args.kind, ()):
            if companion in present:
                write_block(companion, args.run_dir, companion, root, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
