"""Distributed attack generation: the wall time of one C&W set from 1 process against N, measured in one run.

Usage (from the repository root)::

    python -m scripts.bench_distributed                                # CPU: 1 process vs 2 gloo processes
    python -m scripts.bench_distributed --accelerator gpu --processes 4    # 1 GPU vs 4 (trainer=ddp)

Each side runs ``ami-attack attack=[fgsm,cw_l2_next]`` on the embedded default (dlib's ResNet, the shipped faces)
with a fresh cache (neither set needs witnesses), so only generation differs: ``trainer=cpu`` or ``trainer=gpu``
against ``trainer=ddp_sim`` / ``trainer=ddp`` with ``trainer.devices=N``. The FGSM set goes first and pays the
start-up (Lightning's launcher starts the other ranks at the first set); the C&W set, with Carlini's abort-early off
so that every face costs the same ``steps`` iterations, is the one timed. Reported per side: the C&W set's wall time
as rank 0 measured it (``attack_stage.json``), the whole command's wall time (start-up, the FGSM set and the merge
included), and the intra-op threads per process (from the manifest); then the ratio 1 / N of the C&W set times and
its share of the ideal N (on a CPU the ideal assumes N free cores: 1 process uses them all through its threads, N
processes one each). The two sides' files are compared too (byte-identical when both ran with the same threads per
process; otherwise the success flags still agree). ``--out DIR`` writes the figures and their provenance (command,
commit, machine) to ``DIR/results.json``, from which ``python -m scripts.readme_tables distributed DIR`` writes the
README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ami_lightning.pipeline.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]


def ami_attack(overrides: list[str], log_dir: Path, env: dict[str, str]) -> tuple[float, dict]:
    """Run ``ami-attack`` (the installed console script, which Lightning's launcher re-runs for the other ranks)
    with ``overrides``; returns its wall time in seconds and its ``attack_stage.json``."""
    command = [str(Path(sys.executable).parent / "ami-attack"), *overrides, f"paths.log_dir={log_dir}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    stages = sorted(log_dir.glob("attack/*/attack_stage.json"))
    return seconds, json.loads(stages[-1].read_text()) if stages else {}


def set_folder(cache: Path, name: str) -> Path:
    (folder,) = [f for f in cache.glob(f"attacks/*/{name}") if f.is_dir()]
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--processes", type=int, default=2, help="N, the processes (devices) of the distributed side")
    parser.add_argument("--faces", type=int, default=16, help="shipped faces attacked (16: 8 batches of 2)")
    parser.add_argument("--batch-size", type=int, default=2, help="data.batch_size: the largest batch (batch_shares)")
    parser.add_argument("--steps", type=int, default=200, help="C&W steps per binary-search step (no abort-early)")
    parser.add_argument("--binary-search-steps", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the figures to DIR/results.json (for readme_tables)")
    args = parser.parse_args()
    if args.processes < 2 or args.faces < args.processes:
        raise SystemExit("--processes must be >= 2 and --faces >= processes (a batch each at least)")
    if args.accelerator == "gpu" and torch.cuda.device_count() < args.processes:
        raise SystemExit(f"--processes {args.processes} needs as many GPUs; {torch.cuda.device_count()} visible")
    common = [f"data.attack_faces={args.faces}", f"data.batch_size={args.batch_size}", "logger=none",
              "attack=[fgsm,cw_l2_next]", f"attacks.cw_l2_next.params.steps={args.steps}",
              "+attacks.cw_l2_next.params.abort_early=false",
              f"attacks.cw_l2_next.params.binary_search_steps={args.binary_search_steps}",
              "trainer.enable_progress_bar=false"]
    single = "trainer=cpu" if args.accelerator == "cpu" else "trainer=gpu"
    multi = ["trainer=ddp_sim" if args.accelerator == "cpu" else "trainer=ddp", f"trainer.devices={args.processes}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("OMP_NUM_THREADS", None)  # Lightning gives each of N processes cores / N threads, one process them all
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        work = Path(tmp)
        sides = {}
        for label, trainer in (("1 process", [single]), (f"{args.processes} processes", multi)):
            cache = work / label.replace(" ", "_")
            wall, stage = ami_attack([*common, *trainer, f"paths.cache_dir={cache}"], work / f"log_{cache.name}", env)
            folder = set_folder(cache, "cw_l2_next")
            rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
            sides[label] = {"set_seconds": stage["sets"]["cw_l2_next"]["seconds"], "command_seconds": round(wall, 2),
                            "processes": stage["processes"], "threads": rows[0].get("torch_threads"),
                            "files": {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))},
                            "success": {r["file"]: r["success"] for r in rows}}
    one, many = sides.values()
    ratio = one["set_seconds"] / many["set_seconds"]
    figures = {"accelerator": args.accelerator, "faces": args.faces, "batch_size": args.batch_size,
               "steps": args.steps, "binary_search_steps": args.binary_search_steps, "ratio": round(ratio, 3),
               "ideal": args.processes, "byte_identical": one["files"] == many["files"],
               "success_equal": one["success"] == many["success"],
               "sides": {label: {k: v for k, v in side.items() if k not in ("files", "success")}
                         for label, side in sides.items()},
               "provenance": provenance(device="cuda" if args.accelerator == "gpu" else None)}
    print(distributed_markdown(figures))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(figures, indent=1) + "\n")


def distributed_markdown(figures: dict) -> str:
    """The table of a :func:`main` run's figures (its ``results.json``)."""
    lines = [f"C&W L2 (`cw_l2_next`), {figures['faces']} shipped faces, `data.batch_size` {figures['batch_size']}, "
             f"{figures['binary_search_steps']} x {figures['steps']} steps (abort-early off), after an FGSM set that "
             f"pays the start-up, {figures['accelerator'].upper()}:", "",
             "| processes | C&W set wall time (s) | command wall time (s) | threads per process |",
             "| ---: | ---: | ---: | ---: |"]
    for side in figures["sides"].values():
        lines.append(f"| {side['processes']} | {side['set_seconds']:.1f} | {side['command_seconds']:.1f} | "
                     f"{side['threads']} |")
    lines += ["", f"Speed-up {figures['ratio']:.2f}x of an ideal {figures['ideal']}x "
                  f"({figures['ratio'] / figures['ideal']:.0%}); files byte-identical: "
                  f"{'yes' if figures['byte_identical'] else 'no'}; success flags equal: "
                  f"{'yes' if figures['success_equal'] else 'no'}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
