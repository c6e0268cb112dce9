"""One parametrised test over every detector: each config file of ``conf/detector/`` (one per configured detector),
built through the pipeline on the toy classifier, prepared (setup, calibration) and checked for what the interface
promises: shapes, dtypes, device, the shared plain forward, batch independence, gradients, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from ami_lightning.cli import config_dir
from ami_lightning.data.datamodule import EvalDataModule
from ami_lightning.detectors import Detector, create_detector, registered_detectors
from ami_lightning.evaluation.module import DetectorEvalModule
from ami_lightning.models.classifiers import Classifier
from ami_lightning.pipeline import stages
from ami_lightning.pipeline.validation import ConfigError, check_config
from tests.conftest import compose_config, cpu_config
from tests.toy import NUM_CLASSES, PixelSet, toy_classifier, toy_faces, toy_witnesses

CONFIG_FILES = sorted((config_dir() / "detector").glob("*.yaml"))
NAMES = [f.stem for f in CONFIG_FILES]


def test_every_registered_detector_has_a_config_file_and_every_file_a_registered_type() -> None:
    types = {f.stem: OmegaConf.load(f)["type"] for f in CONFIG_FILES}
    assert set(types.values()) == set(registered_detectors())
    assert {"ami", "feature_squeezing", "feature_squeezing_face"} <= set(types)


@pytest.fixture(scope="module")
def noisy() -> tuple[torch.Tensor, torch.Tensor]:
    """Toy faces with noise (not the calibration images), (10, 3, 32, 32) pixels and labels."""
    x, y = toy_faces(32)
    g = torch.Generator().manual_seed(3)
    return (x + 40 * torch.randn(x.shape, generator=g)).clamp(0, 255).round(), y


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Detector]:
    """Every configured detector on the toy classifier, built and prepared by the pipeline (AmI reads the toy's
    witness lists through ``ami.witnesses``; calibration on the clean toy faces)."""
    out = tmp_path_factory.mktemp("detectors")
    toy_witnesses(32).write(out / "witnesses")
    cfg = cpu_config(compose_config("eval", [f"detector=[{','.join(NAMES)}]",
                                             f"ami.witnesses={out / 'witnesses'}"]), out)
    check_config(cfg)
    classifier = Classifier("toy", toy_classifier(32), [str(i) for i in range(NUM_CLASSES)])
    return stages.prepare_detectors(cfg, classifier, PixelSet(*toy_faces(32)), fit=toy_fit_set(32))


def toy_fit_set(size: int, copies: int = 6) -> PixelSet:
    """The benign fit set of the fitted detectors on the toy: ``copies`` noisy copies of each toy face (other noise
    than the ``noisy`` test images)."""
    x, y = toy_faces(size)
    g = torch.Generator().manual_seed(11)
    copied = torch.cat([(x + 20 * torch.randn(x.shape, generator=g)).clamp(0, 255).round() for _ in range(copies)])
    return PixelSet(copied, y.repeat(copies))


@pytest.mark.parametrize("name", NAMES)
def test_outputs_shapes_dtypes_and_shared_logits(prepared, noisy, name: str) -> None:
    detector = prepared[name]
    x, _ = noisy
    with torch.no_grad():
        logits = detector.model(x)
        out = detector(x)
        shared = detector(x, logits)
    assert out.logits.shape == (10, NUM_CLASSES) and out.logits.dtype == torch.float32
    assert out.score.shape == (10,) and out.score.is_floating_point() and bool(torch.isfinite(out.score).all())
    assert out.flagged.shape == (10,) and out.flagged.dtype == torch.bool
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(shared.score, out.score)
    assert torch.equal(shared.flagged, out.flagged)
    with torch.no_grad():
        torch.testing.assert_close(detector.score(x, logits), out.score)
    json.dumps(detector.description())  # JSON-able for results.json
    assert detector.description()["type"] in registered_detectors() and detector.name == name


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(prepared, noisy, name: str) -> None:
    detector = prepared[name]
    x, _ = noisy
    with torch.no_grad():
        together = detector(x)
        alone = [detector(x[i:i + 1]) for i in range(len(x))]
        mixed = detector(torch.cat([x[3:4], x[7:8]]))
    torch.testing.assert_close(torch.cat([a.score for a in alone]), together.score, rtol=1e-4, atol=1e-5)
    assert torch.equal(torch.cat([a.flagged for a in alone]), together.flagged)
    torch.testing.assert_close(mixed.score, together.score[[3, 7]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_pixels(prepared, noisy, name: str) -> None:
    detector = prepared[name]
    assert detector.gradient in ("exact", "straight-through", "none")
    x, _ = noisy
    if detector.gradient == "none":  # a detector without gradients must say so when an attacker asks for one
        with pytest.raises(ValueError):
            detector.evasion_loss(x[:4].clone().requires_grad_(True), torch.zeros(4, dtype=torch.long))
        return
    leaf = x[:4].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detector.score(leaf).sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
    targets = (torch.arange(4) + 1) % NUM_CLASSES
    leaf = x[:4].clone().requires_grad_(True)
    loss = detector.evasion_loss(leaf, targets)
    assert loss.shape == (4,)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bad_parameters_fail_clearly(prepared, name: str, tmp_path: Path) -> None:
    kind = prepared[name].kind
    with pytest.raises(TypeError, match=rf"detector '{kind}': bad parameters \['bogus'\]"):
        create_detector(kind, toy_classifier(32), bogus=1)
    cfg = cpu_config(compose_config("eval", [f"detector=[{name}]", f"+detectors.{name}.params.bogus=1"]), tmp_path)
    with pytest.raises(ConfigError, match=rf"detectors\.{name}\.params\.bogus=1: not a parameter of detector "
                                          rf"'{kind}'"):
        check_config(cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_outputs_on_the_gpu(prepared, noisy, name: str) -> None:
    detector, (x, _) = prepared[name], noisy
    try:
        with torch.no_grad():
            expected = detector(x).score
            gpu = detector.cuda()(x.cuda())
    finally:
        detector.cpu()
    assert gpu.score.device.type == gpu.flagged.device.type == gpu.logits.device.type == "cuda"
    torch.testing.assert_close(gpu.score.cpu(), expected, rtol=1e-3, atol=1e-4)


def test_config_errors_name_the_detector(tmp_path: Path) -> None:
    cfg = cpu_config(compose_config("eval"), tmp_path)
    with open_dict(cfg):
        cfg.detectors.feature_squeezing.type = "feature_squeezin"
        cfg.detectors.ami.params.weaken = 60.0
        cfg.detectors["extra"] = {"type": "ami", "paramz": {}}
    with pytest.raises(ConfigError) as caught:
        check_config(cfg)
    problems = "\n".join(caught.value.problems)
    assert "detectors.feature_squeezing.type='feature_squeezin': not a registered detector (did you mean " \
           "feature_squeezing?)" in problems
    assert "detectors.extra.paramz: unknown key of a detector (did you mean params?)" in problems
    cfg = cpu_config(compose_config("eval", ["detector=[]"]), tmp_path)
    with pytest.raises(ConfigError, match="detectors: none selected"):
        check_config(cfg)
    cfg = cpu_config(compose_config("eval", ["detector=[feature_squeezing]", "attack=[adaptive_gradient]"]),
                     tmp_path)
    with pytest.raises(ConfigError, match=r"attacks\.adaptive_gradient\.detector='ami': not among the run's "
                                          r"detectors \(feature_squeezing\)"):
        check_config(cfg)
    cfg = cpu_config(compose_config("eval", ["detector=[feature_squeezing]",
                                             "detectors.feature_squeezing.params.squeezers=[median_3x2]"]), tmp_path)
    with pytest.raises(ConfigError, match=r"detectors\.feature_squeezing\.params\.squeezers=\['median_3x2'\]"):
        check_config(cfg)


def test_one_pass_evaluates_every_detector_and_ami_is_unchanged_by_company(prepared, noisy) -> None:
    """The eval module with all detectors gives each the figures it gets alone (AmI's in particular)."""
    x, y = toy_faces(32)
    datamodule = EvalDataModule(PixelSet(x, y), {"noisy": PixelSet(*noisy)}, 4)

    def run(detectors: dict[str, Detector]) -> dict[str, dict[str, dict[str, object]]]:
        module = DetectorEvalModule(detectors, datamodule.set_names, bootstrap_resamples=50)
        pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   use_distributed_sampler=False).test(module, datamodule=datamodule, verbose=False)
        return module.results

    together = run(dict(prepared))
    assert list(together) == NAMES
    for name in NAMES:
        alone = run({name: prepared[name]})[name]
        for set_name in ("benign", "noisy"):
            keys = ("n", "eligible", "flagged", "auroc", "auroc_ci")
            assert {k: together[name][set_name][k] for k in keys} == {k: alone[set_name][k] for k in keys}
    assert together["feature_squeezing"]["benign"]["flagged"] <= 0.05 * together["feature_squeezing"]["benign"][
        "eligible"]


def test_detectors_reading_hooked_layers_share_one_forward_per_batch(prepared, noisy) -> None:
    from ami_lightning.detectors.fitting import prime

    fitted = {name: d for name, d in prepared.items() if d.feature_layers()}
    assert {"mahalanobis", "lid", "nic"} <= set(fitted)
    model = next(iter(fitted.values())).model
    x = noisy[0].clone()
    with torch.enable_grad():  # with autograd every detector runs its own forward: the reference
        separate = {name: d.score(x).detach() for name, d in fitted.items()}
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            logits = prime(model, x, fitted.values())
            shared = {name: d.score(x, logits) for name, d in fitted.items()}
            assert len(calls) == 1  # one forward for the plain logits and every detector's layers
            x.add_(7.0)  # changed in place: not served from the kept forward
            changed = {name: d.score(x) for name, d in fitted.items()}
        assert len(calls) == 2
    finally:
        handle.remove()
    for name in fitted:
        torch.testing.assert_close(shared[name], separate[name])
        assert not torch.equal(changed[name], shared[name])
