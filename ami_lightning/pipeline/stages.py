"""The stages that the entry points chain: witnesses -> attack sets -> evaluation; each reusable and cached."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ami_lightning.data.datamodule import AmIDataModule
from ami_lightning.data.datasets import SKIPPED, FaceFiles, attack_set
from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import face_files, witness_face_files
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.evaluation.module import AmIEvalModule
from ami_lightning.models.classifiers import Classifier
from ami_lightning.models.dlib_files import CNN_FACE_DETECTOR, SHAPE_PREDICTOR_68, dlib_model_path
from ami_lightning.models.layers import hook_layer_names, layer_channels
from ami_lightning.pipeline.cache import STAGE_VERSIONS, cache_key, file_digest, model_identity
from ami_lightning.pipeline.files import exclusive, private_dir, publish_dir
from ami_lightning.pipeline.loggers import log_results
from ami_lightning.pipeline.provenance import provenance
from ami_lightning.pipeline.validation import check_model_layers, selected_attacks
from ami_lightning.reporting.results import RunResults, SampleBatch, SetResult, print_results, scalar_metrics, write_all
from ami_lightning.witnesses import WitnessSet
from ami_lightning.witnesses.from_faces import save_mutation_grid, witnesses_from_faces


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
    check_model_layers(cfg, hook_layer_names(classifier.model))
    classifier.model.to(stage_device(cfg))
    return classifier


def witness_key(cfg: DictConfig) -> str:
    """Cache key of the extracted witnesses: stage version, model identity (weights by content), witness rule and
    the landmark models that place the mutations."""
    cache_dir = cfg.paths.cache_dir
    landmarks = {name: file_digest(dlib_model_path(name), cache_dir)
                 for name in (SHAPE_PREDICTOR_68, CNN_FACE_DETECTOR)}
    return cache_key("witnesses", STAGE_VERSIONS["witnesses"], model_identity(cfg.model, cache_dir),
                     bool(cfg.ami.caffe_median), landmarks)


def witness_stage(cfg: DictConfig, classifier: Classifier, out_dir: Path) -> WitnessSet:
    """``cfg.ami.witnesses`` if given, else witnesses extracted from the release's faces, cached under
    ``paths.cache_dir/witnesses/<key>`` (:func:`witness_key`); a copy goes to ``out_dir``.

    Concurrent runs on a cold cache: one extracts (under a file lock), the others wait and read its entry; an entry
    is built in a private folder and renamed into place, so a crash never leaves half of one."""
    if cfg.ami.witnesses:
        witnesses = WitnessSet.read(Path(cfg.ami.witnesses), cfg.ami.witness_format)
    else:
        cached = Path(cfg.paths.cache_dir) / "witnesses" / witness_key(cfg)
        if not _complete_witnesses(cached):
            with exclusive(cached):
                if not _complete_witnesses(cached):  # another process may have finished it while we waited
                    base, others = witness_face_files()
                    found, mutations = witnesses_from_faces(classifier.model, hook_layer_names(classifier.model),
                                                            base, others, caffe=bool(cfg.ami.caffe_median))
                    tmp = private_dir(cached)
                    found.write(tmp)
                    save_mutation_grid(mutations, tmp / "mutations.png")
                    publish_dir(tmp, cached)
        witnesses = WitnessSet.read(cached)
    witnesses.validate(layer_channels(classifier.model, hook_layer_names(classifier.model)))
    witnesses.write(out_dir / "witnesses")
    return witnesses


def _complete_witnesses(folder: Path) -> bool:
    return (folder / "mutations.png").is_file()


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
                           fpr_targets=cfg.get("fpr_targets", AmIEvalModule.DEFAULT_FPR_TARGETS),
                           bootstrap_resamples=cfg.auroc_bootstrap.resamples, bootstrap_seed=cfg.auroc_bootstrap.seed)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False)  # the logger gets the results once they are written
    torch.manual_seed(cfg.seed)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module, datamodule


def attack_dirs(cfg: DictConfig, classifier: Classifier, witnesses: WitnessSet) -> dict[str, Path]:
    """Folders of the selected attack sets (:func:`selected_attacks`): under ``data.attacks_dir`` when given (the
    published layout or generated sets; :func:`~ami_lightning.pipeline.validation.check_config` has checked that each is
    there), else generated by :func:`attack_stage` (cached). The one path of ``ami-eval`` and ``ami-run``."""
    names = list(selected_attacks(cfg))
    if not names:
        return {}
    if not cfg.data.attacks_dir:
        return attack_stage(cfg, classifier, witnesses)
    return {name: Path(cfg.data.attacks_dir) / name for name in names}


def evaluate_and_report(
    cfg: DictConfig, classifier: Classifier, witnesses: WitnessSet, dirs: dict[str, Path]
) -> dict[str, float]:
    """Evaluate; print and write the results (files and plots first, then the logger:
    :mod:`ami_lightning.pipeline.loggers`).
    Returns the run's scalar metrics (:func:`~ami_lightning.reporting.results.scalar_metrics`) plus
    ``objective/fpr_gap``,
    |benign FPR - ``objective.target_fpr``|, the objective of ``hparams_search=optuna``."""
    module, datamodule = eval_stage(cfg, classifier, witnesses, dirs)
    results = run_results(cfg, classifier, module, datamodule)
    if module.trainer.is_global_zero:
        print_results(results)
        figures = write_all(results, Path(cfg.paths.output_dir))
        log_results(cfg, results, {name: path for name, path in figures.items() if path.suffix == ".png"})
    metrics = scalar_metrics(results)
    metrics["objective/fpr_gap"] = abs(float(module.results["benign"]["rate"]) - float(cfg.objective.target_fpr))
    return metrics


def run_results(
    cfg: DictConfig, classifier: Classifier, module: AmIEvalModule, datamodule: AmIDataModule
) -> RunResults:
    """The module's per-set figures as :class:`~ami_lightning.reporting.results.RunResults`, with a few labelled
    samples."""
    rows = [
        SetResult(name=name, adversarial=name != "benign", n=int(r["n"]), eligible=int(r["eligible"]),
                  flagged=int(r["flagged"]), auroc=r["auroc"], roc_fpr=list(r["roc_fpr"]), roc_tpr=list(r["roc_tpr"]),
                  operating_points=list(r["operating_points"]), auroc_ci=r.get("auroc_ci"))
        for name, r in module.results.items()
    ]
    return RunResults(
        sets=rows,
        weaken=float(cfg.ami.weaken),
        strengthen=(float(cfg.ami.strengthen0), float(cfg.ami.strengthen1)),
        model=classifier.name,
        extra={"skipped": {name: r["skipped"] for name, r in module.results.items()},
               "skipped_files": {name: {str(path): reason for path, reason in files.items()}
                                 for name, files in datamodule.skipped.items() if files}},
        provenance=provenance(device=module.device),
        bootstrap=module.bootstrap,
        samples=sample_batches(datamodule, module.detector, classifier.identities, k=4),
    )


@torch.no_grad()
def sample_batches(
    datamodule: AmIDataModule, detector: AmIDetector, identities: list[str], k: int
) -> dict[str, SampleBatch]:
    """The first ``k`` readable files of each attack set whose original face is known (a generator's manifest names
    it): original and adversarial pixels, the true identity, the model's identity for the adversarial image and
    whether the detector flags it."""
    batches = {}
    device = next(detector.parameters()).device
    for name, dataset in datamodule.datasets.items():
        originals = getattr(dataset, "originals", None)
        if name == "benign" or not originals:
            continue
        items = [item for item in (dataset[i] for i in range(min(k, len(dataset)))) if item[1] != SKIPPED]
        if not items:
            continue
        adversarial = torch.stack([pixels for pixels, _, _ in items])
        x = adversarial.to(device)
        predicted = detector.model(x).argmax(1).tolist()
        batches[name] = SampleBatch(
            original=torch.stack([load_image(originals[index]).float() for _, _, index in items]),
            adversarial=adversarial,
            true_identity=[identities[label] for _, label, _ in items],
            adversarial_identity=[identities[p] for p in predicted],
            flagged=detector.is_adversarial(x).tolist(),
        )
    return batches


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
        ami = cfg.ami
        detector_key = [{"weaken": ami.weaken, "strengthen": [ami.strengthen0, ami.strengthen1],
                         "crop_layers": list(ami.crop_layers)},
                        {a: {k: list(v) for k, v in w.items()} for a, w in witnesses.witnesses.items()}]
    model_key = model_identity(cfg.model, cfg.paths.cache_dir)
    dirs = {}
    for name, spec in chosen.items():
        needs_detector = get_spec(spec.name).needs_detector
        key = ["attacks", STAGE_VERSIONS["attacks"], model_key, spec, [f.name for f in files], cfg.seed,
               *(detector_key if needs_detector else [])]
        root = Path(cfg.paths.cache_dir) / "attacks" / cache_key(*key)
        torch.manual_seed(cfg.seed)
        dirs[name] = generate(spec.name, classifier.model, dataset, root, spec.get("params", {}),
                              batch_size=cfg.data.batch_size, device=device, num_classes=len(classifier.identities),
                              detector=detector if needs_detector else None)
    return dirs
