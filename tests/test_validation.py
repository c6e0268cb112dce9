"""``check_config`` and ``check_model_layers``: every mistake fails in seconds, naming the key, the value and what is
allowed. Configs are composed as the command line would (no model is built)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ami_lightning.attacks.registry import ATTACK_SETS, create_attack
from ami_lightning.cli import config_dir
from ami_lightning.data.shipped import face_files
from ami_lightning.pipeline.validation import (
    ConfigError,
    check_config,
    check_model_layers,
    config_files,
    config_sources,
)
from tests.conftest import compose_config, published_sets

FACES = len(face_files())
DLIB_LAYERS = ("relu1", "maxpool", *(f"relu{i}" for i in range(2, 30)), "avgpool")  # load_dlib_resnet()
SHIPPED_SETS = sorted(p.stem for p in (config_dir() / "attack").glob("*.yaml"))  # the attack group's options
DETECTOR_OPTIONS = sorted(p.stem for p in (config_dir() / "detector").glob("*.yaml"))  # the detector group's
PUBLISHED_SETS = tuple(published_sets())


def refused(name: str, overrides: list[str], *messages: str) -> ConfigError:
    """Compose, check, and assert that the one ConfigError holds each of ``messages`` on a line of its own."""
    with pytest.raises(ConfigError, match=re.escape(messages[0])) as caught:
        check_config(compose_config(name, overrides))
    lines = str(caught.value).splitlines()
    for message in messages:
        assert any(message in line for line in lines), (message, lines)
    return caught.value


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# ---- what ships is valid -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "overrides"), [
    ("run", []), ("eval", []), ("attack", []), ("witness", []),
    ("run", ["experiment=adaptive"]), (
        "eval", [f"attack=[{','.join(SHIPPED_SETS)}]", f"detector=[{','.join(DETECTOR_OPTIONS)}]"]),
    ("run", ["attack=[fgsm]"]),  # budgets of the sets left out stay, without a name
    ("eval", ["ami=caffe", "logger=none", "data.attack_faces=null", "fpr_targets=[0.01,0.05]"]),
    ("eval", ["logger=wandb"]), ("eval", ["trainer=ddp_sim"]), ("eval", ["hparams_search=grid"]),
    ("witness", ["ami.attributes=[mouth,leye]"]),
    ("eval", ["+attacks.glasses_next.params.steps=30", "+attacks.patch_first.params.lr=2",
              "+attacks.adaptive_gradient.params.gradient=exact", "+trainer.max_epochs=1"]),
])
def test_shipped_configs_pass(name: str, overrides: list[str]) -> None:
    check_config(compose_config(name, overrides))


@pytest.mark.parametrize("trainer", ["gpu", "ddp"], ids=["one-device", "two-devices"])  # an id "gpu": skipped
def test_gpu_trainers_pass_where_cuda_is(trainer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda(monkeypatch, 2)
    check_config(compose_config("eval", [f"trainer={trainer}"]))


# ---- 1, 2: attack sets and their parameters ------------------------------------------------------------------------
def test_unknown_attack_set_names_the_key_and_the_registered_sets() -> None:
    refused("eval", ["+attacks.cw_l2_nxt.params.steps=5"],
            "attacks.cw_l2_nxt: unknown attack set (did you mean cw_l2_next?); registered: adaptive_gradient, "
            "adaptive_transfer, bim, cw_l0_first,")


def test_unknown_attack_parameter_names_the_set_and_its_parameters() -> None:
    refused("eval", ["+attacks.cw_l2_next.params.stepz=5"],
            "attacks.cw_l2_next.params.stepz=5: not a parameter of cw_l2_next (CarliniWagnerL2) (did you mean steps?); "
            "allowed: binary_search_steps, steps, lr, initial_const, confidence, abort_early, sync_every")
    refused("run", ["+attacks.patch_first.params.colour=[1,2,3]"],  # Eyeglasses' parameter, not Patch's
            "attacks.patch_first.params.colour=[1, 2, 3]: not a parameter of patch_first (Patch); "
            "allowed: top, left, size, steps, lr, momentum, check_every")


def test_the_detector_of_adaptive_sets_comes_from_the_pipeline() -> None:
    refused("eval", ["attack=[adaptive_transfer]", "+attacks.adaptive_transfer.params.detector=1"],
            "attacks.adaptive_transfer.params.detector: the pipeline passes the detector named by "
            "attacks.adaptive_transfer.detector; it is not set by the params")
    refused("eval", ["+attacks.adaptive_gradient.params.k_target=2"],
            "attacks.adaptive_gradient.params.k_target=2: not a parameter of adaptive_gradient (DetectorGradient) "
            "(did you mean k_targets?); allowed: gradient, eps, steps, rel_stepsize, k_targets, random_start")
    refused("eval", ["attack=[adaptive_gradient_fs]", "~attacks.adaptive_gradient_fs.detector"],
            "attacks.adaptive_gradient_fs.detector: missing; name the detector this adaptive set attacks, one of "
            "the run's detectors (ami, feature_squeezing)")
    refused("eval", ["attack=[adaptive_gradient]", "detector=[feature_squeezing]"],
            "attacks.adaptive_gradient.detector='ami': not among the run's detectors (feature_squeezing); add it "
            "with detector=[...]")
    refused("eval", ["attack=[fgsm]", "+attacks.fgsm.detector=ami"],
            "attacks.fgsm.detector='ami': this attack does not attack a detector; remove the key")


def test_attack_parameter_values_are_checked_by_the_attack() -> None:
    refused("run", ["attack=[orthogonal_ami]", "attacks.orthogonal_ami.params.project=sideways"],
            "attacks.orthogonal_ami.params.project='sideways': expected one of both, off_target, on_target")
    refused("run", ["attack=[adaptive_transfer]", "attacks.adaptive_transfer.params.random_start=sometimes"],
            "attacks.adaptive_transfer.params.random_start='sometimes': expected true or false")


def test_attack_set_nodes_hold_only_their_name_detector_and_params() -> None:
    refused("eval", ["attack=[fgsm]", "+attacks.fgsm.parms.eps=4"],
            "attacks.fgsm.parms: unknown key of an attack set (did you mean params?); allowed: name, detector, params")
    refused("eval", ["attack=[fgsm]", "attacks.fgsm.name=bimm"],
            "attacks.fgsm.name='bimm': unknown attack set (did you mean bim?); registered: adaptive_gradient,")
    refused("eval", ["attack=[fgsm]", "attacks.fgsm.params=3"],
            "attacks.fgsm.params=3: expected a mapping of parameter -> value")


def test_every_registered_attack_has_a_shipped_set() -> None:
    named = {OmegaConf.load(config_dir() / "attack" / f"{stem}.yaml").name for stem in SHIPPED_SETS}
    assert named == set(ATTACK_SETS)


def test_every_set_lists_its_parameters_without_building_an_attack() -> None:
    expected = {"fgsm": ["eps"], "bim": ["eps", "steps", "rel_stepsize", "abs_stepsize"],
                "glasses_first": ["colour", "thickness", "steps", "lr", "momentum", "check_every"],
                "cw_l0_next": ["steps", "lr", "initial_const", "max_const", "const_factor", "shrink", "negligible",
                               "confidence", "sync_every"],
                "adaptive_transfer": ["detector", "eps", "steps", "rel_stepsize", "k_targets", "random_start"]}
    for name, params in expected.items():
        assert list(ATTACK_SETS[name].parameters()) == params
    for name in PUBLISHED_SETS + ("adaptive_transfer", "adaptive_gradient"):
        assert "steps" in ATTACK_SETS[name].parameters() or name == "fgsm"
    spec = ATTACK_SETS["cw_l2_next"]
    assert spec.factory.__name__ == "CarliniWagnerL2" and spec.target_mode == "next"  # registered by its decorator
    assert type(create_attack("cw_l2_next", steps=3)).__name__ == "CarliniWagnerL2"


# ---- 3: values -------------------------------------------------------------------------------------------------------
VALUE_CASES = [  # (override, message)
    ("ami.weaken=abc", "ami.weaken='abc': expected a finite number > 0"),
    ("ami.weaken=-1", "ami.weaken=-1: expected a finite number > 0"),
    ("ami.weaken=nan", "ami.weaken=nan: expected a finite number > 0"),
    ("ami.strengthen0=0", "ami.strengthen0=0: expected a finite number > 0"),
    ("ami.strengthen1=true", "ami.strengthen1=true: expected a finite number > 0"),
    ("fpr_targets=0.05", "fpr_targets=0.05: expected a non-empty list of numbers in (0, 1), like [0.05]"),
    ("fpr_targets=[]", "fpr_targets=[]: expected a non-empty list of numbers in (0, 1), like [0.05]"),
    ("fpr_targets=[5,10]", "fpr_targets=[5, 10]: expected a non-empty list of numbers in (0, 1), like [0.05]"),
    ("data.batch_size=0", "data.batch_size=0: expected an integer > 0"),
    ("data.batch_size=1.5", "data.batch_size=1.5: expected an integer > 0"),
    ("data.num_workers=-1", "data.num_workers=-1: expected an integer >= 0"),
    ("data.attack_faces=-3", f"data.attack_faces=-3: expected null (all {FACES} shipped faces) or an integer in "
                             f"[0, {FACES}]"),
    (f"data.attack_faces={FACES + 1}", f"data.attack_faces={FACES + 1}: expected null"),
    ("data.on_error=skp", "data.on_error='skp': expected one of raise, skip"),
    ("data.npy_legacy=yes", "data.npy_legacy='yes': expected true or false"),
    ("seed=abc", "seed='abc': expected an integer"),
    ("ami.witness_format=txt", "ami.witness_format='txt': expected one of vgg_face_dag, caffe"),
    ("ami.crop_layers=pool3", "ami.crop_layers='pool3': expected a list of layer names, like [pool3] or []"),
    ("ami.caffe_median=no", "ami.caffe_median='no': expected true or false"),
    ("ami.attributes=[nose,ear]", "ami.attributes=['nose', 'ear']: expected a non-empty list of distinct attributes "
                                  "among leye, reye, nose, mouth, like [leye,reye,mouth]"),
    ("ami.attributes=[]", "ami.attributes=[]: expected a non-empty list of distinct attributes among leye, reye, "),
    ("ami.attributes=[nose,nose]", "ami.attributes=['nose', 'nose']: expected a non-empty list of distinct "),
    ("trainer.devices=0", "trainer.devices=0: expected an integer >= 1"),
    ("data.benign.variants=[flip,blur]", "data.benign.variants=['flip', 'blur']: expected a non-empty list of flip, "
                                         "shift, scale, jpeg"),
]


def test_impossible_values_name_the_key_value_and_what_is_allowed() -> None:
    """Each case on its own line of one error (a few compositions, each key once per composition)."""
    batches: list[dict[str, str]] = []
    for override, message in VALUE_CASES:
        key = override.split("=")[0]
        batch = next((b for b in batches if key not in {o.split("=")[0] for o in b}), None)
        if batch is None:
            batches.append(batch := {})
        batch[override] = message
    for batch in batches:
        error = refused("eval", list(batch), *batch.values())
        assert len(error.problems) == len(batch), error


def test_all_problems_come_in_one_error_one_per_line() -> None:
    error = refused("eval", ["ami.weaken=abc", "data.batch_size=0", "+ami.weakn=5"],
                    "ami.weaken='abc': expected a finite number > 0", "data.batch_size=0: expected an integer > 0",
                    "ami.weakn=5: unknown key in ami")
    assert str(error).startswith("invalid configuration (3 problems):\n")
    assert len(error.problems) == 3 and all("\n" not in p for p in error.problems)
    assert pickle.loads(pickle.dumps(error)).problems == error.problems  # crosses process boundaries intact
    assert isinstance(error, ValueError)


def test_gpu_trainer_without_cuda_suggests_the_cpu(no_cuda: None) -> None:
    refused("eval", ["trainer=gpu"],
            "trainer.accelerator='gpu': no CUDA GPU is available here; use trainer=cpu")
    refused("eval", ["trainer.accelerator=cuda"], "trainer.accelerator='cuda': no CUDA GPU is available here")


def test_more_devices_than_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda(monkeypatch, 1)
    refused("eval", ["trainer=ddp"], "trainer.devices=2: expected an integer in [1, 1] (the CUDA GPUs here)")


# ---- 4: unknown keys -------------------------------------------------------------------------------------------------
def test_unknown_keys_in_ami_and_data_list_what_the_files_define() -> None:
    refused("eval", ["+ami.weakn=5"],
            "ami.weakn=5: unknown key in ami (did you mean weaken?); the config files define: "
            "attributes, caffe_median, crop_layers, strengthen0, strengthen1, weaken, witness_format, witnesses")
    refused("eval", ["+data.batchsize=4"],
            "data.batchsize=4: unknown key in data (did you mean batch_size?); the config files define: attack_faces, "
            "attacks_dir, batch_size, benign, fit, npy_legacy, num_workers, on_error")
    refused("eval", ["+paths.vgg_weights=w.pth"], "paths.vgg_weights='w.pth': unknown key in paths (did you mean "
                                                  "vgg_face_weights?); the config files define: attacks_dir,")


def test_unknown_top_level_keys_per_primary_config() -> None:
    refused("eval", ["+weaken=5"], "weaken=5: unknown top-level key (did you mean ami.weaken?); allowed: ami, attacks,")
    refused("eval", ["+fpr_target=[0.1]"], "fpr_target=[0.1]: unknown top-level key (did you mean fpr_targets?)")
    refused("witness", ["+fpr_targets=[0.1]"], "fpr_targets=[0.1]: unknown top-level key; allowed: ami, attacks,")


def test_keyword_arguments_of_targets() -> None:
    refused("eval", ["+trainer.max_epoch=1"],
            "trainer.max_epoch=1: not a parameter of lightning.pytorch.Trainer (did you mean max_epochs?); it takes: "
            "accelerator, strategy, devices,")
    refused("eval", ["+model.faces_dirr=x"],
            "model.faces_dirr='x': not a parameter of ami_lightning.models.classifiers.dlib_gallery "
            "(did you mean faces_dir?); it takes: faces_dir, batch_size")
    refused("eval", ["+data.benign.limt=3"],
            "data.benign.limt=3: not a parameter of ami_lightning.data.benign.shipped_probes (did you mean limit?)")


def test_allowed_keys_come_from_the_config_files_including_the_users(tmp_path: Path) -> None:
    files = config_files(config_sources(compose_config("eval")))
    assert files.keys_at(("ami",)) >= {"weaken", "crop_layers", "witness_format"}
    assert "fpr_targets" in files.top_level("eval") and "fpr_targets" not in files.top_level("witness")
    # the primaries share conf/common.yaml (seed) and run.yaml includes eval.yaml: their keys count as the includer's
    assert files.own_keys("run") == files.own_keys("eval") | {"task_name"} >= {"seed", "fpr_targets", "objective"}
    assert files.own_keys("witness") == files.own_keys("attack") == {"task_name", "seed"}
    assert "attacks" in files.top_level("witness")  # the attack group's package
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text("defaults:\n  - shipped\n  - _self_\nmy_option: 3\n")
    check_config(compose_config("eval", [f"hydra.searchpath=[file://{tmp_path}]", "data=mine"]))
    refused("eval", ["+data.my_option=3"], "data.my_option=3: unknown key in data")
    # the ami group is AmI's parameters (detectors.ami.params: ${ami}): a key of the user's there is allowed by the
    # files but not by the detector, and is named where the user set it
    user = tmp_path / "user"  # another folder: config_files caches what a folder holds
    (user / "ami").mkdir(parents=True)
    (user / "ami" / "mine.yaml").write_text("defaults:\n  - published\n  - _self_\nmy_factor: 3.0\n")
    refused("eval", [f"hydra.searchpath=[file://{user}]", "ami=mine"],
            "ami.my_factor=3.0: not a parameter of detector 'ami'; allowed: weaken, strengthen0, strengthen1,")


# ---- 5: crop layers against the built model ------------------------------------------------------------------------
def test_crop_layers_must_be_hookable_layers_of_the_model() -> None:
    cfg = compose_config("eval", ["ami=published"])
    with pytest.raises(ConfigError, match=re.escape(
            "ami.crop_layers=['pool3']: pool3 is not among the model's hookable layers; expected some of: relu1, "
            "maxpool, relu2, ") + ".*" + re.escape("relu29, avgpool (or [] to crop none)")):
        check_model_layers(cfg, DLIB_LAYERS)
    check_model_layers(compose_config("eval", ["ami=published", "ami.crop_layers=[]"]), DLIB_LAYERS)
    check_model_layers(cfg, ("relu3_3", "pool3", "relu4_1"))
    with pytest.raises(ConfigError, match=re.escape("ami.crop_layers=['pool3', 'pool9']: pool9 is not among")):
        check_model_layers(compose_config("eval", ["ami.crop_layers=[pool3,pool9]"]), ("pool3",))


# ---- 6: the paths an experiment needs ------------------------------------------------------------------------------
def test_seed_table_names_every_missing_path_at_once() -> None:
    error = refused("eval", ["experiment=seed_table"],
                    "paths.vgg_face_weights=null: not given; the run needs VGG-Face's weights (vgg_face_dag.pth)",
                    "paths.vgg_names=null: not given; the run needs VGG-Face's 2622 identity names (names.txt)",
                    "paths.benign_dir=null: not given; the run needs the benign images",
                    "paths.attacks_dir=null: not given, and data.attack_faces=0 generates no attack samples; give the "
                    "folder of the attack sets (patch_first, patch_next,")
    assert len(error.problems) == 4


def _seed_table_paths(root: Path) -> list[str]:
    (root / "benign").mkdir()
    for name in ("vgg_face_dag.pth", "names.txt", "benign_list.txt"):
        (root / name).write_text("x")
    for name in PUBLISHED_SETS:
        (root / "attacks" / name).mkdir(parents=True)
    return [f"paths.vgg_face_weights={root / 'vgg_face_dag.pth'}", f"paths.vgg_names={root / 'names.txt'}",
            f"paths.benign_dir={root / 'benign'}", f"paths.benign_list={root / 'benign_list.txt'}",
            f"paths.attacks_dir={root / 'attacks'}"]


def test_seed_table_with_its_paths_passes(tmp_path: Path) -> None:
    paths = _seed_table_paths(tmp_path)
    check_config(compose_config("eval", ["experiment=seed_table", *paths]))
    check_config(compose_config("eval", ["experiment=seed_table", *paths[:3], "paths.attacks_dir=null", "attack=[]"]))


def test_paths_that_do_not_exist(tmp_path: Path) -> None:
    paths = _seed_table_paths(tmp_path)
    gone = tmp_path / "gone"
    refused("eval", ["experiment=seed_table", *paths[:3], f"paths.benign_list={gone}.txt",
                     f"paths.attacks_dir={gone}"],
            f"paths.benign_list='{gone}.txt': no such file; the run needs the list of benign file names to use there",
            f"paths.attacks_dir='{gone}': no such folder; the run reads the attack sets (patch_first,")
    (tmp_path / "attacks" / "fgsm").rmdir()
    (tmp_path / "attacks" / "bim").rmdir()
    refused("eval", ["experiment=seed_table", *paths],
            f"paths.attacks_dir='{tmp_path / 'attacks'}': no sub-folder for the attack sets fgsm, bim")
    refused("eval", ["attack=[fgsm]", f"data.attacks_dir={gone}"],  # the shipped data preset: no interpolation
            f"data.attacks_dir='{gone}': no such folder")
    refused("eval", [f"model.faces_dir={gone}", f"ami.witnesses={gone}"],
            f"model.faces_dir='{gone}': no such folder", f"ami.witnesses='{gone}': no such folder")


# ---- set and detector names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("entry", "key"), [
    ("fgsm.v2", "attacks['fgsm.v2']"), ("../x", "attacks['../x']"), ("/tmp/x", "attacks['/tmp/x']"),
    ("a/b", "attacks['a/b']"), ("..", "attacks['..']"),
])
def test_set_names_that_are_not_plain_folder_names_are_refused(entry: str, key: str) -> None:
    """Before: a dotted name showed ``<object object at 0x...>``; ``/tmp/x`` and ``../x`` were read (or generated)
    outside ``data.attacks_dir``."""
    error = refused("eval", [f"+attacks={{{entry}:{{name:fgsm}}}}"],
                    f"{key}: not a valid attack set name: a set's name is a folder under data.attacks_dir and a part "
                    "of metric names (<detector>/<set>/<metric>), so it is letters, digits, _ and - only")
    assert len(error.problems) == 1 and "object at 0x" not in str(error)


def test_detector_names_must_be_plain_too() -> None:
    error = refused("eval", ["+detectors={ami.v2:{type:ami}}"], "detectors['ami.v2']: not a valid detector name")
    assert "object at 0x" not in str(error)


def test_an_unknown_option_of_a_group_lists_the_options() -> None:
    """Before: ``detector=[amii]`` said only "Could not load 'detector/amii'" (Hydra lists the options only for a
    group chosen alone, as ``model=...``)."""
    from hydra.errors import MissingConfigException

    for override, group, options in (("detector=[amii]", "detector", "\tami\n\tfeature_squeezing\n"),
                                     ("attack=[fgsm,bimm]", "attack", "\tadaptive_gradient\n"),
                                     ("model=dlibb", "model", "\tdlib_resnet\n")):
        with pytest.raises(MissingConfigException) as caught:
            compose_config("eval", [override])
        message = str(caught.value)
        assert f"Available options in '{group}':\n" in message and options in message
        assert message.count("Available options") == 1
