"""Write the README's tables of figures from the runs that produced them, with the command, commit and machine.

Each table sits in README.md between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; this script replaces
what is between the markers by the table rendered from a run folder's ``results.json`` and a line naming the
command, the commit and the machine recorded there (:mod:`ami_lightning.pipeline.provenance`). Usage (repository root)::

    .venv/bin/ami-run                                    # or any run whose table the README shows
    python -m scripts.readme_tables default-run logs/run/<stamp>
    python -m scripts.readme_tables attacks-on-detectors logs/run/<stamp>
    .venv/bin/ami-calibrate
    python -m scripts.readme_tables calibration logs/calibrate/<stamp>
    python -m scripts.readme_tables default-run logs/run/<stamp> --check   # exit 1 if the README differs
    python -m scripts.bench_distributed --out logs/bench_distributed
    python -m scripts.readme_tables distributed logs/bench_distributed

Kinds of table: ``default-run`` (any ``ami-run`` / ``ami-eval`` results), ``attacks-on-detectors`` (the same
results, per detector: BIM and the attacks made to evade detectors, with SR@N, and the worst case over every set),
``calibration`` (``ami-calibrate``) and ``distributed`` (``scripts/bench_distributed.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ami_lightning.cli.calibrate import calibration_markdown
from ami_lightning.pipeline.provenance import describe
from ami_lightning.reporting.results import RunResults, read_results
from scripts.bench_distributed import distributed_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
KINDS = ("default-run", "attacks-on-detectors", "calibration", "distributed")


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


def render(kind: str, run_dir: Path) -> str:
    """The block's new content: the table of ``run_dir`` and its provenance line."""
    path = run_dir / "results.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if kind in ("default-run", "attacks-on-detectors"):
        results = read_results(path)
        table = run_table(results) if kind == "default-run" else attacks_table(results)
        record = results.provenance
    elif kind == "calibration":
        table, record = calibration_markdown(data), data.get("provenance")
    elif kind == "distributed":
        table, record = distributed_markdown(data), data.get("provenance")
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
