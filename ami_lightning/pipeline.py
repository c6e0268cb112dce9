"""The stages that the entry points chain: witnesses -> attack sets -> evaluation; each reusable and cached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ami_lightning.builders import Classifier
from ami_lightning.data.datamodule import AmIDataModule
from ami_lightning.data.datasets import FaceFiles, attack_set
from ami_lightning.detector import AmIDetector
from ami_lightning.embedded import face_files, witness_face_files
from ami_lightning.identities import identity_from_filename
from ami_lightning.images import load_image
from ami_lightning.layers import hook_layer_names
from ami_lightning.lightning_module import AmIEvalModule
from ami_lightning.reporting import RunResults, SetResult, is_wandb_logger, print_results, write_all
from ami_lightning.witnesses import WitnessSet
from ami_lightning.witnesses.from_faces import save_mutation_grid, witnesses_from_faces


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs as containers)."""
    blob = json.dumps([OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def stage_device(cfg: DictConfig) -> torch.device:
    """Where the witness and attack stages run: the GPU of this process (``cuda:LOCAL_RANK``) when the trainer's
    accelerator is ``gpu`` / ``cuda`` / ``auto`` and CUDA is available, else the CPU (the test stage goes wherever
    the trainer puts it)."""
    if str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def classifier_from(cfg: DictConfig) -> Classifier:
    """``instantiate(cfg.model)``, moved to :func:`stage_device`."""
    classifier: Classifier = instantiate(cfg.model)
    classifier.model.to(stage_device(cfg))
    return classifier


def witness_stage(cfg: DictConfig, classifier: Classifier, out_dir: Path) -> WitnessSet:
    """``cfg.ami.witnesses`` if given, else witnesses extracted from the release's faces, cached under
    ``paths.cache_dir/witnesses/<key>`` (key: model config and witness rule); a copy goes to ``out_dir``."""
    if cfg.ami.witnesses:
        witnesses = WitnessSet.read(Path(cfg.ami.witnesses), cfg.ami.witness_format)
    else:
        cached = Path(cfg.paths.cache_dir) / "witnesses" / cache_key(cfg.model, bool(cfg.ami.caffe_median))
        if not (cached / "mouth_neurons.txt").is_file():
            base, others = witness_face_files()
            found, mutations = witnesses_from_faces(
                classifier.model, hook_layer_names(classifier.model), base, others, caffe=bool(cfg.ami.caffe_median)
            )
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            found.write(tmp)
            save_mutation_grid(mutations, tmp / "mutations.png")
            shutil.rmtree(cached, ignore_errors=True)
            tmp.rename(cached)  # atomic: a crash leaves no half-written cache entry
        witnesses = WitnessSet.read(cached)
    witnesses.write(out_dir / "witnesses")
    return witnesses


def detector_from(cfg: DictConfig, classifier: Classifier, witnesses: WitnessSet) -> AmIDetector:
    ami = cfg.ami
    return AmIDetector(classifier.model, witnesses, ami.weaken, (ami.strengthen0, ami.strengthen1), ami.crop_layers)


def eval_stage(
    cfg: DictConfig, classifier: Classifier, witnesses: WitnessSet, attack_dirs: dict[str, Path]
) -> tuple[AmIEvalModule, AmIDataModule]:
    """``trainer.test`` of the detector on the benign set and each attack set (name -> folder); the per-set figures
    are in the returned module's ``results``."""
    benign = instantiate(cfg.data.benign, classifier=classifier)
    attacks = {
        name: attack_set(folder.parent, folder.name, classifier.identities, cfg.data.npy_legacy, cfg.data.on_error)
        for name, folder in attack_dirs.items()
    }
    datamodule = AmIDataModule(benign, attacks, cfg.data.batch_size, cfg.data.num_workers)
    module = AmIEvalModule(detector_from(cfg, classifier, witnesses), datamodule.set_names,
                           fpr_targets=cfg.get("fpr_targets", AmIEvalModule.DEFAULT_FPR_TARGETS))
    logger = instantiate(cfg.logger) if cfg.get("logger") and "_target_" in cfg.logger else False
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger)
    torch.manual_seed(cfg.seed)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module, datamodule


def selected_attacks(cfg: DictConfig) -> dict[str, DictConfig]:
    """The attack sets the run selected (``attack=[...]``): the entries of ``cfg.attacks`` that an ``attack/<set>``
    file filled in (they carry a ``name``). Budget-only entries of an experiment (``attacks.<set>.params``) for sets
    left out by ``attack=[...]`` are ignored."""
    return {name: spec for name, spec in (cfg.get("attacks") or {}).items() if spec.get("name")}


def attack_dirs(cfg: DictConfig, classifier: Classifier, witnesses: WitnessSet) -> dict[str, Path]:
    """Folders of the selected attack sets (:func:`selected_attacks`): under ``data.attacks_dir`` when given (the
    published layout; an error names each missing set), else generated by :func:`attack_stage` (cached)."""
    names = list(selected_attacks(cfg))
    if not names or not cfg.data.attacks_dir:
        return attack_stage(cfg, classifier, witnesses) if names else {}
    root = Path(cfg.data.attacks_dir)
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"attack sets missing under data.attacks_dir={root}: {missing}")
    return {name: root / name for name in names}


