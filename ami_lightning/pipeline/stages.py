"""The stages that the entry points chain: detectors (prepared) -> attack sets -> evaluation; each reusable and
cached.

A run's detectors are the entries of ``cfg.detectors`` (``detector=[ami,feature_squeezing]``), built on one
classifier (:func:`build_detectors`) and prepared by :func:`prepare_detectors`: each one's
:meth:`~ami_lightning.detectors.base.Detector.setup` (AmI: its witnesses, cached) and, for those whose rule needs a
threshold, :meth:`~ami_lightning.detectors.base.Detector.calibrate` on the benign set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from ami_lightning.data.benign import FIT_RECORD
from ami_lightning.data.datamodule import EvalDataModule
from ami_lightning.data.datasets import SKIPPED, FaceFiles, attack_set
from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import face_files
from ami_lightning.detectors.base import Detector, SetupContext, create_detector
from ami_lightning.detectors.fitting import FitSet
from ami_lightning.evaluation.module import WORST_CASE, DetectorEvalModule
from ami_lightning.evaluation.rates import eligible_mask
from ami_lightning.models.classifiers import Classifier
from ami_lightning.models.layers import hook_layer_names
from ami_lightning.pipeline.benign import (
    IDENTITY_ATTRIBUTE,
    benign_identity,
    benign_records,
    final_flags,
    records_path,
    save_records,
    scores_of_eligible,
)
from ami_lightning.pipeline.cache import STAGE_VERSIONS, cache_key, code_digest, model_identity
from ami_lightning.pipeline.distributed import LightningRunner, attack_trainer
from ami_lightning.pipeline.files import write_text
from ami_lightning.pipeline.loggers import log_results
from ami_lightning.pipeline.provenance import provenance
from ami_lightning.pipeline.validation import check_model_layers, selected_attacks
from ami_lightning.reporting.results import (
    RunResults,
    SampleBatch,
    SetResult,
    print_results,
    scalar_metrics,
    write_all,
)


def stage_device(cfg: DictConfig) -> torch.device:
    """Where the preparation and attack stages run: the GPU of this process (``cuda:LOCAL_RANK``) when the trainer's
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


def benign_set(cfg: DictConfig, classifier: Classifier) -> Dataset:
    """The benign test set of ``cfg.data.benign``, labelled by the classifier's identities, carrying its identity for
    the cache of detectors' benign records (:func:`~ami_lightning.pipeline.benign.benign_identity`)."""
    dataset = instantiate(cfg.data.benign, classifier=classifier)
    setattr(dataset, IDENTITY_ATTRIBUTE, benign_identity(cfg.data.benign, cfg.data.on_error, cfg.paths.cache_dir))
    return dataset


# ---- detectors ------------------------------------------------------------------------------------------------------
def build_detectors(cfg: DictConfig, classifier: Classifier, names: Iterable[str] | None = None) -> dict[str, Detector]:
    """The run's detectors (``cfg.detectors``, in order; only ``names`` when given) on the classifier, unprepared."""
    chosen = list(cfg.get("detectors") or {}) if names is None else list(names)
    detectors = {}
    for name in chosen:
        node = cfg.detectors[name]
        params = OmegaConf.to_container(node.get("params") or {}, resolve=True)
        detectors[name] = create_detector(str(node.type), classifier.model, name=name, **params)
    return detectors


def fit_set(cfg: DictConfig, classifier: Classifier, dataset: Dataset | None = None) -> FitSet:
    """The benign fit set of the detectors that need fitting: ``dataset`` or ``cfg.data.fit`` instantiated with the
    classifier (its ``fit_record`` says what it holds), run with ``data.batch_size`` on the run's device. ValueError
    when the data config has none."""
    if dataset is None:
        if cfg.data.get("fit") is None:
            raise ValueError("a detector of the run needs a benign fit set and data.fit is not set: give data.fit "
                             "(e.g. ami_lightning.data.benign.shipped_fit_set or benign_folder_fit)")
        dataset = instantiate(cfg.data.fit, classifier=classifier)
    record = getattr(dataset, FIT_RECORD, None) or {"rule": f"given dataset {type(dataset).__name__}",
                                                    "items": len(dataset)}  # type: ignore[arg-type]
    return FitSet(dataset, record, int(cfg.data.batch_size), stage_device(cfg))


