"""Unit-test fixtures: a tiny randomly initialised Whisper in a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_whisper import write_tiny_whisper


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hf-whisper")
    write_tiny_whisper(directory)
    return directory
