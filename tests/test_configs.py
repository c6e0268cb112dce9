"""Every config composes: each primary config, each experiment, and each option of every group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ami_lightning.cli import config_dir
from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.shipped import face_files
from ami_lightning.models.classifiers import Classifier
from ami_lightning.pipeline.stages import attack_stage, attacked_detectors, selected_attacks, stage_device
from tests.conftest import compose_config, cpu_config, published_sets
from tests.toy import toy_classifier

CONF = config_dir()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))
PUBLISHED_SETS = published_sets()


def _resolve(cfg: DictConfig) -> dict:
    """Every interpolation of the job's config (Hydra's own node aside: it holds per-job values such as job.num)."""
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    return OmegaConf.to_container(job, resolve=True)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("primary", ["witness", "eval", "attack", "run"])
def test_primary_configs_compose(primary: str, tmp_path: Path) -> None:
    cfg = cpu_config(compose_config(primary), tmp_path)
    assert cfg.task_name == primary
    _resolve(cfg)
    assert Path(cfg.hydra.run.dir).relative_to(cfg.paths.log_dir).parts[0] == primary
    assert Path(cfg.hydra.sweep.dir).relative_to(cfg.paths.log_dir).parts[:2] == (primary, "multiruns")


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    override = f"attack=[{option}]" if group == "attack" else f"{group}={option}"
    cfg = cpu_config(compose_config("eval", [override]), tmp_path)
    _resolve(cfg)


def test_default_experiment_has_a_published_set_per_family_and_the_pgd_variants_against_each_detector(
    tmp_path: Path,
) -> None:
    cfg = cpu_config(compose_config("run"), tmp_path)
    published = ["patch_next", "glasses_next", "cw_l0_next", "cw_l2_next", "cw_li_next", "fgsm", "bim"]
    adaptive = {"selective_ami": ("selective_pgd", "ami"),
                "selective_feature_squeezing": ("selective_pgd", "feature_squeezing")}
    selected = [name for name, node in cfg.attacks.items() if node.get("name")]
    assert selected == [*published, *adaptive] and set(published) < set(PUBLISHED_SETS)
    assert list(cfg.detectors) == ["ami", "feature_squeezing", "mahalanobis", "lid", "nic"]
    assert cfg.model._target_ == "ami_lightning.models.classifiers.dlib_gallery"
    assert all(cfg.attacks[name].name == name for name in published)
    assert {name: (cfg.attacks[name].name, cfg.attacks[name].detector) for name in adaptive} == adaptive
    assert all(cfg.attacks[name].params.eps == 2.5 for name in adaptive)
    # the sets left out keep their CPU budgets for attack=[...] (Carlini's, the same on AmI and Feature Squeezing)
    assert cfg.attacks.adaptive_gradient.params == cfg.attacks.adaptive_gradient_fs.params
    assert cfg.attacks.adaptive_transfer.params == cfg.attacks.adaptive_transfer_fs.params
    orthogonal = cpu_config(compose_config("run", ["attack=[orthogonal_ami,orthogonal_feature_squeezing]"]), tmp_path)
    for name in ("selective_ami", "orthogonal_ami", "selective_feature_squeezing", "orthogonal_feature_squeezing"):
        chosen = cfg if name.startswith("selective") else orthogonal
        params = {k: v for k, v in chosen.attacks[name].params.items() if k != "project"}  # orthogonal PGD's own
        assert params == {"eps": 2.5, "steps": 30, "rel_stepsize": 0.2, "k_targets": 2, "random_start": False}
    projects = {orthogonal.attacks[name].params.project for name in ("orthogonal_ami", "orthogonal_feature_squeezing")}
    assert projects == {"both"}  # the paper's; the README measures the others on dlib
    assert orthogonal.attacks.orthogonal_ami.params.steps == 30  # the main job's CPU budget, selected by attack=


def test_attack_list_on_the_command_line_selects_sets_of_the_experiment(tmp_path: Path) -> None:
    """``ami-run attack=[bim]`` keeps the experiment's budget entries of the other sets, without a name; only the
    named sets are selected."""
    cfg = cpu_config(compose_config("run", ["attack=[bim,adaptive_gradient]"]), tmp_path)
    assert "patch_first" in cfg.attacks and "name" not in cfg.attacks.patch_first
    assert list(selected_attacks(cfg)) == ["bim", "adaptive_gradient"] and attacked_detectors(cfg) == ["ami"]
    assert attacked_detectors(cpu_config(compose_config("run", ["attack=[bim]"]), tmp_path)) == []
    both = cpu_config(compose_config("run", ["attack=[adaptive_gradient_fs,adaptive_transfer]"]), tmp_path)
    assert attacked_detectors(both) == ["ami", "feature_squeezing"]  # in the run's order of detectors


def test_seed_table_names_missing_paths(tmp_path: Path) -> None:
    cfg = cpu_config(compose_config("eval", ["experiment=seed_table"]), tmp_path)
    assert Path(cfg.ami.witnesses, "leye_neurons.txt").is_file()  # the release's published lists, shipped
    with pytest.raises(InstantiationException, match=r"paths.vgg_face_weights \(None\), paths.vgg_names \(None\)"):
        instantiate(cfg.model)


def test_trainer_options(tmp_path: Path) -> None:
    for option, accelerator, devices in (("cpu", "cpu", 1), ("gpu", "gpu", 1), ("ddp", "gpu", 2),
                                          ("ddp_sim", "cpu", 2)):
        cfg = compose_config("eval", [f"trainer={option}"])
        assert (cfg.trainer.accelerator, cfg.trainer.devices) == (accelerator, devices)
        assert cfg.trainer.use_distributed_sampler is False


def test_witness_and_attack_stages_follow_the_trainer_to_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = cpu_config(compose_config("run"), tmp_path)
    gpu = compose_config("run", ["trainer=gpu"])
    assert stage_device(cpu) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert stage_device(gpu) == torch.device("cpu")  # asked for a GPU, none there: the test stage will say so
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert stage_device(gpu) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert stage_device(gpu) == torch.device("cuda", 1)
    assert stage_device(cpu) == torch.device("cpu")


def test_adaptive_experiment_compares_bim_at_the_adaptive_budget(tmp_path: Path) -> None:
    cfg = cpu_config(compose_config("run", ["experiment=adaptive"]), tmp_path)
    detector_pgd = ["selective_ami", "orthogonal_ami", "selective_feature_squeezing", "orthogonal_feature_squeezing"]
    assert list(selected_attacks(cfg)) == ["bim", "adaptive_transfer", "adaptive_gradient", "adaptive_transfer_fs",
                                           "adaptive_gradient_fs", *detector_pgd]
    adaptive = cfg.attacks.adaptive_transfer.params
    assert (adaptive.eps, adaptive.steps, adaptive.k_targets) == (2.5, 100, 8)
    for name in ("bim", "adaptive_gradient", "adaptive_transfer_fs", "adaptive_gradient_fs", *detector_pgd):
        params = cfg.attacks[name].params
        assert (params.eps, params.steps, params.rel_stepsize) == (adaptive.eps, adaptive.steps, adaptive.rel_stepsize)
    assert cfg.data.attack_faces is None


def test_adaptive_sets_without_their_detector_are_refused(tmp_path: Path) -> None:
    cfg = cpu_config(compose_config("attack", ["attack=[fgsm,adaptive_transfer]"]), tmp_path)
    classifier = Classifier("toy", toy_classifier(32), [identity_from_filename(f) for f in face_files()])
    with pytest.raises(ValueError, match="attack set 'adaptive_transfer' attacks the detector 'ami': attack_stage "
                                         "needs it prepared"):
        attack_stage(cfg, classifier, detectors={})
    assert not (Path(cfg.paths.cache_dir) / "attacks").exists()  # refused before any set was generated
