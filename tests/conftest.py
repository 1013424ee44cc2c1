"""Shared fixtures: a temporary store, a tiny generated collection, a tiny trained store.

Helpers that build inputs are plain functions in tests/builders.py; nothing imports this file.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core.data.synthetic import write_manifest_collection
from tests.builders import build_trained_store


@pytest.fixture
def store_root(tmp_path, monkeypatch) -> Path:
    """A fresh experiment store for the test, also seen by code that reads BINSIGHT_STORE."""
    root = tmp_path / "store"
    monkeypatch.setenv("BINSIGHT_STORE", str(root))
    return root


@pytest.fixture
def tiny_collection(tmp_path) -> Path:
    return write_manifest_collection(tmp_path / "tiny", per_class=6)


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> Path:
    """A store filled by real tiny training runs (CNN, LR sweep, classical), built once per session."""
    return build_trained_store(tmp_path_factory.mktemp("dashboard"))
