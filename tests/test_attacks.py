"""FGSM / BIM (foolbox), patch and eyeglasses, and the attack-set registry.

The toy classifier (``tests.toy``, 32 x 32) is trained with noise and has logit margins of 20-60, so it takes large
perturbations: Linf 48-64 pixel units, and a patch far larger than the published 59 x 59 at 224 (here a centred
144 x 144, i.e. 20 x 20 pixels at 32). Eyeglass frames do not move it at all, so their success is checked on dlib's
gallery of 10 identities (a few seconds on 2 idle cores); on the toy they are checked for what they change.
"""

from __future__ import annotations

from collections.abc import Callable

import foolbox as fb
import pytest
import torch
from omegaconf import OmegaConf

from ami_lightning.attacks.base import Attack, make_targets
from ami_lightning.attacks.gradient import BIM, FGSM
from ami_lightning.attacks.masked import Eyeglasses, MaskedAttack, Patch, eyeglasses_mask, patch_mask
from ami_lightning.attacks.registry import ATTACK_SETS, AttackSpec, create_attack, register, register_attack
from ami_lightning.cli import config_dir
from tests.toy import NUM_CLASSES, toy_classifier, toy_detector, toy_faces

BIG_PATCH = {"top": 40, "left": 40, "size": 144}  # in 224-frame pixels: rows / columns 6-25 of a 32 image
TINY = {  # the smallest budget of each family, for the registry-wide test
    "patch": {"steps": 2}, "glasses": {"steps": 2}, "cw_l0": {"steps": 2}, "cw_li": {"steps": 2},
    "cw_l2": {"binary_search_steps": 1, "steps": 2}, "fgsm": {}, "bim": {"steps": 2},
    "adaptive": {"steps": 2, "k_targets": 2}, "selective": {"steps": 2, "k_targets": 2},
    "orthogonal": {"steps": 2, "k_targets": 2},
}


@pytest.fixture(scope="module")
def toy() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    images, labels = toy_faces(32)
    return toy_classifier(32), images, labels


def _outside_unchanged(attack: MaskedAttack, adversarial: torch.Tensor, images: torch.Tensor) -> bool:
    outside = ~attack.mask(*images.shape[-2:]).expand_as(images)
    return torch.equal(adversarial[outside], images[outside])  # bit for bit


def test_targets() -> None:
    labels = torch.tensor([0, 1, 9])
    assert make_targets(labels, "first", 10).tolist() == [1, 0, 0]
    assert make_targets(labels, "next", 10).tolist() == [1, 2, 0]
    assert make_targets(labels, "untargeted", 10) is None
    with pytest.raises(ValueError, match="unknown target mode 'last'"):
        make_targets(labels, "last", 10)


def test_masks_sit_where_the_published_samples_changed_pixels() -> None:
    square = patch_mask(224, 224)
    rows, cols = square.nonzero().T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (145, 203, 145, 203) and square.sum() == 59 * 59
    rows, cols = patch_mask(32, 32).nonzero().T  # scaled: 145 * 32 / 224 = 20.7 -> 21
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (21, 28, 21, 28)
    glasses = eyeglasses_mask(224, 224)
    rows, cols = glasses.nonzero().T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (34, 95, 9, 179)
    assert 1500 < glasses.sum() < 5000 and not glasses[65, 50] and not glasses[65, 139]  # frames, open lenses
    assert glasses[59, 94]  # the bridge
    assert int(eyeglasses_mask(112, 112).sum()) == pytest.approx(int(glasses.sum()) / 4, rel=0.1)
    assert eyeglasses_mask(224, 224, thickness=14).sum() > 1.6 * glasses.sum()


@pytest.mark.parametrize("attack", [FGSM(eps=48.0), BIM(eps=48.0, steps=10)], ids=["fgsm", "bim"])
def test_untargeted_linf_attacks_respect_eps_and_fool_the_toy(toy, attack: Attack) -> None:
    model, x, y = toy
    result = attack(model, x, y)
    assert result.linf.max() <= attack.eps + 1e-4
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 255
    with torch.no_grad():
        assert torch.equal(result.success, model(result.adversarial).argmax(1) != y)
    rate = result.success.float().mean().item()
    print(f"{type(attack).__name__} eps {attack.eps}: untargeted success {rate:.0%}")
    assert rate >= (0.8 if isinstance(attack, BIM) else 0.1)  # FGSM: 60 % on the toy