def evaluate_and_report(
    cfg: DictConfig, classifier: Classifier, witnesses: WitnessSet, dirs: dict[str, Path]
) -> float:
    """Evaluate, print and write the results (files, plots, W&B); returns the sweep objective |FPR - target|."""
    module, datamodule = eval_stage(cfg, classifier, witnesses, dirs)
    results = run_results(cfg, classifier, module, datamodule)
    if module.trainer.is_global_zero:
        print_results(results)
        write_all(results, Path(cfg.paths.output_dir), module.logger)
    if is_wandb_logger(module.logger):
        module.logger.experiment.finish()  # the next job of a multirun starts its own W&B run
    fpr = module.results["benign"]["rate"]
    return abs(float(fpr) - float(cfg.objective.target_fpr))


def run_results(
    cfg: DictConfig, classifier: Classifier, module: AmIEvalModule, datamodule: AmIDataModule
) -> RunResults:
    """The module's per-set figures as :class:`~ami_lightning.reporting.RunResults`, with a few sample images."""
    rows = [
        SetResult(name=name, adversarial=name != "benign", n=int(r["n"]), eligible=int(r["eligible"]),
                  flagged=int(r["flagged"]), auroc=r["auroc"], roc_fpr=list(r["roc_fpr"]), roc_tpr=list(r["roc_tpr"]),
                  operating_points=list(r["operating_points"]))
        for name, r in module.results.items()
    ]
    return RunResults(
        sets=rows,
        weaken=float(cfg.ami.weaken),
        strengthen=(float(cfg.ami.strengthen0), float(cfg.ami.strengthen1)),
        model=classifier.name,
        extra={"skipped": {name: r["skipped"] for name, r in module.results.items()}},
        samples=sample_pairs(datamodule, k=4),
    )


def sample_pairs(datamodule: AmIDataModule, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(original, adversarial) pixels of the first ``k`` files of each attack set whose original face is known
    (a manifest written by the generator names it)."""
    pairs = {}
    for name, dataset in datamodule.datasets.items():
        originals = getattr(dataset, "originals", None)
        if name == "benign" or not originals:
            continue
        count = min(k, len(dataset))
        adversarial = torch.stack([dataset[i][0] for i in range(count)])
        pairs[name] = (torch.stack([load_image(p).float() for p in originals[:count]]), adversarial)
    return pairs


def needs_witnesses(cfg: DictConfig) -> bool:
    """Whether a selected attack set (:func:`selected_attacks`) attacks the AmI detector itself (the adaptive
    sets)."""
    from ami_lightning.attacks.registry import get_spec

    return any(get_spec(spec.name).needs_detector for spec in selected_attacks(cfg).values())


def attack_stage(cfg: DictConfig, classifier: Classifier, witnesses: WitnessSet | None = None) -> dict[str, Path]:
    """Generate each selected attack set (:func:`selected_attacks`) from the first ``data.attack_faces`` shipped faces.

    Each set is cached under ``paths.cache_dir/attacks/<key>/<set>`` (key: model, attack config, faces, seed, and
    for the adaptive sets the AmI parameters and witnesses they attack); generation is resumable, so an
    interrupted run picks up where it stopped. The adaptive sets need ``witnesses`` (``ValueError`` without).
    """
    from ami_lightning.attacks.generate import generate
    from ami_lightning.attacks.registry import get_spec

    files = face_files()[: cfg.data.attack_faces]  # paths only: the dataset reads the pixels batch by batch
    index = {name: i for i, name in enumerate(classifier.identities)}
    labels = [index[identity_from_filename(f)] for f in files]
    dataset = FaceFiles(files, labels)
    device = next(classifier.model.parameters()).device
    chosen = selected_attacks(cfg)
    detector, detector_key = None, []
    if any(get_spec(spec.name).needs_detector for spec in chosen.values()):
        if witnesses is None:
            raise ValueError("the adaptive attack sets attack the AmI detector: attack_stage needs the witnesses")
        detector = detector_from(cfg, classifier, witnesses).to(device)
        detector_key = [cfg.ami, {a: {k: list(v) for k, v in w.items()} for a, w in witnesses.witnesses.items()}]
    dirs = {}
    for name, spec in chosen.items():
        needs_detector = get_spec(spec.name).needs_detector
        key = [cfg.model, spec, [f.name for f in files], cfg.seed, *(detector_key if needs_detector else [])]
        root = Path(cfg.paths.cache_dir) / "attacks" / cache_key(*key)
        torch.manual_seed(cfg.seed)
        dirs[name] = generate(spec.name, classifier.model, dataset, root, spec.get("params", {}),
                              batch_size=cfg.data.batch_size, device=device, num_classes=len(classifier.identities),
                              detector=detector if needs_detector else None)
    return dirs
