"""The validation report: every problem with its file, row, field and reason.

Row-level problems are written to a CSV file as they are found, so a report on a huge file
costs no memory; counts per (field, reason) and a few examples of each are kept in memory
for the printed summary.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np

Severity = Literal["error", "warning"]

#: errors reject the row; warnings keep the row with the named field changed or emptied
SEVERITY_MEANING = {
    "error": "row rejected",
    "warning": "row kept, field changed or emptied",
}


@dataclass
class FileStats:
    rows_read: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0


@dataclass
class ValidationReport:
    """Collects problems across files; write-through to ``issues_path`` when given."""

    issues_path: Path | None = None
    examples_per_reason: int = 5
    files: dict[str, FileStats] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    fixes: Counter = field(default_factory=Counter)
    examples: dict[tuple[str, str, str, str], list[tuple[int, str]]] = field(default_factory=dict)
    _handle: IO[str] | None = None
    _writer: csv.writer | None = None  # type: ignore[valid-type]

    def __post_init__(self) -> None:
        if self.issues_path is not None:
            self.issues_path.parent.mkdir(parents=True, exist_ok=True)
            # kept open across add() calls and closed by close(): a write-through log
            self._handle = open(self.issues_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["file", "row", "field", "severity", "reason", "value"])

    def stats(self, file: str) -> FileStats:
        return self.files.setdefault(file, FileStats())

    def add(
        self,
        file: str,
        rows: np.ndarray,
        field_name: str,
        severity: Severity,
        reason: str,
        values: np.ndarray | None = None,
    ) -> None:
        """Record one problem for each row in ``rows`` (values: the offending input, if any)."""
        if len(rows) == 0:
            return
        key = (file, field_name, severity, reason)
        self.counts[key] += len(rows)
        shown = [""] * len(rows) if values is None else [_printable(v) for v in values]
        kept = self.examples.setdefault(key, [])
        room = self.examples_per_reason - len(kept)
        if room > 0:
            kept.extend(zip(rows[:room].tolist(), shown[:room], strict=True))
        if self._writer is not None:
            self._writer.writerows(
                (file, row, field_name, severity, reason, value)
                for row, value in zip(rows.tolist(), shown, strict=True)
            )

    def add_fix(self, file: str, field_name: str, what: str, n: int) -> None:
        """Count rows that were repaired on purpose (HTML stripped, contact data masked...)."""
        if n:
            self.fixes[(file, field_name, what)] += int(n)

    @property
    def n_errors(self) -> int:
        return sum(n for (_, _, sev, _), n in self.counts.items() if sev == "error")

    @property
    def n_warnings(self) -> int:
        return sum(n for (_, _, sev, _), n in self.counts.items() if sev == "warning")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._writer = None

    def to_dict(self) -> dict:
        return {
            "files": {name: vars(stats) for name, stats in self.files.items()},
            "problems": [
                {
                    "file": file,
                    "field": field_name,
                    "severity": severity,
                    "reason": reason,
                    "count": count,
                    "examples": [
                        {"row": row, "value": value}
                        for row, value in self.examples.get(
                            (file, field_name, severity, reason), []
                        )
                    ],
                }
                for (file, field_name, severity, reason), count in sorted(self.counts.items())
            ],
            "fixes": [
                {"file": file, "field": field_name, "fix": what, "rows": n}
                for (file, field_name, what), n in sorted(self.fixes.items())
            ],
            "issues_file": str(self.issues_path) if self.issues_path else None,
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), "utf-8")


def _printable(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
