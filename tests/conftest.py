"""Shared fixtures: the CamVid copy beside the checkout and a random-weight tiny backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "val").is_dir():
        pytest.fail(f"CamVid is expected at {CAMVID} (../shared/datasets/camvid beside the checkout)")
    return CAMVID


@pytest.fixture(scope="session")
def tiny_unet():
    from model.backbones import load_unet

    return load_unet("tiny", seed=0)
