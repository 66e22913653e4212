"""Shared fixtures: the real stories260K model and TinyStories windows from ``../shared/data``."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# absolute, since tests change directory
os.environ["AUTOPRUNE_DATA_DIR"] = str(Path(os.environ.get("AUTOPRUNE_DATA_DIR", ROOT.parent / "shared" / "data")).resolve())
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """A fresh autoprune cache per session, so the llama2.c conversion itself is exercised."""
    os.environ["AUTOPRUNE_CACHE"] = str(tmp_path_factory.mktemp("autoprune-cache"))


@pytest.fixture(scope="session")
def stories(_cache):
    """The dense stories260K model (shared: deep-copy before changing it; see ``fresh_model``)."""
    from autoprune.models import load_model

    return load_model("stories260K", dtype="float32", device="cpu")


@pytest.fixture
def fresh_model(stories):
    return copy.deepcopy(stories.model)


@pytest.fixture(scope="session")
def calib(stories):
    """16 calibration windows of 128 tokens from TinyStories 0-499, seed 0."""
    from autoprune.jobs.common import calibration_windows

    return calibration_windows(stories.tokenizer, "tinystories:0-499", 16, 128, 0)


@pytest.fixture(scope="session")
def heldout(stories):
    """The first 32 windows of 128 tokens of TinyStories 500-999."""
    from autoprune.jobs.common import evaluation_windows

    return evaluation_windows(stories.tokenizer, "tinystories:500-999", 128, 32)