def setup_context(cfg: DictConfig, fit: FitSet | None = None) -> SetupContext:
    """What detectors are set up with: the run's folder, ``paths.cache_dir``, the model's identity and the fit set."""
    return SetupContext(Path(cfg.paths.output_dir), Path(cfg.paths.cache_dir),
                        model_identity(cfg.model, cfg.paths.cache_dir), fit)


def prepare_detectors(
    cfg: DictConfig, classifier: Classifier, benign: Dataset | None = None, names: Iterable[str] | None = None,
    fit: Dataset | None = None,
) -> dict[str, Detector]:
    """:func:`build_detectors`, each set up (:func:`setup_context`, with the benign fit set of :func:`fit_set` from
    ``fit`` or ``data.fit`` when one :attr:`~Detector.needs_fit`) and, when it needs calibration, calibrated on
    the eligible scores of its records on ``benign`` (default: :func:`benign_set`; records computed once and cached:
    :func:`detector_benign_records`, which the evaluation reads again instead of scoring the benign set twice). When
    there is a benign set (given, or needed for calibration), :func:`check_benign_accuracy` first, before any
    detector is set up."""
    detectors = build_detectors(cfg, classifier, names)
    needing = {name: d for name, d in detectors.items() if d.needs_calibration}
    if benign is None and needing:
        benign = benign_set(cfg, classifier)
    if benign is not None:
        check_benign_accuracy(cfg, classifier, benign)
    fitting = any(d.needs_fit for d in detectors.values())
    context = setup_context(cfg, fit_set(cfg, classifier, fit) if fitting else None)
    for detector in detectors.values():
        detector.setup(context)
    if needing:
        for name, rows in detector_benign_records(cfg, needing, benign).items():
            needing[name].calibrate(scores_of_eligible(rows))
    return detectors


def detector_benign_records(
    cfg: DictConfig, detectors: dict[str, Detector], benign: Dataset, compute: bool = True
) -> dict[str, torch.Tensor]:
    """:func:`~ami_lightning.pipeline.benign.benign_records` of ``detectors`` on ``benign`` with the run's batch
    size, device and cache (``compute=False``: the cached ones only)."""
    return benign_records(detectors, benign, cfg.data.batch_size, stage_device(cfg), cfg.paths.cache_dir,
                          model_identity(cfg.model, cfg.paths.cache_dir), compute)


class BenignAccuracyError(ValueError):
    """The classifier gets no benign probe right: no detector can be calibrated or its benign FPR measured."""


MODEL_KEYS = ("path", "weights", "net._target_", "names", "faces_dir", "output", "input_size", "channel_order",
              "pixel_scale", "mean", "std")
"""The model keys that decide which identity a face gets (files, names, gallery, preprocessing), where set."""


def model_keys_text(cfg: DictConfig) -> str:
    """``model._target_`` and the :data:`MODEL_KEYS` the model config has, as ``key=value`` (values resolved, None as
    ``null``)."""
    absent = object()
    parts = [f"model._target_={cfg.model.get('_target_')}"]
    for key in MODEL_KEYS:
        value = OmegaConf.select(cfg.model, key, default=absent)
        if value is not absent:
            parts.append(f"model.{key}={'null' if value is None else value}")
    return ", ".join(parts)


