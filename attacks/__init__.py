"""Attack generators of the AmI evaluation (pixel space [0, 255]).

Every attack is an :class:`Attack`: ``attack(model, images, labels, targets=None) -> AttackResult`` on float pixels
(B, 3, H, W) in [0, 255]. The published sets are built by name (:func:`create_attack`, :data:`ATTACK_SETS`); writing
whole sets to disk is the pipeline's (:func:`ami_lightning.pipeline.generation.generate`). The C&W attacks live in
:mod:`ami_lightning.attacks.cw` (imported on use).
"""

from ami_lightning.attacks.base import Attack, AttackResult, distortions, is_success, make_targets
from ami_lightning.attacks.gradient import BIM, FGSM
from ami_lightning.attacks.masked import Eyeglasses, Patch, eyeglasses_mask, patch_mask
from ami_lightning.attacks.registry import ATTACK_SETS, AttackSpec, create_attack, get_spec

__all__ = [
    "ATTACK_SETS",
    "BIM",
    "FGSM",
    "Attack",
    "AttackResult",
    "AttackSpec",
    "Eyeglasses",
    "Patch",
    "create_attack",
    "distortions",
    "eyeglasses_mask",
    "get_spec",
    "is_success",
    "make_targets",
    "patch_mask",
]
