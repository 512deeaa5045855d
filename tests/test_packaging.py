"""The workspace's distributions: each wheel holds every module of its folder, and a node's role
imports nothing it does not install.

Packages are found automatically (`[tool.setuptools.packages.find]` with `namespaces = true`), so a
folder added under `ember/` lands in the wheel without a list to update; the first test fails if that
ever stops being true (a stray `ember/__init__.py` would, for one, hide every other member's modules).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = {
    "libs/common": "ember-common",
    "services/manager": "ember-manager",
    "services/builder": "ember-builder",
    "services/notifier": "ember-notifier",
    "services/flamelet": "ember-flamelet",
    "services/mldata": "ember-mldata",
}


def test_every_member_is_listed_and_named_as_expected() -> None:
    found = {str(p.parent.relative_to(ROOT)) for top in ("libs", "services") for p in ROOT.glob(f"{top}/*/pyproject.toml")}
    assert found == set(MEMBERS)
    for folder, name in MEMBERS.items():
        project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
        assert project["name"] == name
        # ember is a PEP 420 namespace shared by every member: an __init__.py would shadow the others.
        assert not (ROOT / folder / "ember" / "__init__.py").exists()


@pytest.mark.timeout(600)
def test_each_wheel_holds_every_module_of_its_folder(tmp_path: Path) -> None:
    # Build from copies: setuptools writes build/ and *.egg-info next to the sources it builds.
    folders = sorted(MEMBERS)
    sources = tmp_path / "src"
    for folder in folders:
        shutil.copytree(ROOT / folder, sources / folder, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
        + [str(sources / folder) for folder in folders],
        check=True,
        cwd=tmp_path,
    )
    for folder in folders:
        (wheel,) = wheels.glob(MEMBERS[folder].replace("-", "_") + "-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            packed = {name for name in archive.namelist() if name.endswith(".py")}
        source = ROOT / folder
        expected = {str(p.relative_to(source)) for p in (source / "ember").rglob("*.py") if "__pycache__" not in p.parts}
        assert expected, f"{folder} has no modules"
        assert expected - packed == set(), f"missing from {wheel.name}"
        assert all(name.startswith("ember/") for name in packed), f"{wheel.name} ships only the ember namespace"


# What each role may import, checked by importing its entry points in a fresh interpreter that refuses
# every distribution the role does not install (see docs/packaging.md).
NODE_MODULES = (
    "ember.flamelet.app",
    "ember.flamelet.__main__",
    "ember.mldata.app",
    "ember.mldata.__main__",
    "ember.actors.learner",
    "ember.actors.aggregator",
    "ember.actors.probe",
    "ember.cli.main",
)
BLOCK = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in BLOCKED:
            raise ImportError(f"{name} is not installed in this role")
        return None
sys.meta_path.insert(0, Refuse())
"""


def _import_without(modules: tuple[str, ...], blocked: set[str]) -> subprocess.CompletedProcess[str]:
    code = f"BLOCKED = {sorted(blocked)!r}\n" + BLOCK + "".join(f"import {m}\n" for m in modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_node_imports_none_of_the_hub_or_tool_dependencies() -> None:
    """A worker node installs ember-common[actor], ember-flamelet and ember-mldata: no MLflow server
    stack (Flask, gunicorn, graphene, huey), no pandas, SciPy, scikit-learn, matplotlib or PyMongo."""
    blocked = {"pymongo", "sklearn", "scipy", "pandas", "matplotlib", "flask", "gunicorn", "graphene", "huey", "starlette", "uvicorn"}
    done = _import_without(NODE_MODULES, blocked)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_refusing_importer_does_refuse() -> None:
    """The check above is only worth something if a blocked import really fails."""
    done = _import_without(("ember.eventlog.mongo",), {"pymongo"})
    assert done.returncode != 0
    assert "pymongo is not installed in this role" in done.stderr
