"""Versioned engine directories, made current by an atomic rename.

An engine root holds one folder per build (``v0001``, ``v0002``, ...) and a symlink
``current`` naming the live one. A build writes its version folder under a temporary name
and renames it into place only when complete; ``current`` is then switched by renaming a
fresh symlink over it. Both renames are atomic on POSIX file systems, so a crash at any
moment leaves either the old engine or the new one live, never half of one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
CURRENT = "current"
_VERSION = re.compile(r"^v(\d{4,})$")


class EngineNotFoundError(FileNotFoundError):
    """No engine at the given path; the message says what was looked for."""


def versions(root: Path) -> list[Path]:
    """The complete version folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _VERSION.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=_number)


def _number(version: Path) -> int:
    match = _VERSION.match(version.name)
    assert match is not None
    return int(match.group(1))


def resolve(path: Path) -> Path:
    """The version folder to load: ``path`` itself if it holds a manifest, else its current."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    current = path / CURRENT
    if current.exists() and (current / MANIFEST).is_file():
        return current.resolve()
    raise EngineNotFoundError(
        f"{path}: not an engine directory (no {MANIFEST} and no '{CURRENT}' version); "
        "build one with `shoplm build --catalog ... --out DIR`"
    )


def start_version(root: Path) -> Path:
    """A fresh, hidden staging folder under ``root`` for a build to write into."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".building-{os.getpid()}-{os.urandom(4).hex()}"
    staging.mkdir()
    return staging


def commit_version(root: Path, staging: Path) -> Path:
    """Rename a finished staging folder to the next version number; returns its path."""
    existing = versions(root)
    number = _number(existing[-1]) + 1 if existing else 1
    final = root / f"v{number:04d}"
    os.rename(staging, final)
    _fsync_dir(root)
    return final


def discard_version(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def promote(root: Path, version: Path) -> None:
    """Make ``version`` (a folder inside ``root``) the current engine, atomically."""
    link = root / f".current-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(version.name)
    os.replace(link, root / CURRENT)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
