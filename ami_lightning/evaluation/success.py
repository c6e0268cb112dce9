"""Attack success and what a detector lets through, per sample and per face: pure functions of tensors.

* **Success** of an adversarial sample (:func:`attack_success`): the plain model predicts the attack's target when it
  had one (the targeted sets, and the adaptive ones, which choose their target per face), else any wrong identity.
* **SR@N** (Bryniarski et al., "Evading Adversarial Example Detection Defenses with Orthogonal Projected Gradient
  Descent", ICLR 2022): the fraction of an attack set's evaluated samples that succeed *and* are not flagged when the
  detector's score threshold is set at N % benign FPR
  (:attr:`~ami_lightning.evaluation.thresholds.OperatingPoint.evaded` counts them).
* **Worst case over attacks** (MEAD, Granese et al., ECML PKDD 2022): per face and detector, over every attack set
  that fooled the plain model on that face, the face counts as detected only if all those adversarial versions were
  flagged (:func:`worst_case`). A face none of the attacks fooled is not counted in the detection rate; the
  undetected rate ("some attack got through") is over every face that was attacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def attack_success(pred: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the plain model's top-1 ``pred`` (N,) equals the target where ``targets`` (N,) is >= 0, and
    differs from the true ``labels`` (N,) where it is -1 (untargeted or unknown)."""
    return torch.where(targets >= 0, pred == targets, pred != labels)


@dataclass(frozen=True)
class WorstCase:
    """One detector's worst case over a run's attack sets, in faces: ``faces`` attacked (with at least one evaluated
    adversarial file), ``fooled`` of them fooled by at least one set, ``caught`` of those with every fooling version
    flagged; ``fooled - caught`` faces had some attack get through."""

    faces: int
    fooled: int
    caught: int

    @property
    def through(self) -> int:
        """Faces on which some attack fooled the plain model unflagged."""
        return self.fooled - self.caught


def face_verdicts(faces: Sequence[Sequence[str]], fooled: Sequence[torch.Tensor], flagged: Sequence[torch.Tensor]
                  ) -> tuple[set[str], dict[str, bool]]:
    """(the attacked faces, {face fooled by at least one sample: whether the detector catches every such sample}),
    per set ``i``: ``faces[i]`` names the face of each of its evaluated samples (N_i,), ``fooled[i]`` (N_i,) bool
    whether the sample fools the plain model, ``flagged[i]`` (N_i,) bool whether the detector flags it (by its rule or
    at a threshold). A face's samples in several sets (or twice in one) all count; faces sorted by name."""
    if not len(faces) == len(fooled) == len(flagged):
        raise ValueError(f"{len(faces)} face lists, {len(fooled)} fooled and {len(flagged)} flagged masks")
    attacked: set[str] = set()
    caught: dict[str, bool] = {}
    for names, fool, flag in zip(faces, fooled, flagged, strict=True):
        if not len(names) == len(fool) == len(flag):
            raise ValueError(f"{len(names)} faces but {len(fool)} fooled and {len(flag)} flagged values")
        for name, f, g in zip(names, fool.tolist(), flag.tolist(), strict=True):
            attacked.add(name)
            if f:
                caught[name] = caught.get(name, True) and bool(g)
    return attacked, dict(sorted(caught.items()))


def worst_case(faces: Sequence[Sequence[str]], fooled: Sequence[torch.Tensor], flagged: Sequence[torch.Tensor]
               ) -> WorstCase:
    """The :class:`WorstCase` over attack sets of :func:`face_verdicts`: faces attacked, faces fooled, and faces
    fooled whose every fooling sample the detector flags."""
    attacked, caught = face_verdicts(faces, fooled, flagged)
    return WorstCase(faces=len(attacked), fooled=len(caught), caught=sum(caught.values()))
