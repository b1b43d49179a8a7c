"""Fixtures for the deployment tests; helpers live in deploy_common.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_common import VARIANTS, render, variant_dir  # noqa: E402


@pytest.fixture(scope="session")
def variant_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {name: variant_dir(name, root) for name in VARIANTS}


@pytest.fixture(scope="session")
def rendered(variant_dirs):
    return {name: render(d) for name, d in variant_dirs.items()}
