"""FGSM / BIM (foolbox), patch and eyeglasses, the registry, and resumable, sharded set generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ami_lightning.data.datasets import FaceFiles
from attacks.base import make_targets
from attacks.generate import generate, merge_manifests, read_manifest
from attacks.gradient import BIM, FGSM
from attacks.masked import Eyeglasses, Patch, eyeglasses_mask, patch_mask
from attacks.registry import ATTACK_SETS, create_attack
from tests.toy import toy_classifier, toy_faces

TINY = {  # the smallest budgets each attack accepts, for the registry-wide test
    "patch": {"steps": 2}, "glasses": {"steps": 2}, "cw_l0": {"steps": 2}, "cw_li": {"steps": 2},
    "cw_l2": {"binary_search_steps": 1, "steps": 2}, "fgsm": {}, "bim": {"steps": 2},
}


def _tiny(name: str) -> dict:
    return next(v for k, v in TINY.items() if name.startswith(k))


def test_targets() -> None:
    labels = torch.tensor([0, 1, 9])
    assert make_targets(labels, "first", 10).tolist() == [1, 0, 0]
    assert make_targets(labels, "next", 10).tolist() == [1, 2, 0]
    assert make_targets(labels, "untargeted", 10) is None
    with pytest.raises(ValueError, match="unknown target mode 'last'"):
        make_targets(labels, "last", 10)


def test_masks() -> None:
    square = patch_mask(224, 224)
    rows, cols = square.nonzero().T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (145, 203, 145, 203) and square.sum() == 59 * 59
    glasses = eyeglasses_mask(224, 224)
    rows, cols = glasses.nonzero().T
    assert 34 <= rows.min() and rows.max() <= 95 and 9 <= cols.min() and cols.max() <= 180
    assert 1500 < glasses.sum() < 5000  # frames, not filled lenses
    assert int(eyeglasses_mask(112, 112).sum()) == pytest.approx(int(glasses.sum()) / 4, rel=0.1)


@pytest.mark.parametrize("attack", [FGSM(eps=48.0), BIM(eps=48.0, steps=10)])
def test_linf_attacks_respect_eps_and_fool_the_toy(attack) -> None:
    model, (x, y) = toy_classifier(32), toy_faces(32)
    result = attack(model, x, y)
    assert result.linf.max() <= attack.eps + 1e-4
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 255
    with torch.no_grad():
        assert torch.equal(result.success, model(result.adversarial).argmax(1) != y)
    assert result.success.float().mean() >= (0.8 if isinstance(attack, BIM) else 0.1)


@pytest.fixture(scope="module")
def gallery():
    from ami_lightning.builders import dlib_gallery, shipped_faces

    classifier = dlib_gallery()
    faces, _ = shipped_faces(4)
    return classifier.model, faces.float(), torch.arange(4)


@pytest.mark.parametrize(
    ("attack", "region"),
    [(Eyeglasses(steps=60, lr=4.0), eyeglasses_mask(224, 224)), (Patch(top=40, left=60, size=100, steps=60, lr=4.0),
                                                                  patch_mask(224, 224, 40, 60, 100))],
)
def test_masked_attacks_reach_targets_and_touch_only_the_mask(gallery, attack, region) -> None:
    model, x, y = gallery
    targets = make_targets(y, "next", 238)
    result = attack(model, x, y, targets)
    assert result.success.float().mean() >= 0.75
    outside = ~region.expand_as(x)
    assert torch.equal(result.adversarial[outside], x[outside])  # bit for bit
    assert (result.l0 <= region.sum()).all()
    with torch.no_grad():
        assert torch.equal(model(result.adversarial).argmax(1)[result.success], targets[result.success])


def test_a_sample_does_not_depend_on_its_batch_mates() -> None:
    model, (x, y) = toy_classifier(32), toy_faces(32)
    attack = Patch(top=60, left=60, size=100, steps=20, lr=4.0, check_every=0)
    together = attack(model, x[:4], y[:4], make_targets(y[:4], "next", 10))
    alone = attack(model, x[2:3], y[2:3], make_targets(y[2:3], "next", 10))
    torch.testing.assert_close(together.adversarial[2:3], alone.adversarial, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", sorted(ATTACK_SETS))
def test_every_registered_set_builds_and_runs(name: str) -> None:
    model, (x, y) = toy_classifier(32), toy_faces(32)
    spec = ATTACK_SETS[name]
    attack = create_attack(name, **_tiny(name))
    result = attack(model, x[:2], y[:2], make_targets(y[:2], spec.target, 10))
    assert result.adversarial.shape == (2, 3, 32, 32) and result.success.dtype == torch.bool
    assert result.l0.shape == result.l2.shape == result.linf.shape == result.iterations.shape == (2,)
    assert spec.file_format == ("png" if name.startswith(("patch", "glasses")) else "npy")


def test_registry_errors() -> None:
    with pytest.raises(KeyError, match="unknown attack set 'cw_l3_first'; registered"):
        create_attack("cw_l3_first")
    with pytest.raises(TypeError, match="attack set 'fgsm': bad parameters"):
        create_attack("fgsm", steps=3)
    with pytest.raises(ValueError, match="images must lie in the bounds"):
        FGSM()(toy_classifier(32), toy_faces(32)[0] * 2, toy_faces(32)[1])


@pytest.fixture
def toy_files(tmp_path: Path) -> FaceFiles:
    x, y = toy_faces(32)
    paths = []
    for i, image in enumerate(x):
        path = tmp_path / "faces" / f"Person_{i}_1.0_2.0_3.0_4.0.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).to(torch.uint8).numpy()).save(path)
        paths.append(path)
    return FaceFiles(paths, y.tolist())


def test_generate_formats_and_manifest(toy_files: FaceFiles, tmp_path: Path) -> None:
    model = toy_classifier(32)
    folder = generate("bim", model, toy_files, tmp_path / "out", {"eps": 48.0, "steps": 5}, batch_size=4)
    rows = read_manifest(folder / "manifest.jsonl")
    assert sorted(rows) == sorted(f"{p.stem}.npy" for p in toy_files.paths)
    array = np.load(folder / "Person_3_1.0_2.0_3.0_4.0.npy")
    assert array.dtype == np.float32 and array.shape == (3, 32, 32)
    row = rows["Person_3_1.0_2.0_3.0_4.0.npy"]
    assert row["identity"] == "Person" and row["label"] == 3 and row["target"] == -1 and row["linf"] <= 48.0001
    assert set(row) >= {"original_pred", "adversarial_pred", "success", "l0", "l2", "iterations", "seconds", "source"}
    png = generate("glasses_next", model, toy_files, tmp_path / "out", {"steps": 3}, batch_size=4)
    image = Image.open(png / "Person_0_1.0_2.0_3.0_4.0.png")
    assert image.size == (32, 32) and image.mode == "RGB"
    assert read_manifest(png / "manifest.jsonl")["Person_0_1.0_2.0_3.0_4.0.png"]["target"] == 1


def test_generate_resumes_after_a_kill(toy_files: FaceFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import attacks.generate as gen

    model, calls, real_save = toy_classifier(32), [], gen._save

    def dying_save(pixels, path, file_format):
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed mid-batch, after 5 files
        calls.append(path.name)
        real_save(pixels, path, file_format)

    monkeypatch.setattr(gen, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        generate("fgsm", model, toy_files, tmp_path, {"eps": 8.0}, batch_size=4)
    folder = tmp_path / "fgsm"
    assert len(read_manifest(folder / "manifest.jsonl")) == 5 and not list(folder.glob("*.tmp"))
    first = sorted(calls)
    monkeypatch.setattr(gen, "_save", lambda p, path, f: (calls.append(path.name), real_save(p, path, f)))
    generate("fgsm", model, toy_files, tmp_path, {"eps": 8.0}, batch_size=4)
    assert len(calls) == 10 and sorted(calls[5:]) == sorted(set(f"{p.stem}.npy" for p in toy_files.paths) - set(first))
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 10 and len({json.loads(line)["file"] for line in lines}) == 10


def test_sharded_generation_merges(toy_files: FaceFiles, tmp_path: Path) -> None:
    model = toy_classifier(32)
    for rank in (0, 1):
        generate("fgsm", model, toy_files, tmp_path, {"eps": 8.0}, batch_size=4, rank=rank, world_size=2)
    folder = tmp_path / "fgsm"
    shards = [read_manifest(folder / f"manifest.rank{r}.jsonl") for r in (0, 1)]
    assert len(shards[0]) == 5 and len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])
    merged = read_manifest(merge_manifests(folder))
    assert len(merged) == 10 and not list(folder.glob("manifest.rank*"))
