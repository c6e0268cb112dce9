"""A researcher's own detector and attack, in a package outside the repository, with their configs in a folder of
their own: `ami-eval` runs them beside the built-in ones, and nothing inside the repository is edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DETECTOR = '''
"""Maximum softmax probability (Hendrycks and Gimpel 2017): a low top-1 probability is suspicious."""
import torch

from ami_lightning.detectors.base import Detector


class MaxSoftmax(Detector):
    score_unit = "1 - top-1 softmax probability, in [0, 1)"
    rule = "flagged when the score is above `threshold`"
    needs_calibration = False

    def __init__(self, model, threshold: float = 0.5) -> None:
        super().__init__(model)
        self.threshold = threshold

    @staticmethod
    def check_params(params):
        t = params.get("threshold", 0.5)
        return [] if 0.0 < t < 1.0 else [f"threshold={t!r}: expected a probability in (0, 1)"]

    def score(self, x, logits=None):
        logits = self.model(x) if logits is None else logits
        return 1.0 - logits.softmax(dim=1).amax(dim=1)

    def evaluate(self, x, logits):
        score = self.score(x, logits)
        return score, score > self.threshold

    def evasion_loss(self, x, targets, exact=False):
        return torch.nn.functional.cross_entropy(self.model(x), targets, reduction="none")

    def parameters_dict(self):
        return {"threshold": self.threshold}
'''

ATTACK = '''
"""Uniform noise of +-eps pixel units: an attack that rarely fools anything, with the package's seeds."""
import torch

from ami_lightning.attacks.base import Attack, AttackResult, is_success, uniform_noise


class UniformNoise(Attack):
    target_mode = "untargeted"
    file_format = "npy"

    def __init__(self, eps: float = 4.0) -> None:
        self.eps = eps

    @staticmethod
    def check_params(params):
        return [] if params.get("eps", 4.0) > 0 else [f"eps={params['eps']!r}: expected > 0 pixel units"]

    def run(self, model, images, labels, targets, seeds):
        noise = (uniform_noise(seeds, tuple(images.shape[1:]), images.device) * 2 - 1) * self.eps
        adversarial = (images + noise).clamp(0, 255)
        with torch.no_grad():
            success = is_success(model(adversarial), labels, targets)
        return AttackResult.build(adversarial, images, success, torch.ones_like(labels))
'''


@pytest.fixture
def own_package(tmp_path: Path) -> tuple[Path, Path]:
    """(folder to put on PYTHONPATH, config folder) of a package ``mylab`` with one detector and one attack."""
    root = tmp_path / "outside"
    package = root / "mylab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "msp.py").write_text(textwrap.dedent(DETECTOR))
    (package / "noise.py").write_text(textwrap.dedent(ATTACK))
    conf = root / "conf"
    (conf / "detector").mkdir(parents=True)
    (conf / "attack").mkdir()
    (conf / "detector" / "msp.yaml").write_text("# @package detectors.msp\ntype: mylab.msp:MaxSoftmax\n"
                                                "params: {threshold: 0.5}\n")
    (conf / "attack" / "noise.yaml").write_text("# @package attacks.noise\nname: mylab.noise:UniformNoise\n"
                                                "params: {eps: 4.0}\n")
    return root, conf


def _ami_eval(root: Path, conf: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "ami-eval"), "detector=[ami,msp]", "attack=[fgsm,noise]",
               f"hydra.searchpath=[file://{conf}]", "data.attack_faces=2", "data.benign.limit=4", "logger=none",
               f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}",
               "trainer.enable_progress_bar=false", *overrides]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ami_eval_runs_a_detector_and_an_attack_of_an_outside_package(
    own_package: tuple[Path, Path], tmp_path: Path
) -> None:
    root, conf = own_package
    done = _ami_eval(root, conf, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "logs" / "eval").iterdir() if (p / "results.json").is_file()]
    results = json.loads((run / "results.json").read_text())
    rows = {(s["detector"], s["name"]): s for s in results["sets"]}
    assert {d for d, _ in rows} == {"ami", "msp"}
    for detector in ("ami", "msp"):
        assert rows[(detector, "noise")]["n"] == rows[(detector, "fgsm")]["n"] == 2
        assert rows[(detector, "benign")]["n"] == 16  # 4 faces x 4 variants
    assert results["detectors"]["msp"]["type"] == "mylab.msp:MaxSoftmax"
    assert results["detectors"]["msp"]["params"] == {"threshold": 0.5}
    (manifest,) = (tmp_path / "cache" / "attacks").glob("*/mylab.noise.UniformNoise/manifest.jsonl")
    assert len(manifest.read_text().splitlines()) == 2


@pytest.mark.slow
def test_an_outside_components_own_checks_and_import_errors_are_reported_in_seconds(
    own_package: tuple[Path, Path], tmp_path: Path
) -> None:
    root, conf = own_package
    done = _ami_eval(root, conf, tmp_path, "detectors.msp.params.threshold=2", "attacks.noise.params.eps=-1",
                     "+detectors.bad.type=mylab.missing:Nothing")
    assert done.returncode != 0
    assert "detectors.msp.params.threshold=2: expected a probability in (0, 1)" in done.stderr
    assert "attacks.noise.params.eps=-1: expected > 0 pixel units" in done.stderr
    assert ("detectors.bad.type='mylab.missing:Nothing': cannot import 'mylab.missing:Nothing' (ModuleNotFoundError: "
            "No module named 'mylab.missing')") in done.stderr
    assert not (tmp_path / "cache" / "attacks").exists()  # refused before any work
