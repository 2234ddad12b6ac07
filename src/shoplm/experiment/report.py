"""An A/B report for people: a terminal table, a JSON file and an SVG plot of the lifts.

The plot is written by hand as SVG (a forest plot: one row per metric, the relative lift as
a dot with its bootstrap interval as a bar, zero as a vertical line), so the report needs no
plotting library and the service's dashboard can embed the file as it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from rich.console import Console
from rich.table import Table

from shoplm.experiment.stats import ABReport

_METRIC_LABELS = {"ctr": "CTR", "conversion": "conversion", "revenue_per_user": "revenue / user"}
_COLOURS = {"up": "#1a7f37", "down": "#cf222e", "flat": "#57606a"}


def print_report(report: ABReport, console: Console | None = None) -> None:
    """The variants, the comparisons and the verdict as rich tables."""
    console = console or Console()
    variants = Table(title=f"experiment {report.experiment}")
    for column in ("variant", "share", "users", "needed", "CTR", "carts", "conv.", "rev/user"):
        variants.add_column(column, justify="right")
    needs = report.min_sample or [None] * len(report.variants)
    for v, need in zip(report.variants, needs, strict=True):
        variants.add_row(
            v.name,
            f"{v.share:.0%}",
            f"{v.users:,}",
            "unknown" if need is None else f"{need:,}",
            _pct(v.ctr),
            _pct(v.cart_rate),
            _pct(v.conversion),
            f"{v.revenue_per_user:,.2f}",
        )
    console.print(variants)
    level = 1 - report.alpha_per_comparison
    tests = Table(title=f"treatment vs control, {level:.1%} intervals (* primary metric)")
    for column in ("treatment", "metric", "difference (CI)", "p-value"):
        tests.add_column(column, justify="right")
    tests.add_column("lift (bootstrap CI)", justify="right")
    for comparison in report.comparisons:
        for i, m in enumerate(comparison.metrics):
            money = m.metric == "revenue_per_user"
            tests.add_row(
                comparison.treatment if i == 0 else "",
                f"{_METRIC_LABELS[m.metric]}{' *' if m.metric == report.primary_metric else ''}",
                f"{_diff(m.test.diff, money)} "
                f"[{_diff(m.test.ci_low, money)}, {_diff(m.test.ci_high, money)}]",
                f"{m.test.p_value:.3g}",
                f"{_pct(m.lift.estimate, True)} "
                f"[{_pct(m.lift.low, True)}, {_pct(m.lift.high, True)}]",
            )
    console.print(tests)
    srm = report.srm
    console.print(
        f"sample ratio: chi2 = {srm.chi2:.2f}, p = {srm.p_value:.3g}"
        + (" [bold red]MISMATCH[/]" if srm.flagged else " (ok)")
    )
    for note, count in report.notes.items():
        if count:
            console.print(f"note: {count:,} {note}")
    colour = {"better": "green", "worse": "red", "srm": "red"}.get(report.kind, "yellow")
    console.print(
        f"verdict ({_METRIC_LABELS[report.primary_metric]}): [{colour}]{report.verdict}[/]"
    )


def write_json(report: ABReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(report.to_dict()), indent=2, allow_nan=False)
    path.write_text(text, "utf-8")
    return path


def write_svg(report: ABReport, path: Path) -> Path:
    """A forest plot of every comparison's relative lifts with their bootstrap intervals."""
    rows = [
        (f"{c.treatment} vs {c.control}: {_METRIC_LABELS[m.metric]}", m.lift)
        for c in report.comparisons
        for m in c.metrics
    ]
    width, left, right, top, row_h = 760, 250, 40, 64, 34
    height = top + row_h * max(len(rows), 1) + 56
    finite = [v for _, lift in rows for v in (lift.low, lift.high) if math.isfinite(v)]
    low, high, ticks = _axis(min([0.0, *finite]), max([0.0, *finite]))

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * (width - left - right)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="16" y="24" font-size="16" font-weight="bold">'
        f"{escape(report.experiment)}: {escape(report.verdict)}</text>",
        f'<text x="16" y="44" fill="#57606a">relative lift with '
        f"{1 - report.alpha_per_comparison:.1%} bootstrap intervals; "
        f"SRM p = {report.srm.p_value:.3g}</text>",
    ]
    axis_y = top + row_h * max(len(rows), 1)
    for tick in ticks:
        parts.append(
            f'<line x1="{x(tick):.1f}" y1="{top - 8}" x2="{x(tick):.1f}" y2="{axis_y}" '
            f'stroke="{"#8c959f" if tick == 0 else "#eaeef2"}"/>'
            f'<text x="{x(tick):.1f}" y="{axis_y + 18}" text-anchor="middle" '
            f'fill="#57606a">{tick:+.0%}</text>'
        )
    for i, (label, lift) in enumerate(rows):
        y = top + row_h * i + row_h / 2
        parts.append(f'<text x="16" y="{y + 4:.1f}">{escape(label)}</text>')
        if not all(math.isfinite(v) for v in (lift.estimate, lift.low, lift.high)):
            parts.append(f'<text x="{left}" y="{y + 4:.1f}" fill="#57606a">undefined</text>')
            continue
        colour = _COLOURS["up" if lift.low > 0 else "down" if lift.high < 0 else "flat"]
        parts.append(
            f'<line x1="{x(lift.low):.1f}" y1="{y:.1f}" x2="{x(lift.high):.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="3"/>'
            f'<circle cx="{x(lift.estimate):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>'
            f'<text x="{width - 8}" y="{y - 8:.1f}" text-anchor="end" font-size="11" '
            f'fill="{colour}">{lift.estimate:+.1%} [{lift.low:+.1%}, {lift.high:+.1%}]</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 10}" text-anchor="middle" '
        f'fill="#57606a">lift of treatment over control</text></svg>'
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", "utf-8")
    return path


def _axis(low: float, high: float) -> tuple[float, float, list[float]]:
    """A range holding ``[low, high]`` widened to round steps (fractions: 0.05 is 5%)."""
    span = max(high - low, 0.05)
    step = next((s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0) if span / s <= 6), 2.0)
    first, last = math.floor(low / step - 0.25), math.ceil(high / step + 0.25)
    ticks = [round(step * i, 6) for i in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def _pct(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.1%}" if signed else f"{value:.2%}"


def _diff(value: float, money: bool) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+,.2f}" if money else f"{value * 100:+.2f}pp"


def _finite(value: object) -> object:
    """``value`` with NaN and infinities as ``None`` and numpy scalars as Python ones (JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