@torch.no_grad()
def check_benign_accuracy(cfg: DictConfig, classifier: Classifier, benign: Dataset) -> None:
    """Stop (:class:`BenignAccuracyError`) when the classifier's top-1 identity is wrong for every readable probe of
    ``benign`` (items ``(pixels, label, ...)``): its weights, identity names or gallery do not match the benign set,
    so every detector's calibration and benign FPR would have nothing to count. Returns at the first batch of
    ``data.batch_size`` probes with a right answer (one batch for a working model); only a run that stops reads the
    whole set. A set without a readable probe is left to the stages that read it."""
    device = stage_device(cfg)
    seen = 0
    for batch in DataLoader(benign, batch_size=cfg.data.batch_size):
        keep = batch[1] != SKIPPED
        if not keep.any():
            continue
        labels = batch[1][keep].to(device)
        predicted = classifier.model(batch[0][keep].to(device).float()).argmax(1)
        if eligible_mask(predicted, labels, adversarial=False).any():
            return
        seen += len(labels)
    if seen:
        examples = ", ".join(classifier.identities[:3])
        raise BenignAccuracyError(
            f"the model {classifier.name!r} gets none of the {seen} benign probes right (top-1 accuracy 0/{seen} = "
            f"0 %), so no detector can be calibrated and no benign FPR measured. Its weights, identity names or "
            f"gallery do not match the benign set: check {model_keys_text(cfg)}; and that the benign set "
            f"(data.benign._target_={cfg.data.benign.get('_target_')}) names the model's "
            f"{len(classifier.identities)} identities (first: {examples})."
        )


def attacked_detectors(cfg: DictConfig) -> list[str]:
    """The detectors that the selected adaptive attack sets attack (``attacks.<set>.detector``), in run order."""
    wanted = {str(spec.detector) for spec in selected_attacks(cfg).values() if spec.get("detector")}
    return [name for name in cfg.get("detectors") or {} if name in wanted]


