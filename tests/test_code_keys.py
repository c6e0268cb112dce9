"""Cache keys follow the code: an attack set's key holds a digest of its attack's module (and of the detector it is
made against), so an edit regenerates exactly the sets it can change."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ami_lightning.attacks import gradient
from ami_lightning.detectors import feature_squeezing
from ami_lightning.detectors.feature_squeezing import FeatureSqueezing
from ami_lightning.pipeline import cache
from ami_lightning.pipeline.cache import code_digest
from ami_lightning.pipeline.stages import attack_set_key
from tests.toy import toy_classifier, toy_detector

SETS = {
    "fgsm": {"name": "fgsm", "params": {"eps": 8.0}},
    "bim": {"name": "bim", "params": {"eps": 8.0, "steps": 10}},
    "cw_l2_next": {"name": "cw_l2_next", "params": {}},
    "selective_ami": {"name": "selective_pgd", "detector": "ami", "params": {"steps": 3}},
    "selective_feature_squeezing": {"name": "selective_pgd", "detector": "feature_squeezing", "params": {"steps": 3}},
    "orthogonal_feature_squeezing": {"name": "orthogonal_pgd", "detector": "feature_squeezing", "params": {}},
}


@pytest.fixture(scope="module")
def detectors() -> dict[str, object]:
    model = toy_classifier(32)
    return {"ami": toy_detector(32, model), "feature_squeezing": FeatureSqueezing(model)}


def _keys(detectors: dict[str, object]) -> dict[str, str]:
    files = [Path("Aaron_Tveit_5.jpg"), Path("Adam_Brody_3.jpg")]
    keys = {}
    for name, node in SETS.items():
        attacked = detectors[node["detector"]] if "detector" in node else None
        keys[name] = attack_set_key(OmegaConf.create(node), "model", files, 0, attacked)  # type: ignore[arg-type]
    return keys


def _edited(monkeypatch: pytest.MonkeyPatch, module: object, old: str, new: str) -> None:
    """Make every digest read ``module``'s source with ``old`` replaced by ``new`` (a changed copy of the file)."""
    target = Path(module.__file__).resolve()  # type: ignore[attr-defined]
    text = target.read_text()
    assert old in text
    read = cache._read_source
    monkeypatch.setattr(cache, "_read_source",
                        lambda path: text.replace(old, new).encode() if path == target else read(path))


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def test_editing_a_detectors_score_changes_the_keys_of_the_sets_made_against_it_only(
    detectors: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _keys(detectors)
    assert len(set(before.values())) == len(before)
    assert _keys(detectors) == before  # stable
    _edited(monkeypatch, feature_squeezing, "return max_l1_score(probs, [", "return 0.5 * max_l1_score(probs, [")
    assert _changed(before, _keys(detectors)) == {"selective_feature_squeezing", "orthogonal_feature_squeezing"}


def test_editing_one_attack_module_changes_only_its_sets_keys(
    detectors: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _keys(detectors)
    _edited(monkeypatch, gradient, "class BIM(", "class BIM(  # edited\n")
    assert _changed(before, _keys(detectors)) == {"fgsm", "bim"}  # both live in attacks/gradient.py


def test_the_digest_follows_imports_not_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A researcher's package: the detector module's digest covers the helper it imports, not a sibling it does
    not import; Feature Squeezing's and AmI's digests differ (one folder, two digests)."""
    package = tmp_path / "mydetectors"
    package.mkdir()
    (package / "__init__.py").write_text("from mydetectors.limits import LIMIT\n")  # a re-exported constant
    (package / "detector.py").write_text("from mydetectors import LIMIT\nfrom mydetectors.helper import SCALE\n\n"
                                         "def score():\n    return SCALE * LIMIT\n")
    (package / "helper.py").write_text("SCALE = 1\n")
    (package / "limits.py").write_text("LIMIT = (1, 2)\n")
    (package / "other.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mydetectors.detector as module

    before = code_digest(module.score)
    (package / "other.py").write_text("X = 2\n")
    assert code_digest(module.score) == before
    (package / "helper.py").write_text("SCALE = 2\n")
    assert code_digest(module.score) != before
    before = code_digest(module.score)
    (package / "limits.py").write_text("LIMIT = (1, 3)\n")  # the constant's module, reached through the package
    assert code_digest(module.score) != before
    assert code_digest(FeatureSqueezing) != code_digest(type(toy_detector(32)))
    with pytest.raises(ValueError, match="no source file"):
        code_digest(len)
