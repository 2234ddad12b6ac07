"""Test-wide settings: no network, no writes outside temp folders, a fixed pseudonym key."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        patch.setenv("PIP_CACHE_DIR", str(home / ".cache" / "pip"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setenv("SHOPLM_PSEUDONYM_KEY", "test-key-not-secret-0123456789")
        yield


@pytest.fixture
def write(tmp_path: Path):
    """Write a text file under the test's temp folder and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def shared_data_or_skip() -> Path:
    """The research datasets folder, or skip the test with the reason."""
    from shoplm.eval.datasets import shared_data_dir

    try:
        return shared_data_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"research data not available: {exc}")


def free_port() -> int:
    """A loopback port nobody listens on right now, for a test server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
