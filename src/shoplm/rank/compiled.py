"""Gradient-boosted trees compiled to machine code, for the request path.

LightGBM walks its trees node by node through a generic interpreter: on the demo shop's
135-tree feed ranker a batch of 800 candidates took 2.2 ms, a fifth of the server's CPU
under load. lleaves compiles the same model file with LLVM into one native function per
tree and predicts the batch in 0.4 ms with the same scores (largest difference 3e-15).

Compiling takes a second or two per model, so the object code is kept in a cache folder
(``SHOPLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/shoplm`` or ``~/.cache/shoplm``) under the
digest of the model text, the machine and the lleaves version: a model is compiled once
per machine, and a restarted service loads it in milliseconds. Where lleaves or LLVM is
missing or fails, :func:`compile_booster` says why in the log and the caller keeps
LightGBM's own predictor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Protocol

import lightgbm as lgb
import numpy as np

LOGGER = logging.getLogger(__name__)


class TreePredictor(Protocol):
    def predict(self, data: np.ndarray, n_jobs: int = ...) -> np.ndarray: ...


def cache_dir() -> Path:
    """Where compiled models are kept."""
    if os.environ.get("SHOPLM_CACHE_DIR"):
        return Path(os.environ["SHOPLM_CACHE_DIR"]) / "trees"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shoplm" / "trees"


def compile_booster(booster: lgb.Booster, num_iteration: int | None) -> TreePredictor | None:
    """The booster's first ``num_iteration`` trees (None: all) as native code, or None
    (logged) when they cannot be compiled here."""
    try:
        import lleaves
    except ImportError as exc:
        LOGGER.warning("lleaves is not installed (%s): trees are predicted by LightGBM", exc)
        return None
    text = booster.model_to_string(num_iteration=num_iteration)
    version = metadata.version("lleaves")
    digest = hashlib.sha256(f"{text}\0{platform.machine()}\0{version}".encode()).hexdigest()
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        model_file = folder / f"{digest[:32]}.txt"
        if not model_file.exists():
            _write_atomically(model_file, text.encode())
        model = lleaves.Model(model_file=str(model_file))
        compiled = folder / f"{digest[:32]}.o"
        if compiled.exists():
            model.compile(cache=str(compiled))
        else:
            # compiled to a private name first: a half-written object must never be loaded
            partial = _partial(compiled)
            model.compile(cache=str(partial))
            partial.replace(compiled)
        return model
    except Exception as exc:  # no LLVM for this machine, a read-only cache, ...
        LOGGER.warning("could not compile the trees (%s): they are predicted by LightGBM", exc)
        return None


def _write_atomically(path: Path, content: bytes) -> None:
    partial = _partial(path)
    partial.write_bytes(content)
    partial.replace(path)


def _partial(path: Path) -> Path:
    """This process's private name for ``path`` while it is being written."""
    return path.with_name(f"{path.name}.{os.getpid()}.partial")
