"""The wheel a non-editable `pip install .` builds holds every module of the four packages."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("arena", "dim", "implicit_gen", "eval")


def test_the_wheel_holds_every_module_and_the_packaged_weights(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(src).as_posix() for pkg in PACKAGES for p in (src / pkg).rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel"
    assert {"arena/data/__init__.py", "eval/tables/__init__.py"} <= names
    assert {p.relative_to(src).as_posix() for p in (src / "eval" / "weights").glob("*.pt")} <= names
