"""Datasets, the shard sampler, the torchmetrics rate and the Lightning evaluation module."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from ami_lightning.data.datamodule import EvalDataModule, ShardSampler
from ami_lightning.data.datasets import SKIPPED, FaceFiles, attack_set, load_pixels
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.steering import detection_score
from ami_lightning.evaluation.module import DetectorEvalModule
from ami_lightning.evaluation.rates import eligible_mask, flag_rate
from ami_lightning.models.vgg_face import VGG_FACE_MEAN
from tests.toy import PixelSet, toy_eval_sets

NAMES = ["Aaron_Tveit", "Cher", "Ed_Begley_Jr."]


def _write_faces(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, name in enumerate(NAMES):
        array = rng.uniform(0, 255, (3, 8, 8)).astype(np.float32)
        path = folder / f"{name}_{i}_1.0_2.0_3.0_4.0.npy"
        np.save(path, array)
        paths.append(path)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "Cher_9_1_2_3_4.png")
    return paths


def test_npy_loading_and_legacy_mode(tmp_path: Path) -> None:
    path = _write_faces(tmp_path)[0]
    array = np.load(path)
    assert torch.equal(load_pixels(path), torch.from_numpy(array))
    legacy = load_pixels(path, npy_legacy=True)
    mean = torch.tensor(VGG_FACE_MEAN).view(3, 1, 1)
    torch.testing.assert_close(legacy - mean, torch.from_numpy(array).flip(0))  # BGR, no mean subtracted
    np.save(tmp_path / "bad.npy", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"bad.npy: expected an array of shape \(3, H, W\)"):
        load_pixels(tmp_path / "bad.npy")


def test_folder_labels_and_errors(tmp_path: Path) -> None:
    _write_faces(tmp_path / "set")
    data = FaceFiles.from_folder(tmp_path / "set", NAMES)
    assert [p.name.split("_")[0] for p in data.paths] == ["Aaron", "Cher", "Cher", "Ed"]
    assert data.labels == [0, 1, 1, 2]
    pixels, label, index = data[3]
    assert pixels.shape == (3, 8, 8) and label == 2 and index == 3
    assert data[2][0].dtype == torch.float32 and data[2][0].max() == 200  # the PNG
    with pytest.raises(KeyError, match=r"Ed_Begley_Jr._2_1.0_2.0_3.0_4.0.npy: identity 'Ed_Begley_Jr.' is not one"):
        FaceFiles.from_folder(tmp_path / "set", ["Aaron_Tveit", "Cher"])
    (tmp_path / "set" / "Aaron_Tveit_5_1_2_3_4.jpg").write_bytes(b"not a jpeg")
    broken = FaceFiles.from_folder(tmp_path / "set", NAMES)
    with pytest.raises(ValueError, match="bad face file .*Aaron_Tveit_5_1_2_3_4.jpg: cannot decode image"):
        broken[1]
    skipping = FaceFiles.from_folder(tmp_path / "set", NAMES, on_error="skip")
    assert skipping[1][1] == SKIPPED and skipping[1][0].shape == (3, 8, 8)
    with pytest.raises(FileNotFoundError, match="face folder not found"):
        FaceFiles.from_folder(tmp_path / "nope", NAMES)


def test_manifest_and_list(tmp_path: Path) -> None:
    paths = _write_faces(tmp_path / "fgsm")
    rows = [{"file": p.name, "label": i, "identity": NAMES[i]} for i, p in enumerate(paths)]
    (tmp_path / "fgsm" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = attack_set(tmp_path, "fgsm", NAMES)
    assert data.paths == paths and data.labels == [0, 1, 2]
    listed = FaceFiles.from_list(tmp_path / "fgsm", [paths[2].name], NAMES)
    assert listed.labels == [2]
    with pytest.raises(FileNotFoundError, match="1 listed files missing"):
        FaceFiles.from_list(tmp_path / "fgsm", ["Cher_7_1_2_3_4.jpg"], NAMES)


@pytest.mark.parametrize(("length", "world"), [(10, 1), (10, 3), (2, 4), (0, 2)])
def test_shard_sampler_covers_each_index_once(length: int, world: int) -> None:
    shards = [list(ShardSampler(length, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(length))
    assert [len(ShardSampler(length, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_eval_module_matches_direct_computation() -> None:
    detector, sets = toy_eval_sets(32)
    (x, y), (noisy, _), (_, wrong_labels) = sets["benign"], sets["noise"], sets["shifted"]
    datamodule = EvalDataModule(PixelSet(x, y), {"noise": PixelSet(noisy, y), "shifted": PixelSet(x, wrong_labels)}, 3)
    module = DetectorEvalModule({"ami": detector}, datamodule.set_names, fpr_targets=[0.3, 0.1, 0.3])
    assert module.fpr_targets == [0.1, 0.3]
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    scores = {}
    with torch.no_grad():
        for name, (pixels, labels) in {"benign": (x, y), "noise": (noisy, y), "shifted": (x, wrong_labels)}.items():
            original, steered = detector.model(pixels), detector.steered_logits(pixels)
            expected = flag_rate(original.argmax(1) != steered.argmax(1), original.argmax(1), labels,
                                 adversarial=name != "benign")
            row = module.results["ami"][name]
            assert (row["flagged"], row["eligible"], row["n"]) == (expected.flagged, expected.eligible, 10)
            batches = [pixels[i:i + 3] for i in range(0, 10, 3)]  # the module's batches: the same floats
            score = torch.cat([detection_score(detector.model(b), detector.steered_logits(b)) for b in batches])
            scores[name] = score[eligible_mask(original.argmax(1), labels, adversarial=name != "benign")].double()
    benign = scores["benign"]
    assert len(benign) == 10 and 0 < len(scores["noise"]) < 10  # the noise fools the toy model on some faces
    for name, set_scores in scores.items():
        row, eligible = module.results["ami"][name], len(set_scores)
        assert [p.target_fpr for p in row["operating_points"]] == [0.1, 0.3]
        for point, k in zip(row["operating_points"], (1, 3), strict=True):  # 10 % and 30 % of 10 benign scores
            threshold = benign.sort(descending=True).values[k].item()
            assert point.threshold == threshold and point.benign_fpr == k / 10
            assert point.detected == int((set_scores > threshold).sum()) <= eligible
    shifted = module.results["ami"]["shifted"]
    assert shifted["eligible"] == 10 and shifted["auroc"] is not None
    # 'shifted' holds the benign pixels again, as positives: the same scores as the negatives, so AUROC is 0.5 and
    # exactly the benign fraction is detected at each calibrated threshold
    assert shifted["auroc"] == pytest.approx(0.5)
    assert [p.detected for p in shifted["operating_points"]] == [1, 3]
    with pytest.raises(ValueError, match="first set must be 'benign'"):
        DetectorEvalModule({"ami": detector}, ["noise"])
    with pytest.raises(ValueError, match=r"a target FPR is a fraction in \[0, 1\], got 5"):
        DetectorEvalModule({"ami": detector}, ["benign"], fpr_targets=[0.05, 5])
    with pytest.raises(ValueError, match="no detector to evaluate"):
        DetectorEvalModule({}, ["benign"])
    other = AmIDetector(copy.deepcopy(detector.model), detector.witnesses)  # on another classifier instance
    with pytest.raises(ValueError, match="must share one classifier"):
        DetectorEvalModule({"ami": detector, "other": other}, ["benign"])