@pytest.mark.parametrize("mode", ["first", "next"])
def test_targeted_linf_attacks_reach_their_targets(toy, mode: str) -> None:
    model, x, y = toy
    targets = make_targets(y, mode, NUM_CLASSES)
    bim = BIM(eps=64.0, steps=10)(model, x, y, targets)
    assert bim.linf.max() <= 64.0 + 1e-4 and bim.success.sum() >= 8
    with torch.no_grad():
        assert torch.equal(bim.success, model(bim.adversarial).argmax(1) == targets)
    fgsm = FGSM(eps=8.0)(model, x, y, targets)  # foolbox's FGSM refuses targets: our one-step BIM path
    assert fgsm.linf.max() <= 8.0 + 1e-4 and (fgsm.iterations == 1).all()


def test_targeted_fgsm_path_is_foolbox_fgsm(toy) -> None:
    """The one-step BIM used for targeted FGSM gives foolbox's FGSM image when both run untargeted."""
    model, x, y = toy
    fmodel = fb.PyTorchModel(model, bounds=(0, 255), device=x.device)
    _, ours, _ = FGSM(eps=8.0).targeted_attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=8.0)
    _, theirs, _ = fb.attacks.LinfFastGradientAttack()(fmodel, x, y, epsilons=8.0)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("mode", ["first", "next"])
def test_patch_reaches_its_targets_and_touches_only_the_square(toy, mode: str) -> None:
    model, x, y = toy
    targets = make_targets(y, mode, NUM_CLASSES)
    attack = Patch(**BIG_PATCH, steps=100)
    result = attack(model, x, y, targets)
    assert result.success.sum() >= 8
    assert _outside_unchanged(attack, result.adversarial, x)
    assert (result.l0 <= 20 * 20).all() and result.adversarial.min() >= 0 and result.adversarial.max() <= 255
    with torch.no_grad():
        assert torch.equal(result.success, model(result.adversarial).argmax(1) == targets)
    assert ((result.iterations < 100) == result.success).all()


def test_eyeglasses_start_from_solid_frames_and_touch_only_them(toy) -> None:
    model, x, y = toy
    attack = Eyeglasses(colour=(128.0, 64.0, 0.0), steps=1, lr=4.0)
    result = attack(model, x, y, make_targets(y, "first", NUM_CLASSES))
    frames = attack.mask(32, 32).expand_as(x)
    assert _outside_unchanged(attack, result.adversarial, x)
    colour = torch.tensor([128.0, 64.0, 0.0]).view(1, 3, 1, 1).expand_as(x)
    assert (result.adversarial - colour)[frames].abs().max() <= 4.0  # one step of 4 from the colour, clipped at 0
    more = Eyeglasses(steps=30)(model, x, y, make_targets(y, "first", NUM_CLASSES))
    assert torch.equal(more.adversarial, more.adversarial.round())  # integer steps from integer pixels: PNG-exact


@pytest.mark.parametrize(
    "attack",
    [Patch(**BIG_PATCH, steps=30, check_every=0), Eyeglasses(steps=10), BIM(eps=32.0, steps=5)],
    ids=["patch", "glasses", "bim"],
)
def test_a_sample_does_not_depend_on_its_batch_mates(toy, attack: Attack) -> None:
    model, x, y = toy
    targets = make_targets(y, "next", NUM_CLASSES)
    together = attack(model, x[:5], y[:5], targets[:5])
    alone = attack(model, x[2:3], y[2:3], targets[2:3])
    torch.testing.assert_close(together.adversarial[2:3], alone.adversarial, atol=1e-3, rtol=0)
    assert together.iterations[2] == alone.iterations[0] and together.success[2] == alone.success[0]


def test_early_stop_check_only_changes_the_time(toy) -> None:
    model, x, y = toy
    targets = make_targets(y, "next", NUM_CLASSES)
    never, often = (Patch(**BIG_PATCH, steps=40, check_every=c)(model, x, y, targets) for c in (0, 1))
    assert torch.equal(never.adversarial, often.adversarial) and torch.equal(never.iterations, often.iterations)


