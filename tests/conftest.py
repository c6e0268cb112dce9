"""Shared fixtures: the reference data of the AmI release (``../shared/reference``) and a random-weight VGG-Face.

Everything runs on CPU with small batches; tests that need CUDA are marked ``gpu`` and skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ami_lightning.images import load_image
from ami_lightning.models.base import PixelModel, kaiming_init_
from ami_lightning.models.vgg_face import VggFace, vgg_face

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _cpu_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(f"reference data of the AmI release not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def random_vgg() -> PixelModel:
    """VGG-Face with He-initialised random weights (input-dependent predictions), in eval mode."""
    return vgg_face(kaiming_init_(VggFace(), seed=0))


@pytest.fixture(scope="session")
def faces(reference: Path) -> torch.Tensor:
    """The first 48 shipped reference faces, (48, 3, 224, 224) float pixels in [0, 255]."""
    paths = sorted((reference / "faces").glob("*.png"))[:48]
    return torch.stack([load_image(p) for p in paths]).float()


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
