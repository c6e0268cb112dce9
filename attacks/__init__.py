"""Attack generators of the AmI evaluation (pixel space [0, 255]).

Every attack is an :class:`Attack`: ``attack(model, images, labels, targets=None) -> AttackResult`` on float pixels
(B, 3, H, W) in [0, 255]. The published sets are built by name (:func:`create_attack`, :data:`ATTACK_SETS`); writing
whole sets to disk is the pipeline's (:func:`ami_lightning.pipeline.generation.generate`). Every module of this
package is imported here, so the attacks registered in them by ``@register_attack``
(:mod:`ami_lightning.attacks.registry`) are known once the package is: a new module needs no list to join.
"""

import importlib
import pkgutil

from ami_lightning.attacks.base import Attack, AttackResult, distortions, is_success, make_targets
from ami_lightning.attacks.gradient import BIM, FGSM
from ami_lightning.attacks.masked import Eyeglasses, Patch, eyeglasses_mask, patch_mask
from ami_lightning.attacks.registry import ATTACK_SETS, AttackSpec, create_attack, get_spec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