def _counted(method: Callable[..., object], calls: list[str]) -> Callable[..., object]:
    def wrapper(self: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(method.__name__)
        return method(self, *args, **kwargs)

    return wrapper


def test_masked_loop_does_not_wait_for_the_device_per_step(toy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host synchronisations (bool(), item(), tolist(), cpu(), numpy() of a tensor) do not grow with the steps; with
    ``check_every`` they grow by one per check."""
    model, x, y = toy
    targets = make_targets(y, "next", NUM_CLASSES)
    calls: list[str] = []
    for name in ("__bool__", "item", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, _counted(getattr(torch.Tensor, name), calls))

    def count(attack: MaskedAttack) -> int:
        calls.clear()
        attack(model, x, y, targets)
        return len(calls)

    assert count(Eyeglasses(steps=3, check_every=0)) == count(Eyeglasses(steps=30, check_every=0))
    assert count(Eyeglasses(steps=30, check_every=10)) == count(Eyeglasses(steps=30, check_every=0)) + 3


@pytest.mark.parametrize("mode", ["first", "next"])
def test_masked_attacks_on_dlib_gallery(mode: str) -> None:
    """Published eyeglass geometry, and a patch over the face, on dlib's ResNet gallery of 10 identities."""
    from ami_lightning.data.identities import identity_from_filename
    from ami_lightning.data.shipped import shipped_faces
    from ami_lightning.models.dlib_resnet import load_dlib_resnet
    from ami_lightning.models.gallery import FaceGallery

    faces, files = shipped_faces(10)
    model = FaceGallery(load_dlib_resnet(), [identity_from_filename(f) for f in files])
    model.enrol(faces.float(), torch.arange(10))
    x, y = faces[:4].float(), torch.arange(4)
    targets = make_targets(y, mode, 10)
    for attack in (Eyeglasses(steps=60), Patch(top=40, left=60, size=100, steps=60)):
        result = attack(model, x, y, targets)
        assert result.success.sum() >= 3 and _outside_unchanged(attack, result.adversarial, x)


@pytest.mark.parametrize("name", sorted(ATTACK_SETS))
def test_every_registered_set_builds_and_runs(toy, name: str) -> None:
    model, x, y = toy
    spec = ATTACK_SETS[name]
    detector = {"detector": toy_detector(32)} if spec.needs_detector else {}
    attack = create_attack(name, **next(v for k, v in TINY.items() if name.startswith(k)), **detector)
    model = detector["detector"].model if detector else model
    result = attack(model, x[:2], y[:2], make_targets(y[:2], spec.target_mode, NUM_CLASSES))
    assert result.adversarial.shape == (2, 3, 32, 32) and result.success.dtype == torch.bool
    assert result.l0.shape == result.l2.shape == result.linf.shape == result.iterations.shape == (2,)
    assert (result.targets is not None) == spec.needs_detector == name.startswith(("adaptive", "selective",
                                                                                   "orthogonal"))
    assert spec.file_format == ("png" if name.startswith(("patch", "glasses")) else "npy")
    untargeted = name in ("fgsm", "bim") or spec.needs_detector
    assert spec.target_mode == ("untargeted" if untargeted else name.rsplit("_", 1)[1])


def test_registry_names_and_errors(toy) -> None:
    # every registered attack has a config file of the attack group, and every such file names a registered attack:
    # adding an attack is its module and its YAML, no list here to extend
    named = {OmegaConf.load(path).name for path in (config_dir() / "attack").glob("*.yaml")}
    assert named == set(ATTACK_SETS)
    published = {f"{family}_{mode}" for family in ("patch", "glasses", "cw_l0", "cw_l2", "cw_li")
                 for mode in ("first", "next")} | {"fgsm", "bim"}
    assert published <= set(ATTACK_SETS)  # the 12 sets of the AmI release
    with pytest.raises(KeyError, match="unknown attack set 'cw_l3_first'; registered: adaptive_gradient, "
                                       "adaptive_transfer, bim, cw_l0_first"):
        create_attack("cw_l3_first")
    with pytest.raises(TypeError, match="attack set 'fgsm': bad parameters {'steps': 3}"):
        create_attack("fgsm", steps=3)
    with pytest.raises(ValueError, match="unknown target mode 'last'"):
        AttackSpec("mine", FGSM, "last", "npy")
    with pytest.raises(ValueError, match="'bim' is already registered"):
        register(AttackSpec("bim", BIM, "untargeted", "npy"))
    with pytest.raises(ValueError, match="'fgsm' is already registered"):
        register_attack("fgsm")(BIM)
    model, x, y = toy
    with pytest.raises(ValueError, match="images must lie in the bounds"):
        FGSM()(model, x * 2, y)
    with pytest.raises(ValueError, match="the mask covers no pixel"):
        Patch(size=1)(model, x[:1, :, :4, :4], y[:1])


def test_foolbox_attacks_leave_the_model_where_it_is(toy, monkeypatch: pytest.MonkeyPatch) -> None:
    """foolbox moves a model to cuda:0 whenever CUDA is present unless told its device: FGSM / BIM on CPU inputs must
    keep a CPU model on the CPU (here CUDA is made to look present)."""
    model, x, y = toy
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for attack in (FGSM(eps=8.0), BIM(eps=8.0, steps=2)):
        attack(model, x[:2], y[:2])
        assert {p.device.type for p in model.parameters()} == {"cpu"}
