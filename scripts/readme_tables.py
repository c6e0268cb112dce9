"""Write the README's tables of figures from the runs that produced them, with the command, commit and machine.

Each table sits in README.md between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; this script replaces
what is between the markers by the table rendered from a run folder's ``results.json`` and a line naming the
command, the commit and the machine recorded there (:mod:`ami_lightning.pipeline.provenance`). Usage (repository root)::

    .venv/bin/ami-run                                    # or any run whose table the README shows
    python -m scripts.readme_tables default-run logs/run/<stamp>
    python -m scripts.readme_tables attacks-on-detectors logs/run/<stamp>
    python -m scripts.readme_tables orthogonal-projection logs/eval/<stamp>   # the ami-eval run of its README prose
    .venv/bin/ami-calibrate
    python -m scripts.readme_tables calibration logs/calibrate/<stamp>
    python -m scripts.readme_tables default-run logs/run/<stamp> --check   # exit 1 if the README differs
    python -m scripts.bench_distributed --out logs/bench_distributed
    python -m scripts.readme_tables distributed logs/bench_distributed
    python -m scripts.bench_main_job --out logs/bench_main_job
    python -m scripts.readme_tables main-job logs/bench_main_job
    python -m scripts.bench_detector --out logs/bench_detector
    python -m scripts.readme_tables detector-speed logs/bench_detector

Kinds of table: ``default-run`` (any ``ami-run`` / ``ami-eval`` results), ``attacks-on-detectors`` (the same
results, per detector: BIM and the attacks made to evade detectors, with SR@N, and the worst case over every set),
``orthogonal-projection`` (the same results, per detector: BIM, selective PGD and each orthogonal PGD set against it
with its ``project``, read from the run's ``.hydra/config.yaml``), ``calibration`` (``ami-calibrate``),
``distributed`` (``scripts/bench_distributed.py``), ``main-job`` (``scripts/bench_main_job.py``: the main job and the
smoke run, cold and warm) and ``detector-speed`` (``scripts/bench_detector.py``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ami_lightning.attacks.detector_pgd import PROJECTIONS, OrthogonalPGD
from ami_lightning.cli.calibrate import calibration_markdown
from ami_lightning.pipeline.provenance import describe
from ami_lightning.reporting.results import RunResults, read_results
from scripts.bench_detector import detector_speed_markdown
from scripts.bench_distributed import distributed_markdown
from scripts.bench_main_job import main_job_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
KINDS = ("default-run", "attacks-on-detectors", "orthogonal-projection", "calibration", "distributed", "main-job",
         "detector-speed")
BENCHMARKS = {"distributed": distributed_markdown, "main-job": main_job_markdown,
              "detector-speed": detector_speed_markdown}
"""The kinds written from a benchmark script's ``--out DIR/results.json``: its renderer."""


def run_table(results: RunResults) -> str:
    """The README's table of an evaluation run: one row per detector and set, grouped by detector (its benign FPR
    row, then its attack sets), naming the detector an adaptive set attacked (``-`` for the others); rates with
    their counts and 95 % Wilson intervals, AUROC with its bootstrap interval, detection at each calibrated FPR and
    undetected success."""
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


def projection_table(results: RunResults, params: dict[str, dict[str, Any]]) -> str:
    """Per detector: BIM, then the selective and orthogonal PGD sets made against that detector, the orthogonal ones
    in the order of :data:`~ami_lightning.attacks.detector_pgd.PROJECTIONS`, each with its ``project`` (from
    ``params``, set -> params; the attack's default when a set gives none), n, undetected success by the detector's
    rule and SR@N at each calibrated FPR, with 95 % Wilson intervals."""
    targets = results.fpr_targets
    default = inspect.signature(OrthogonalPGD).parameters["project"].default
    header = ["detector", "set", "attack", "project", "n", "undetected (rule)", *(f"SR@{100 * t:g}%" for t in targets)]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | --- | --- |" + " ---: |" * (len(header) - 4)]
    for detector in results.detector_names:
        rows = []
        for s in results.attacks_of(detector):
            attack = (results.attack_sets.get(s.name) or {}).get("attack")
            if attack not in PROJECTION_ATTACKS or (attack != "bim" and results.attacked_detector(s.name) != detector):
                continue
            project = str(params.get(s.name, {}).get("project", default)) if attack == "orthogonal_pgd" else "-"
            order = (PROJECTION_ATTACKS.index(attack), PROJECTIONS.index(project) if project in PROJECTIONS else 0)
            cells = [detector, s.name, attack, project, str(s.n), s.undetected_text(),
                     *(s.success_at_text(t) for t in targets)]
            rows.append((order, s.name, "| " + " | ".join(cells) + " |"))
        lines += [line for _, _, line in sorted(rows)]
    return "\n".join(lines)


def render(kind: str, run_dir: Path) -> str:
    """The block's new content: the table of ``run_dir`` and its provenance line."""
    path = run_dir / "results.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if kind in ("default-run", "attacks-on-detectors", "orthogonal-projection"):
        results = read_results(path)
        if kind == "orthogonal-projection":
            table = projection_table(results, attack_params(run_dir))
        else:
            table = run_table(results) if kind == "default-run" else attacks_table(results)
        record = results.provenance
    elif kind == "calibration":
        table, record = calibration_markdown(data), data.get("provenance")
    elif kind in BENCHMARKS:
        table, record = BENCHMARKS[kind](data), data.get("provenance")
    else:
        raise SystemExit(f"unknown table kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not record:
        raise SystemExit(f"{path} records no provenance (command, commit, machine): rerun it with this version")
    return f"{table}\n\nWritten by `scripts/readme_tables.py {kind}` from {describe(record)}."


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` holding ``content``; SystemExit when the README has no such block."""
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no block <!-- results:{name} --> ... <!-- /results:{name} -->")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text, count=1)


def _tables(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Written by `scripts/readme_tables.py")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("run_dir", type=Path, help="the run folder holding results.json")
    parser.add_argument("--block", help="README block name (default: the kind)")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check", action="store_true",
                        help="compare the tables only (not the provenance line); exit 1 when the README differs")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = replace_block(text, args.block or args.kind, render(args.kind, args.run_dir))
    if args.check:  # the tables must match; the provenance line names another run
        if _tables(new) != _tables(text):
            print(f"{args.readme}: block {args.block or args.kind} differs from {args.run_dir}", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: block {args.block or args.kind} written from {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
