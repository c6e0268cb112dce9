"""The distribution: one top-level package, configs and assets inside it, entry points that run from a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"attacks": "ami_lightning.attacks", "conf": "ami_lightning.conf"}  # repository folder -> installed package


def _tree_packages() -> set[str]:
    """Every package of the checkout under its installed name (folders with an ``__init__.py``)."""
    names = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ami_lightning").rglob("__init__.py")}
    for folder, package in MAPPED.items():
        names |= {".".join((package, *p.parent.relative_to(ROOT / folder).parts)) for p in
                  (ROOT / folder).rglob("__init__.py")}
    return names


def test_package_list_covers_the_tree() -> None:
    """pyproject.toml lists its packages explicitly (for the attacks/ and conf/ mapping): none may be missing."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(tool["packages"]) == _tree_packages()
    assert tool["package-dir"] == {package: folder for folder, package in MAPPED.items()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, cwd=out)
    (built,) = out.glob("ami_lightning-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_one_top_level_package_with_configs_and_assets(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ami_lightning"}
    for member in ("ami_lightning/conf/run.yaml", "ami_lightning/conf/experiment/default.yaml",
                   "ami_lightning/attacks/registry.py", "ami_lightning/assets/faces/manifest.csv",
                   "ami_lightning/assets/witness_faces/base_img.jpg"):
        assert member in names, member
    assert sum(n.startswith("ami_lightning/assets/faces/") and n.endswith(".jpg") for n in names) == 238


@pytest.mark.slow
def test_entry_point_from_the_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """The wheel's code (not the checkout's) runs ``ami-eval`` from a folder outside the checkout, with its own
    configs and a user's extra config folder on the search path."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    extra = tmp_path / "my_conf" / "experiment"
    extra.mkdir(parents=True)
    (extra / "tiny.yaml").write_text("# @package _global_\ndata:\n  benign:\n    limit: 2\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import ami_lightning.attacks as a, ami_lightning.conf as c;"
                            "print(a.__file__); print(c.__file__)"], env=env, cwd=work, capture_output=True,
                           text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    script = Path(sys.executable).parent / "ami-eval"
    done = subprocess.run([str(script), "--config-dir", str(tmp_path / "my_conf"), "experiment=tiny", "attack=[]",
                           "logger=none", "trainer.enable_progress_bar=false"], env=env, cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = (work / "logs" / "eval").glob("*/results.json")
    assert '"name": "benign"' in results.read_text()
