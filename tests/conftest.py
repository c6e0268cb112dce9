"""Shared fixtures: the faces shipped with the package, the reference data of the AmI release and a random-weight
VGG-Face.

Tests use the data shipped in ``ami_lightning/assets`` (:mod:`ami_lightning.data.shipped`) wherever it suffices, so a
clone
anywhere runs them. Only data that is not shipped (the release's attribute-mutated images, adversarial samples, Caffe
witness lists, PNG faces) is read from ``../shared/reference``; tests needing it fail, naming what they need, when it
is absent (:func:`reference_data`: CI runs beside ``../shared``, so a missing folder is a broken set-up, not a reason
to pass). The environment variable ``AMI_REFERENCE=<folder>`` overrides that path everywhere.

Everything runs on CPU with small batches; tests that need CUDA are marked ``gpu`` and skipped without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import face_files
from ami_lightning.models.base import PixelModel, kaiming_init_
from ami_lightning.models.vgg_face import VggFace, vgg_face

# The one source of the reference folder's path for all tests (test modules import it from here).
REFERENCE = Path(os.environ.get("AMI_REFERENCE") or Path(__file__).resolve().parents[2] / "shared" / "reference")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _cpu_threads() -> None:
    """Seed torch; under pytest-xdist (``-n N``) give each worker, and the entry points it starts as processes
    (``OMP_NUM_THREADS``, which torch reads at start-up), an equal share of the cores: 2 workers on 2 cores run 1
    thread each rather than 4 threads contending for 2 cores."""
    torch.manual_seed(0)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)  # torch's default: the cores it may use
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def reference_data(part: str) -> Path:
    """``REFERENCE / part``, data of the AmI release that is not shipped; the calling test fails naming it when it is
    absent (the tests run beside ``../shared``, as CI does)."""
    path = REFERENCE / part
    if not path.exists():
        pytest.fail(f"needs {path}: the AmI release's reference data, not shipped; run the tests in a checkout beside "
                    "../shared/reference", pytrace=False)
    return path


@pytest.fixture(scope="session")
def reference() -> Path:
    """The reference folder, for tests of data that is not shipped (prefer :func:`reference_data` for one part)."""
    return reference_data("README.md").parent


@pytest.fixture(scope="session")
def random_vgg() -> PixelModel:
    """VGG-Face with He-initialised random weights (input-dependent predictions), in eval mode."""
    return vgg_face(kaiming_init_(VggFace(), seed=0))


@pytest.fixture(scope="session")
def faces() -> torch.Tensor:
    """The first 48 faces shipped with the package (JPEG), (48, 3, 224, 224) float pixels in [0, 255]."""
    return torch.stack([load_image(p) for p in face_files()[:48]]).float()


# ---- Hydra configs: composed once per session, forced onto the CPU with tiny limits ---------------------------------
def compose_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the entry points do (Hydra's own config included, so interpolations such as
    ``${hydra:runtime.output_dir}`` resolve once :class:`HydraConfig` is set)."""
    from ami_lightning.cli import CONFIG_MODULE  # also registers the ${asset:...} resolver

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [], return_hydra_config=True)


def cpu_config(cfg: DictConfig, out: Path) -> DictConfig:
    """``cfg`` on the CPU, one process, small batches, outputs and caches under ``out``; HydraConfig set."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
        cfg.trainer.pop("strategy", None)
        cfg.trainer.enable_progress_bar = False
        cfg.data.batch_size = 16
        cfg.data.num_workers = 0
        cfg.paths.log_dir = str(out / "logs")
        cfg.paths.output_dir = str(out / "run")
        cfg.hydra.runtime.output_dir = str(out / "run")
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def cfg_eval_global() -> DictConfig:
    return compose_config("eval", ["logger=none"])


@pytest.fixture
def cfg_eval(cfg_eval_global: DictConfig, tmp_path: Path) -> DictConfig:
    return cpu_config(cfg_eval_global, tmp_path)


def random_predictions(
    n: int, classes: int, seed: int, p_correct: float, p_agree: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, original_pred, steered_pred), each (n,) long: the original model right with probability
    ``p_correct`` (else a random class), the steered one agreeing with it with probability ``p_agree``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    original = torch.where(torch.rand(n, generator=g) < p_correct, labels, torch.randint(0, classes, (n,), generator=g))
    steered = torch.where(torch.rand(n, generator=g) < p_agree, original, torch.randint(0, classes, (n,), generator=g))
    return labels, original, steered


def published_sets() -> list[str]:
    """The attack sets of the ``attack`` config group that attack no detector (the published attacks), read from the
    group's files: a set added there is found without a list to edit."""
    from omegaconf import OmegaConf

    from ami_lightning.cli import config_dir

    files = sorted((config_dir() / "attack").glob("*.yaml"))
    return [f.stem for f in files if OmegaConf.load(f).get("detector") is None]
