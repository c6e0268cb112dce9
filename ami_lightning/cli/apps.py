"""Hydra entry points: ``ami-witness``, ``ami-attack``, ``ami-eval`` and ``ami-run`` (all stages chained).

Thin: compose the config, instantiate the objects, call the stages of :mod:`ami_lightning.pipeline`, write results
under ``logs/<task>/<timestamp>/`` (multiruns: ``logs/<task>/multiruns/<timestamp>/<job>``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ami_lightning import pipeline
from ami_lightning.cli import CONFIG_PATH


def _witness(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    witnesses = pipeline.witness_stage(cfg, pipeline.classifier_from(cfg), out)
    print(f"witnesses per attribute: {witnesses.count()} at {len(witnesses.steered_layers())} layers -> {out}")


def _eval(cfg: DictConfig) -> float | None:
    classifier = pipeline.classifier_from(cfg)
    witnesses = pipeline.witness_stage(cfg, classifier, Path(cfg.paths.output_dir))
    return pipeline.evaluate_and_report(cfg, classifier, witnesses, pipeline.attack_dirs(cfg, classifier, witnesses))


def _run(cfg: DictConfig) -> float | None:
    classifier = pipeline.classifier_from(cfg)
    witnesses = pipeline.witness_stage(cfg, classifier, Path(cfg.paths.output_dir))
    dirs = pipeline.attack_stage(cfg, classifier, witnesses)
    return pipeline.evaluate_and_report(cfg, classifier, witnesses, dirs)


def _attack(cfg: DictConfig) -> None:
    classifier = pipeline.classifier_from(cfg)
    out = Path(cfg.paths.output_dir)
    witnesses = pipeline.witness_stage(cfg, classifier, out) if pipeline.needs_witnesses(cfg) else None
    dirs = pipeline.attack_stage(cfg, classifier, witnesses)
    for name, folder in dirs.items():
        print(f"{name}: {folder}")


witness = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="witness")(_witness)
evaluate = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")(_eval)
attack = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="attack")(_attack)
run = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="run")(_run)