# ---- evaluation -----------------------------------------------------------------------------------------------------
def eval_stage(
    cfg: DictConfig, classifier: Classifier, detectors: dict[str, Detector], benign: Dataset,
    attack_dirs: dict[str, Path]
) -> tuple[DetectorEvalModule, EvalDataModule]:
    """``trainer.test`` of every detector on the benign set and each attack set (name -> folder), in one pass; the
    figures are in the returned module's ``results`` (detector -> set -> dict). A detector's benign records found in
    the cache (:func:`detector_benign_records`: made by calibration or an earlier run) are read instead of running
    it on the benign set again; those the evaluation makes are cached for the next run."""
    attacks = {
        name: attack_set(folder.parent, folder.name, classifier.identities, cfg.data.npy_legacy, cfg.data.on_error)
        for name, folder in attack_dirs.items()
    }
    datamodule = EvalDataModule(benign, attacks, cfg.data.batch_size, cfg.data.num_workers)
    known = {name: final_flags(detectors[name], rows)
             for name, rows in detector_benign_records(cfg, detectors, benign, compute=False).items()}
    module = DetectorEvalModule(detectors, datamodule.set_names, benign_records=known,
                                fpr_targets=cfg.get("fpr_targets", DetectorEvalModule.DEFAULT_FPR_TARGETS),
                                bootstrap_resamples=cfg.auroc_bootstrap.resamples,
                                bootstrap_seed=cfg.auroc_bootstrap.seed, targets=datamodule.targets,
                                faces=datamodule.faces)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False)  # the logger gets the results once they are written
    torch.manual_seed(cfg.seed)
    trainer.test(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:  # the records the evaluation made, for the next run
        model_key = model_identity(cfg.model, cfg.paths.cache_dir)
        for name, rows in module.benign_rows.items():
            if name not in known:
                save_records(records_path(cfg.paths.cache_dir, model_key, benign, detectors[name]), rows)
    return module, datamodule


def attack_dirs(cfg: DictConfig, classifier: Classifier, detectors: dict[str, Detector]) -> dict[str, Path]:
    """Folders of the selected attack sets (:func:`selected_attacks`): under ``data.attacks_dir`` when given (the
    published layout or generated sets; :func:`~ami_lightning.pipeline.validation.check_config` has checked that each
    is there), else generated by :func:`attack_stage` (cached). The one path of ``ami-eval`` and ``ami-run``."""
    names = list(selected_attacks(cfg))
    if not names:
        return {}
    if not cfg.data.attacks_dir:
        return attack_stage(cfg, classifier, detectors)
    return {name: Path(cfg.data.attacks_dir) / name for name in names}


def evaluate_and_report(
    cfg: DictConfig, classifier: Classifier, detectors: dict[str, Detector], benign: Dataset,
    dirs: dict[str, Path]
) -> dict[str, float]:
    """Evaluate; print and write the results (files and plots first, then the logger:
    :mod:`ami_lightning.pipeline.loggers`). Returns the run's scalar metrics
    (:func:`~ami_lightning.reporting.results.scalar_metrics`) plus ``objective/fpr_gap``, |benign FPR of the first
    detector - ``objective.target_fpr``|, the objective of ``hparams_search=optuna``."""
    module, datamodule = eval_stage(cfg, classifier, detectors, benign, dirs)
    results = run_results(cfg, classifier, module, datamodule)
    if module.trainer.is_global_zero:
        print_results(results)
        figures = write_all(results, Path(cfg.paths.output_dir))
        log_results(cfg, results, {name: path for name, path in figures.items() if path.suffix == ".png"})
    metrics = scalar_metrics(results)
    first = next(iter(module.results.values()))
    metrics["objective/fpr_gap"] = abs(float(first["benign"]["rate"]) - float(cfg.objective.target_fpr))
    return metrics


def run_results(
    cfg: DictConfig, classifier: Classifier, module: DetectorEvalModule, datamodule: EvalDataModule
) -> RunResults:
    """The module's figures as :class:`~ami_lightning.reporting.results.RunResults` (a row per detector and set, and
    each detector's worst case over the attack sets after its sets), with the detectors' descriptions, which detector
    each adaptive set attacked, and a few labelled samples."""
    rows = []
    for detector, per_set in module.results.items():
        rows += [SetResult(detector=detector, name=name, adversarial=name != "benign", n=int(r["n"]),
                           eligible=int(r["eligible"]), flagged=int(r["flagged"]), auroc=r["auroc"],
                           roc_fpr=list(r["roc_fpr"]), roc_tpr=list(r["roc_tpr"]),
                           operating_points=list(r["operating_points"]), auroc_ci=r.get("auroc_ci"),
                           success=r.get("success"))
                 for name, r in per_set.items()]
        worst = module.worst_case.get(detector)
        if worst and worst["sets"]:  # after the detector's sets
            rows.append(SetResult(detector=detector, name=WORST_CASE, adversarial=True, n=int(worst["n"]),
                                  eligible=int(worst["eligible"]), flagged=int(worst["flagged"]),
                                  operating_points=list(worst["operating_points"]), worst_case=True))
    first = next(iter(module.results.values()))
    detectors = dict(module.detectors.items())
    return RunResults(
        sets=rows,
        model=classifier.name,
        detectors={name: detector.description() for name, detector in detectors.items()},
        attack_sets={name: {"attack": str(spec.name), "detector": spec.get("detector")}
                     for name, spec in selected_attacks(cfg).items()},
        extra={"skipped": {name: r["skipped"] for name, r in first.items()},
               "skipped_files": {name: {str(path): reason for path, reason in files.items()}
                                 for name, files in datamodule.skipped.items() if files}},
        provenance=provenance(device=module.device),
        bootstrap=module.bootstrap,
        comparisons=list(module.comparisons),
        samples=sample_batches(datamodule, detectors, classifier.identities, k=4),
    )


@torch.no_grad()
def sample_batches(
    datamodule: EvalDataModule, detectors: dict[str, Detector], identities: list[str], k: int
) -> dict[str, SampleBatch]:
    """The first ``k`` readable files of each attack set whose original face is known (a generator's manifest names
    it): original and adversarial pixels, the true identity, the model's identity for the adversarial image and
    whether each detector flags it."""
    batches = {}
    model = next(iter(detectors.values())).model
    device = next(model.parameters()).device
    for name, dataset in datamodule.datasets.items():
        originals = getattr(dataset, "originals", None)
        if name == "benign" or not originals:
            continue
        items = [item for item in (dataset[i] for i in range(min(k, len(dataset)))) if item[1] != SKIPPED]
        if not items:
            continue
        adversarial = torch.stack([pixels for pixels, _, _ in items])
        x = adversarial.to(device)
        logits = model(x)
        batches[name] = SampleBatch(
            original=torch.stack([load_image(originals[index]).float() for _, _, index in items]),
            adversarial=adversarial,
            true_identity=[identities[label] for _, label, _ in items],
            adversarial_identity=[identities[p] for p in logits.argmax(1).tolist()],
            flagged={d: detector(x, logits).flagged.tolist() for d, detector in detectors.items()},
        )
    return batches


# ---- attack sets ----------------------------------------------------------------------------------------------------
def attack_set_key(spec: DictConfig, model_key: Any, files: Sequence[Path], seed: int,
                   detector: Detector | None = None) -> str:
    """Cache key of an attack set's folder: the set's config ``spec`` (``attacks.<set>``), the model's identity, the
    faces' file names, the seed, the writer's version (:data:`STAGE_VERSIONS`) and a digest of the attack's code
    (:func:`~ami_lightning.pipeline.cache.code_digest`: its module and what it imports); for a set made against
    ``detector``, also that detector's type, identity and code digest. Editing one attack's module changes the keys of
    its sets only; editing a detector's module, those of the sets made against it only."""
    from ami_lightning.attacks.registry import get_spec

    key = ["attacks", STAGE_VERSIONS["attacks"], model_key, spec, [f.name for f in files], seed,
           code_digest(get_spec(str(spec.name)).factory)]
    if detector is not None:
        key += [detector.kind, detector.identity(), code_digest(type(detector))]
    return cache_key(*key)


def attack_stage(cfg: DictConfig, classifier: Classifier, detectors: dict[str, Detector] | None = None
                 ) -> dict[str, Path]:
    """Generate each selected attack set (:func:`selected_attacks`) from the first ``data.attack_faces`` shipped faces,
    through the run's trainer (:mod:`ami_lightning.pipeline.distributed`): with ``trainer=ddp trainer.devices=N``
    (or several nodes) each of the N processes attacks its own batches of every set, and rank 0 merges the
    manifests. Rank 0 writes each set's wall time to ``attack_stage.json`` in the run folder.

    Each set is cached under ``paths.cache_dir/attacks/<key>/<set>`` (key: model, the set's config, faces, seed, and
    for an adaptive set the type and identity of the detector it attacks: parameters, witnesses, threshold);
    generation is resumable, so an interrupted run (a killed process of any rank) picks up where it stopped. An
    adaptive set needs its prepared detector in ``detectors`` (``ValueError`` without).
    """
    from ami_lightning.attacks.registry import get_spec
    from ami_lightning.pipeline.generation import generate

    files = face_files()[: cfg.data.attack_faces]  # paths only: the dataset reads the pixels batch by batch
    index = {name: i for i, name in enumerate(classifier.identities)}
    labels = [index[identity_from_filename(f)] for f in files]
    dataset = FaceFiles(files, labels)
    model_key = model_identity(cfg.model, cfg.paths.cache_dir)
    chosen = selected_attacks(cfg)
    attacked = {name: str(spec.detector) for name, spec in chosen.items() if get_spec(spec.name).needs_detector}
    for name, wanted in attacked.items():  # refuse before any set is generated
        if wanted not in (detectors or {}):
            raise ValueError(f"attack set {name!r} attacks the detector {wanted!r}: attack_stage needs it prepared "
                             "(prepare_detectors)")
    if not chosen:
        return {}
    trainer = attack_trainer(cfg.trainer)
    runner = LightningRunner(trainer, cfg.data.num_workers)
    dirs, times = {}, {}
    for name, spec in chosen.items():
        detector = detectors[attacked[name]] if name in attacked else None  # type: ignore[index]
        root = Path(cfg.paths.cache_dir) / "attacks" / attack_set_key(spec, model_key, files, cfg.seed, detector)
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        dirs[name] = generate(spec.name, classifier.model, dataset, root, spec.get("params", {}),
                              batch_size=cfg.data.batch_size, num_classes=len(classifier.identities),
                              rank=trainer.global_rank, world_size=trainer.world_size, detector=detector,
                              label=name, seed=cfg.seed, runner=runner)
        times[name] = {"faces": len(files), "seconds": round(time.perf_counter() - start, 3)}
    if trainer.is_global_zero:
        write_text(Path(cfg.paths.output_dir) / "attack_stage.json",
                   json.dumps({"processes": trainer.world_size, "sets": times}, indent=1) + "\n")
    return dirs
