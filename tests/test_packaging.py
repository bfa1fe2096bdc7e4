"""environment.yml (conda) and pyproject.toml (pip) describe the same environment."""
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _conda_python(environment) -> SpecifierSet:
    pythons = [d for d in environment["dependencies"] if isinstance(d, str) and d.split("=")[0].split(">")[0]
               .split("<")[0].strip() == "python"]
    assert len(pythons) == 1, f"environment.yml should name python exactly once, got {pythons}"
    return SpecifierSet(pythons[0].removeprefix("python").strip())


def test_same_python_requirement(pyproject, environment):
    assert _conda_python(environment) == SpecifierSet(pyproject["project"]["requires-python"])


def test_environment_installs_the_package_with_dev_extra(environment):
    assert "pip" in environment["dependencies"]
    pip_lists = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_lists == [["-e .[dev]"]], f"environment.yml should only pip-install '-e .[dev]', got {pip_lists}"


def test_runtime_and_dev_dependencies(pyproject):
    runtime = {Requirement(r).name for r in pyproject["project"]["dependencies"]}
    assert {"numpy", "torch", "matplotlib", "ipywidgets", "pycocotools", "tqdm"} <= runtime
    assert "torchvision" not in runtime
    dev = {Requirement(r).name for r in pyproject["project"]["optional-dependencies"]["dev"]}
    assert {"jupyterlab", "nbval", "pytest", "ipykernel"} <= dev
