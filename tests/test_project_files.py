"""pyproject.toml is kept: the linter's rules hold on every file, and each console script names a
function that exists."""

import importlib
import subprocess
import sys
import tomllib

from tests.conftest import REPO


def test_ruff_finds_nothing_under_the_projects_settings():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_console_script_names_a_function():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_the_package_data_names_files_that_exist():
    """The label config moved with its package once and the wheel went without it."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert data
    for package, patterns in data.items():
        for pattern in patterns:
            assert list((REPO / package.replace(".", "/")).glob(pattern)), f"{package}: {pattern}"
