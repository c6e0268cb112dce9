"""scripts/readme_tables.py: the tables of README.md and docs/*.md are written from run folders, with command, commit
and machine; each run's figures are kept in docs/results/<block>.json, from which ``--check`` re-renders every block."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from ami_lightning.evaluation.paired import PairedComparison
from ami_lightning.evaluation.thresholds import OperatingPoint
from ami_lightning.pipeline.provenance import provenance
from ami_lightning.reporting.results import RunResults, SetResult, write_results
from scripts import bench_tests, readme_tables

ROOT = Path(__file__).resolve().parents[1]


def _run_dir(tmp_path: Path, flagged: int = 7) -> Path:
    """A run of two detectors on the benign set, fgsm and an adaptive set attacking feature_squeezing."""
    results = RunResults(
        sets=[SetResult("ami", "benign", False, n=40, eligible=38, flagged=4),
              SetResult("ami", "fgsm", True, n=8, eligible=8, flagged=flagged, auroc=0.91, auroc_ci=(0.8, 0.97)),
              SetResult("ami", "adaptive_fs", True, n=6, eligible=5, flagged=5),
              SetResult("feature_squeezing", "benign", False, n=40, eligible=38, flagged=2),
              SetResult("feature_squeezing", "fgsm", True, n=8, eligible=8, flagged=3, auroc=0.7),
              SetResult("feature_squeezing", "adaptive_fs", True, n=6, eligible=5, flagged=1)],
        model="dlib_resnet",
        detectors={"ami": {"type": "ami", "params": {"weaken": 1000.0, "strengthen": [2.15, 200.0]}},
                   "feature_squeezing": {"type": "feature_squeezing", "params": {}}},
        attack_sets={"fgsm": {"attack": "fgsm", "detector": None},
                     "adaptive_fs": {"attack": "adaptive_gradient", "detector": "feature_squeezing"}},
        provenance=provenance(["ami-run", "ami.weaken=1000"]),
    )
    write_results(results, tmp_path / "run")
    return tmp_path / "run"


def _readme(tmp_path: Path) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n\n<!-- results:default-run -->\nold table\n"
                      "<!-- /results:default-run -->\n\nafter\n")
    return readme


def test_block_is_written_from_the_run_with_its_provenance(tmp_path: Path) -> None:
    readme = _readme(tmp_path)
    assert readme_tables.main(["default-run", str(_run_dir(tmp_path)), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n<!-- results:default-run -->\n"
                           "| detector | set | attacked detector | n | eligible | rate (FPR / detection) | AUROC |")
    assert text.endswith("<!-- /results:default-run -->\n\nafter\n") and "old table" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[:3] for row in rows[2:]] == [
        ["| ami", "benign (FPR)", "-"], ["| ami", "fgsm", "-"], ["| ami", "adaptive_fs", "feature_squeezing"],
        ["| feature_squeezing", "benign (FPR)", "-"], ["| feature_squeezing", "fgsm", "-"],
        ["| feature_squeezing", "adaptive_fs", "feature_squeezing"]]  # grouped by detector
    fgsm = SetResult("ami", "fgsm", True, n=8, eligible=8, flagged=7, auroc=0.91, auroc_ci=(0.8, 0.97))
    assert f"| ami | fgsm | - | 8 | 8 | {fgsm.rate_text()} | 0.910 [0.800, 0.970] | 12.50 % (1/8) [" in text
    assert "| ami | benign (FPR) | - | 40 | 38 | 10.53 % (4/38) [" in text
    assert "| feature_squeezing | benign (FPR) | - | 40 | 38 | 5.26 % (2/38) [" in text
    assert "| feature_squeezing | adaptive_fs | feature_squeezing | 6 | 5 | 20.00 % (1/5) [" in text
    commit = (provenance()["git"] or {}).get("commit", "unknown")[:7]
    assert f"Written by `scripts/readme_tables.py default-run` from `ami-run ami.weaken=1000` at commit `{commit}" \
        in text  # followed by " +uncommitted changes" in a dirty tree


def test_an_empty_block_is_filled(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:default-run -->\n<!-- /results:default-run -->\nb\n")
    readme_tables.main(["default-run", str(_run_dir(tmp_path)), "--readme", str(readme)])
    assert readme.read_text().startswith("a\n<!-- results:default-run -->\n| detector | set |")
    assert readme.read_text().endswith(".\n<!-- /results:default-run -->\nb\n")


def test_check_compares_the_tables_not_the_provenance(tmp_path: Path) -> None:
    readme = _readme(tmp_path)
    readme_tables.main(["default-run", str(_run_dir(tmp_path)), "--readme", str(readme)])
    same = _run_dir(tmp_path / "again")
    assert readme_tables.main(["default-run", str(same), "--readme", str(readme), "--check"]) == 0
    other = _run_dir(tmp_path / "other", flagged=6)
    assert readme_tables.main(["default-run", str(other), "--readme", str(readme), "--check"]) == 1


def test_errors_name_the_missing_block_and_provenance(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no blocks\n")
    with pytest.raises(SystemExit, match="no document has block <!-- results:default-run -->"):
        readme_tables.main(["default-run", str(_run_dir(tmp_path)), "--readme", str(readme)])
    old = _run_dir(tmp_path / "old")
    text = (old / "results.json").read_text()
    (old / "results.json").write_text(text.replace('"provenance": {', '"provenance_gone": {'))
    with pytest.raises(SystemExit, match="records no provenance"):
        readme_tables.main(["default-run", str(old), "--readme", str(_readme(tmp_path))])


def test_the_readme_tables_are_written_by_the_script() -> None:
    """The README's headline matrix and the docs' main tables hold a table (or sentence) and the line naming the run
    that produced them, each in exactly one file of README.md and docs/*.md."""
    files = readme_tables.documents(ROOT)
    assert ROOT / "README.md" in files and ROOT / "docs" / "results.md" in files
    found = readme_tables.blocks_of(files)
    assert all(len(holders) == 1 for holders in found.values()), found
    where = {"matrix": "README.md", "main-job-summary": "README.md", "default-run": "docs/results.md",
             "attacks-on-detectors": "docs/results.md", "orthogonal-projection": "docs/results.md",
             "benchmark": "docs/results.md", "calibration": "docs/detectors.md", "main-job": "docs/benchmarks.md",
             "distributed": "docs/benchmarks.md", "detector-speed": "docs/benchmarks.md", "test-time": "README.md"}
    for name, path in where.items():
        assert found[name] == [ROOT / path], name
    for name in ("matrix", "main-job-summary", "default-run", "calibration"):
        block = readme_tables.block_content((ROOT / where[name]).read_text(), name)
        assert block.startswith(("| ", "Top-1", "Each cell", "Wall time")), name
        assert f"Written by `scripts/readme_tables.py {name}` from `" in block
    # the blocks gpu_check.sh writes exist, so that its table steps find them
    for name in ("benchmark-gpu", "detector-speed-gpu", "adaptive-gpu"):
        assert name in found and name in (ROOT / "scripts" / "gpu_check.sh").read_text()


def test_a_single_detector_results_file_renders_as_ami(tmp_path: Path) -> None:
    """A results.json written before runs had several detectors (AmI's parameters at the top, sets without
    ``detector``) still renders: every row is ami's, no set attacked a detector."""
    run = _run_dir(tmp_path)
    data = json.loads((run / "results.json").read_text())
    data["sets"] = [s for s in data["sets"] if s.pop("detector") == "ami"]
    del data["detectors"], data["attack_sets"]
    data["weaken"], data["strengthen"] = 1000.0, [2.15, 200.0]
    (run / "results.json").write_text(json.dumps(data))
    table = readme_tables.render("default-run", run).split("\n\nWritten by")[0]
    assert [line.split(" | ")[:3] for line in table.splitlines()[2:]] == [
        ["| ami", "benign (FPR)", "-"], ["| ami", "fgsm", "-"], ["| ami", "adaptive_fs", "-"]]


def test_attacks_on_detectors_table_per_detector_with_the_worst_case(tmp_path: Path) -> None:
    points = [OperatingPoint(0.05, 2.0, 0.05, 1, 4), OperatingPoint(0.5, 1.0, 0.5, 3, 2)]
    results = RunResults(
        sets=[SetResult("ami", "benign", False, n=40, eligible=38, flagged=4),
              SetResult("ami", "orthogonal_ami", True, n=8, eligible=8, flagged=1, operating_points=points),
              SetResult("ami", "fgsm", True, n=8, eligible=8, flagged=7),
              SetResult("ami", "bim", True, n=8, eligible=6, flagged=5, operating_points=points),
              SetResult("ami", "worst_case", True, n=8, eligible=8, flagged=0, operating_points=points,
                        worst_case=True)],
        model="dlib_resnet", detectors={"ami": {"type": "ami"}},
        attack_sets={"orthogonal_ami": {"attack": "orthogonal_pgd", "detector": "ami"},
                     "fgsm": {"attack": "fgsm", "detector": None}, "bim": {"attack": "bim", "detector": None}},
        provenance=provenance(["ami-run"]))
    write_results(results, tmp_path / "run")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:attacks-on-detectors -->\n<!-- /results:attacks-on-detectors -->\n")
    assert readme_tables.main(["attacks-on-detectors", str(tmp_path / "run"), "--readme", str(readme)]) == 0
    lines = readme.read_text().splitlines()
    assert lines[1] == "**ami**"
    assert lines[3] == ("| set | attack | attacked detector | n | detection (rule) | undetected (rule) | SR@5% "
                        "| SR@50% |")
    rows = [line.split(" | ") for line in lines[5:8]]
    assert [row[:4] for row in rows] == [["| bim", "bim", "-", "8"],
                                         ["| orthogonal_ami", "orthogonal_pgd", "ami", "8"],
                                         ["| worst case (8 faces, all sets)", "-", "-", "8"]]  # fgsm left out
    assert rows[1][5].startswith("87.50 % (7/8)") and rows[1][6].startswith("50.00 % (4/8)")
    assert rows[2][4].startswith("0.00 % (0/8)") and rows[2][7].startswith("25.00 % (2/8)")


def test_distributed_block_from_the_benchmark(tmp_path: Path) -> None:
    """The speed-up table of scripts/bench_distributed.py: one row per side, the ratio against the ideal."""
    run = tmp_path / "bench"
    run.mkdir()
    sides = {"1 process": {"set_seconds": 30.0, "command_seconds": 41.5, "processes": 1, "threads": 2},
             "2 processes": {"set_seconds": 20.0, "command_seconds": 33.25, "processes": 2, "threads": 1}}
    (run / "results.json").write_text(json.dumps({
        "accelerator": "cpu", "faces": 8, "batch_size": 2, "steps": 100, "binary_search_steps": 1, "ratio": 1.5,
        "ideal": 2, "byte_identical": False, "success_equal": True, "sides": sides,
        "provenance": provenance(["python", "-m", "scripts.bench_distributed"])}))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:distributed -->\n<!-- /results:distributed -->\n")
    assert readme_tables.main(["distributed", str(run), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| 1 | 30.0 | 41.5 | 2 |\n| 2 | 20.0 | 33.2 | 1 |" in text
    assert "Speed-up 1.50x of an ideal 2x (75%); files byte-identical: no; success flags equal: yes." in text
    assert "Written by `scripts/readme_tables.py distributed` from `python -m scripts.bench_distributed`" in text


def test_orthogonal_projection_table_names_each_sets_projection(tmp_path: Path) -> None:
    """Per detector: BIM, the selective and orthogonal sets made against it (orthogonal: ``project`` from the run's
    Hydra config, in the order both, off_target, on_target; the attack's default ``both`` when a set gives none),
    each with undetected success and SR@N; sets made against another detector and other attacks left out."""
    points = [OperatingPoint(0.05, 2.0, 0.05, 1, 4), OperatingPoint(0.5, 1.0, 0.5, 3, 2)]
    sets = {"orthogonal_ami_on": ("orthogonal_pgd", "ami", 2), "fgsm": ("fgsm", None, 7),
            "orthogonal_ami_default": ("orthogonal_pgd", "ami", 3), "selective_ami": ("selective_pgd", "ami", 4),
            "orthogonal_fs": ("orthogonal_pgd", "feature_squeezing", 5), "bim": ("bim", None, 6),
            "orthogonal_ami_off": ("orthogonal_pgd", "ami", 1)}
    results = RunResults(
        sets=[SetResult("ami", "benign", False, n=40, eligible=38, flagged=4),
              *(SetResult("ami", name, True, n=8, eligible=8, flagged=flagged, operating_points=points)
                for name, (_, _, flagged) in sets.items())],
        model="dlib_resnet", detectors={"ami": {"type": "ami"}},
        attack_sets={name: {"attack": attack, "detector": detector} for name, (attack, detector, _) in sets.items()},
        provenance=provenance(["ami-eval"]))
    run = tmp_path / "run"
    write_results(results, run)
    with pytest.raises(SystemExit, match=r"\.hydra/config\.yaml: missing"):
        readme_tables.render("orthogonal-projection", run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "paths: {output_dir: '${hydra:runtime.output_dir}'}\nattacks:\n"
        "  orthogonal_ami_on: {name: orthogonal_pgd, detector: ami, params: {eps: 2.5, project: on_target}}\n"
        "  orthogonal_ami_off: {name: orthogonal_pgd, detector: ami, params: {project: off_target}}\n"
        "  orthogonal_ami_default: {name: orthogonal_pgd, detector: ami, params: {eps: 2.5}}\n"
        "  bim: {name: bim, params: {eps: 8.0}}\n")
    rendered = readme_tables.render("orthogonal-projection", run).split("\n\nWritten by")[0].split("\n\n")
    table = rendered[0].splitlines()
    assert table[0] == "| detector | set | attack | project | n | undetected (rule) | SR@5% | SR@50% |"
    # one generated sentence per detector with two or more orthogonal sets: whether their intervals overlap
    assert rendered[1:] == ["Against ami (n = 8), the 95 % intervals of undetected success (rule) of the 3 orthogonal "
                            "sets (both, off_target, on_target) overlap: no projection is told apart from another."]
    rows = [line.split(" | ") for line in table[2:]]
    assert [row[1:4] for row in rows] == [["bim", "bim", "-"], ["selective_ami", "selective_pgd", "-"],
                                          ["orthogonal_ami_default", "orthogonal_pgd", "both"],
                                          ["orthogonal_ami_off", "orthogonal_pgd", "off_target"],
                                          ["orthogonal_ami_on", "orthogonal_pgd", "on_target"]]
    assert rows[3][5].startswith("87.50 % (7/8) [") and rows[0][5].startswith("25.00 % (2/8) [")
    assert rows[1][6].startswith("50.00 % (4/8) [") and rows[1][7].startswith("25.00 % (2/8) [")


def _benchmark_block(tmp_path: Path, kind: str, figures: dict) -> str:
    """The README block ``kind`` written by readme_tables from a benchmark's results.json holding ``figures``."""
    run = tmp_path / kind
    run.mkdir()
    (run / "results.json").write_text(json.dumps({**figures, "provenance": provenance(["bench"])}))
    readme = tmp_path / f"{kind}.md"
    readme.write_text(f"<!-- results:{kind} -->\n<!-- /results:{kind} -->\n")
    assert readme_tables.main([kind, str(run), "--readme", str(readme)]) == 0
    return readme.read_text()


def test_main_job_block_gives_each_runs_wall_time(tmp_path: Path) -> None:
    runs = {"main job, cold": {"command": "ami-run", "seconds": 331.4, "attack_seconds": 201.0, "run": "a"},
            "main job, warm": {"command": "ami-run", "seconds": 41.6, "attack_seconds": 0.0, "run": "b"},
            "smoke, cold": {"command": "ami-run experiment=smoke", "seconds": 59.4, "attack_seconds": 3.2, "run": "c"}}
    text = _benchmark_block(tmp_path, "main-job", {"runs": runs, "extra": []})
    assert "| main job | `ami-run` | empty | 5 min 31 s | 3 min 21 s |" in text
    assert "| main job | `ami-run` | warm | 42 s | 0 s |" in text
    assert "| smoke | `ami-run experiment=smoke` | empty | 59 s | 3 s |" in text
    assert "Written by `scripts/readme_tables.py main-job` from `bench`" in text


def test_detector_speed_block_gives_ratios_to_the_plain_forward(tmp_path: Path) -> None:
    part = {"label": "CPU, 2 threads",
            "detectors": {"plain": 40.0, "ami": 16.0, "feature_squeezing": 8.0, "feature_squeezing (before)": 5.0},
            "nlm_ms": {"150": {"one": 20.0, "pool": 11.0}, "224": {"one": 45.0, "pool": 24.5}},
            "ami_vgg": {"plain": 8.0, "ami": 4.0, "baseline": 2.0}}
    figures = {"batch_size": 8, "faces": 16, "images": 32, "weights": None, "devices": {"cpu": part},
               "channel_order": {"faces": 16, "nlm_values_differing": 0.645, "nlm_max_difference": 24.0,
                                 "score_min": 0.2, "score_max": 0.48, "score_max_difference": 0.049}}
    text = _benchmark_block(tmp_path, "detector-speed", figures)
    assert "| ami | 16.00 | 0.400 | 0.5 |" in text and "| feature_squeezing | 8.00 | 0.200 | 0.25 |" in text
    assert "Feature Squeezing now / before: 1.60x." in text
    # plain 25 ms per image: four forwards 100 ms, the fastest NLM at 224 px 24.5 ms -> 25 / 124.5
    assert ("four plain forwards (100.0 ms) and the fastest NLM at 224 px (24.5 ms) allow a ratio of at most "
            "0.201") in text
    assert "| 224 | 45.0 | 24.5 |" in text
    assert "| 8.00 | 4.00 | 2.00 | 0.500 | 2.00 |" in text
    assert "changes 64.5 % of the NLM output values, by up to 24 grey levels" in text


def test_test_time_block_gives_each_step_against_its_target(tmp_path: Path) -> None:
    steps = {"install": {"command": "bash scripts/install.sh", "seconds": 96.4, "target": None, "counts": {}},
             "every test": {"command": ".venv/bin/python -m pytest -m ''", "seconds": 431.6, "target": 480,
                            "counts": {"passed": 870, "skipped": 15, "xfailed": 1}},
             "fast subset": {"command": ".venv/bin/python -m pytest", "seconds": 59.5, "target": 120,
                             "counts": {"passed": 826, "deselected": 48}}}
    text = _benchmark_block(tmp_path, "test-time", {"steps": steps})
    assert "| install | `bash scripts/install.sh` | 1 min 36 s |  |  |" in text
    assert ("| every test | `.venv/bin/python -m pytest -m ''` | 7 min 12 s | at most 8 min 00 s | 870 passed, "
            "15 skipped, 1 xfailed |") in text
    assert ("| fast subset | `.venv/bin/python -m pytest` | 1 min 00 s | at most 2 min 00 s | 826 passed, "
            "48 deselected |") in text
    assert "Written by `scripts/readme_tables.py test-time` from `bench`" in text


def test_pytest_counts_read_the_closing_line() -> None:
    output = ("tests/test_a.py::test_x PASSED\n3 passed in 2.0s means nothing here\n"
              "== 826 passed, 15 skipped, 1 xfailed, 2 errors, 28 warnings in 101.42s (0:01:41) ==\n")
    assert bench_tests.pytest_counts(output) == {"passed": 826, "skipped": 15, "xfailed": 1, "errors": 2}
    assert bench_tests.pytest_counts("1 failed, 3 deselected in 1s\nno tests ran? no: done\n") == {
        "failed": 1, "deselected": 3}
    assert bench_tests.pytest_counts("nothing to count\n") == {}


def test_a_failing_step_stops_the_benchmark_with_its_output(tmp_path: Path) -> None:
    """A time of failing tests is no figure: the step's command, exit status and the end of its output are said."""
    command = [sys.executable, "-c", "print('3 failed'); raise SystemExit(3)"]
    with pytest.raises(SystemExit, match=r"(?s)-c .* failed in .* \(exit 3\):\n3 failed"):
        bench_tests.run_step(command, tmp_path, dict(os.environ))
    seconds, output = bench_tests.run_step([sys.executable, "-c", "print('ok')"], tmp_path, dict(os.environ))
    assert output == "ok\n" and seconds > 0


# ---- the copies under docs/results/ and the check without arguments ------------------------------------------------
def _repository_copy(tmp_path: Path) -> Path:
    """README.md and docs/ (with docs/results/) of the repository, copied to a temporary root."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "README.md", root / "README.md")
    shutil.copytree(ROOT / "docs", root / "docs")
    return root


def test_check_without_arguments_passes_on_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    """Every block of README.md and docs/*.md that has a docs/results/<block>.json is exactly what the script renders
    from it: no run folder needed, so a rerun on another machine cannot leave a table or a sentence behind."""
    assert readme_tables.main(["--check"]) == 0
    out = capsys.readouterr().out
    checked = out.split("against docs/results/: ", 1)[1].split(";", 1)[0].split(", ")
    assert {"matrix", "main-job-summary", "default-run", "attacks-on-detectors", "orthogonal-projection",
            "main-job", "distributed", "detector-speed"} <= set(checked)
    for copy in (ROOT / readme_tables.RESULTS_DIR).glob("*.json"):
        assert copy.stat().st_size < 250_000, copy  # small: no ROC points or file lists (the benchmark: ~210 KB)
        data = json.loads(copy.read_text())
        assert data[readme_tables.META]["kind"] in readme_tables.KINDS
        assert not any("roc_fpr" in s for s in data.get("sets", []))


def test_check_without_arguments_fails_on_an_edited_cell_with_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _repository_copy(tmp_path)
    assert readme_tables.main(["--check", "--root", str(root)]) == 0
    results = root / "docs" / "results.md"
    text = results.read_text()
    block = readme_tables.block_content(text, "default-run")
    row = next(line for line in block.splitlines() if line.startswith("| ami | fgsm |"))
    cells = row.split(" | ")
    cells[3] = str(int(cells[3]) + 1)  # n of one row, typed over by hand
    results.write_text(text.replace(row, " | ".join(cells)))
    capsys.readouterr()
    assert readme_tables.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "block default-run differs from docs/results/default-run.json" in err
    assert f"-{' | '.join(cells)}" in err and f"+{row}" in err  # the diff: the text, then what the copy renders
    # --rewrite puts the rendered block back
    assert readme_tables.main(["--rewrite", "--root", str(root)]) == 0
    assert readme_tables.main(["--check", "--root", str(root)]) == 0
    assert results.read_text() == text


def test_check_without_arguments_fails_on_a_copy_without_its_block_or_a_block_in_two_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _repository_copy(tmp_path)
    shutil.copy(root / "docs" / "results" / "main-job.json", root / "docs" / "results" / "gone.json")
    assert readme_tables.main(["--check", "--root", str(root)]) == 1
    assert "docs/results/gone.json: no document has block <!-- results:gone -->" in capsys.readouterr().err
    (root / "docs" / "results" / "gone.json").unlink()
    (root / "docs" / "extra.md").write_text("<!-- results:matrix -->\nx\n<!-- /results:matrix -->\n")
    assert readme_tables.main(["--check", "--root", str(root)]) == 1
    assert "block matrix is in 2 files: README.md, docs/extra.md" in capsys.readouterr().err


def test_a_block_is_found_in_docs_and_written_with_a_slim_copy_of_the_run(tmp_path: Path) -> None:
    """The block lives in any docs/*.md; writing it copies the run's results.json, less ROC points and skipped files,
    to docs/results/<block>.json, renders from that copy, and --check then needs no run folder."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("# x\n\nno blocks here\n")
    doc = root / "docs" / "figures.md"
    doc.write_text("# Figures\n\n<!-- results:mine -->\n<!-- /results:mine -->\n\nafter\n")
    run = _run_dir(tmp_path)
    data = json.loads((run / "results.json").read_text())
    data["sets"][1]["roc_fpr"], data["sets"][1]["roc_tpr"] = [0.0, 0.5, 1.0], [0.0, 0.9, 1.0]
    data["extra"] = {"skipped": 1, "skipped_files": [{"file": "a.npy", "reason": "truncated"}]}
    (run / "results.json").write_text(json.dumps(data))
    assert readme_tables.main(["default-run", str(run), "--block", "mine", "--root", str(root)]) == 0
    assert (root / "README.md").read_text() == "# x\n\nno blocks here\n"
    block = readme_tables.block_content(doc.read_text(), "mine")
    assert block == readme_tables.render("default-run", run) and block.startswith("| detector | set |")
    copy = json.loads((root / "docs" / "results" / "mine.json").read_text())
    assert copy[readme_tables.META] == {"kind": "default-run", "source": str(run)}
    assert all("roc_fpr" not in s and "roc_tpr" not in s for s in copy["sets"])
    assert copy["extra"] == {"skipped": 1} and copy["sets"][1]["flagged"] == 7
    shutil.rmtree(run)  # the run folder is gone: the copy is enough
    assert readme_tables.main(["--check", "--root", str(root)]) == 0
    (root / "docs" / "other.md").write_text("<!-- results:mine -->\n<!-- /results:mine -->\n")
    with pytest.raises(SystemExit, match="block mine is in 2 files"):
        readme_tables.main(["default-run", str(_run_dir(tmp_path / "b")), "--block", "mine", "--root", str(root)])


def test_orthogonal_projection_copy_keeps_the_sets_params(tmp_path: Path) -> None:
    """The orthogonal-projection block reads each set's ``project`` from the run's Hydra config: the copy keeps the
    params, so --check renders the same table once the run folder is gone."""
    results = RunResults(
        sets=[SetResult("ami", "benign", False, n=40, eligible=38, flagged=4),
              SetResult("ami", "orthogonal_ami_on", True, n=8, eligible=8, flagged=0),
              SetResult("ami", "orthogonal_ami_off", True, n=8, eligible=8, flagged=8)],
        model="dlib_resnet", detectors={"ami": {"type": "ami"}},
        attack_sets={"orthogonal_ami_on": {"attack": "orthogonal_pgd", "detector": "ami"},
                     "orthogonal_ami_off": {"attack": "orthogonal_pgd", "detector": "ami"}},
        provenance=provenance(["ami-eval"]))
    run = tmp_path / "run"
    write_results(results, run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "attacks:\n  orthogonal_ami_on: {params: {project: on_target}}\n"
        "  orthogonal_ami_off: {params: {project: off_target}}\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:orthogonal-projection -->\n<!-- /results:orthogonal-projection -->\n")
    assert readme_tables.main(["orthogonal-projection", str(run), "--readme", str(readme)]) == 0
    shutil.rmtree(run)
    text = readme.read_text()
    assert "| ami | orthogonal_ami_off | orthogonal_pgd | off_target | 8 | 0.00 % (0/8) [" in text
    assert ("Against ami (n = 8), undetected success (rule) tells projections apart: `orthogonal_ami_on` (on_target) "
            "above `orthogonal_ami_off` (off_target) (disjoint 95 % intervals); the other pairs overlap.") in text
    assert readme_tables.main(["--check", "--root", str(tmp_path)]) == 0


def test_matrix_block_from_a_small_results_file(tmp_path: Path) -> None:
    """The matrix kind: matrix_markdown of the run's results.json (legend, one row per detector, the adaptive set
    under the detector it attacked, the paired comparisons' sentences), then the provenance line."""
    results = RunResults(
        sets=[SetResult("ami", "benign", False, n=40, eligible=38, flagged=4),
              SetResult("ami", "fgsm", True, n=8, eligible=8, flagged=8),
              SetResult("ami", "selective_ami", True, n=8, eligible=8, flagged=1),
              SetResult("feature_squeezing", "benign", False, n=40, eligible=38, flagged=2),
              SetResult("feature_squeezing", "fgsm", True, n=8, eligible=8, flagged=0),
              SetResult("feature_squeezing", "selective_ami", True, n=8, eligible=8, flagged=2)],
        model="dlib_resnet", detectors={"ami": {"type": "ami"}, "feature_squeezing": {"type": "feature_squeezing"}},
        attack_sets={"fgsm": {"attack": "fgsm", "detector": None},
                     "selective_ami": {"attack": "selective_pgd", "detector": "ami"}},
        comparisons=[PairedComparison("fgsm", "ami", "feature_squeezing", 8, 8, 0, 0.0078125, 0.015625, "ami"),
                     PairedComparison("selective_ami", "ami", "feature_squeezing", 8, 0, 1, 1.0, 1.0, None)],
        provenance=provenance(["ami-run"]))
    run = tmp_path / "run"
    write_results(results, run)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:matrix -->\n(generated)\n<!-- /results:matrix -->\n")
    assert readme_tables.main(["matrix", str(run), "--readme", str(readme)]) == 0
    block = readme_tables.block_content(readme.read_text(), "matrix")
    lines = block.splitlines()
    assert lines[0].startswith("Each cell: samples (worst case: faces) that fool the model and pass the detector")
    assert lines[2] == "| detector | fgsm | selective_ami (vs ami) |"
    assert lines[4].startswith("| ami | 0/8 0 % [") and "; > feature_squeezing" in lines[4]
    assert lines[5].startswith("| feature_squeezing | 8/8 100 % [")
    assert "- `fgsm` (8 samples that fool the model): ami > feature_squeezing (Holm p = 0.016)." in lines
    assert "- `selective_ami` (8 samples that fool the model): no pair distinguishable." in lines
    assert "predates the paired comparisons" not in block
    assert lines[-1].startswith("Written by `scripts/readme_tables.py matrix` from `ami-run` at commit `")
    assert readme_tables.main(["--check", "--root", str(tmp_path)]) == 0
    # a results.json written before the paired comparisons says so under the matrix
    data = json.loads((run / "results.json").read_text())
    del data["comparisons"]
    (run / "results.json").write_text(json.dumps(data))
    assert "predates the paired comparisons: no cell could be marked `> x`" in readme_tables.render("matrix", run)


def test_main_job_writes_the_readme_summary_beside_its_table(tmp_path: Path) -> None:
    runs = {"main job, cold": {"command": "ami-run", "seconds": 331.4, "attack_seconds": 201.0, "run": "a"},
            "main job, warm": {"command": "ami-run", "seconds": 41.6, "attack_seconds": 0.0, "run": "b"}}
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.json").write_text(json.dumps({"runs": runs, "extra": [], "provenance": provenance(["bench"])}))
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("<!-- results:main-job-summary -->\n<!-- /results:main-job-summary -->\n")
    (root / "docs" / "benchmarks.md").write_text("<!-- results:main-job -->\n<!-- /results:main-job -->\n")
    assert readme_tables.main(["main-job", str(bench), "--root", str(root)]) == 0
    summary = readme_tables.block_content((root / "README.md").read_text(), "main-job-summary")
    assert summary.startswith("Wall time: main job (`ami-run`) 5 min 31 s with the cache empty; main job (`ami-run`) "
                              "42 s with the cache warm.\n\nWritten by `scripts/readme_tables.py main-job-summary`")
    assert "| main job | `ami-run` | empty | 5 min 31 s |" in (root / "docs" / "benchmarks.md").read_text()
    assert {p.name for p in (root / "docs" / "results").iterdir()} == {"main-job.json", "main-job-summary.json"}
    assert readme_tables.main(["--check", "--root", str(root)]) == 0


def test_usage_errors() -> None:
    with pytest.raises(SystemExit):
        readme_tables.main([])  # neither KIND RUN_DIR nor --check
    with pytest.raises(SystemExit):
        readme_tables.main(["default-run"])  # no run folder
    with pytest.raises(SystemExit):
        readme_tables.main(["--check", "--rewrite"])


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_readme_and_docs_resolves() -> None:
    """README.md and docs/*.md link to each other by file and heading: every such link names an existing file and,
    with a ``#``, one of its headings."""
    documents = readme_tables.documents(ROOT)
    assert {p.name for p in documents} >= {"README.md", "configuration.md", "distributed.md", "extending.md",
                                          "results.md", "benchmarks.md", "failure-modes.md", "detectors.md"}
    broken = []
    for doc in documents:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                text, headings = dest.read_text(), set()
                fenced = False
                for line in text.splitlines():
                    fenced = fenced != line.startswith("```")
                    if not fenced and re.match(r"#{1,6} ", line):
                        headings.add(_slug(line.lstrip("#")))
                if anchor not in headings:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_is_short_with_the_two_set_up_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 210
    assert "```bash\nbash scripts/install.sh && .venv/bin/ami-run\n```" in text
    assert '```bash\nbash scripts/install.sh && .venv/bin/ruff check . && .venv/bin/python -m pytest -m ""\n```' in text
    assert "ami-run experiment=smoke" in text and "<!-- results:matrix -->" in text
    for doc in ("configuration", "distributed", "extending", "results", "benchmarks", "failure-modes", "detectors"):
        assert f"](docs/{doc}.md" in text, doc
