"""Validation: every problem reported with file, row, field and reason; good rows kept."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shoplm.cli import app
from shoplm.config import ShoplmConfig, load_config
from shoplm.data.catalog import load_catalog
from shoplm.data.events import load_events
from shoplm.data.privacy import Pseudonymiser
from shoplm.data.readers import InputError
from shoplm.data.report import ValidationReport

runner = CliRunner()

BROKEN_CATALOG = (
    "item_id,title,price,brand,colour\n"  # line 1: header; colour is an unmapped column
    "A1,Cordless Drill 20V,99.00,Makita,green\n"  # 2 good
    ",Nameless thing,5.00,Acme,\n"  # 3 missing id
    "A2,<b>Hammer</b> &amp; nails,abc,Stanley,\n"  # 4 bad price (kept), HTML cleaned
    "A3,Saw,-3.50,,\n"  # 5 negative price (kept without price)
    "A1,Cordless Drill 20V,99.00,Makita,green\n"  # 6 duplicate of row 2
    "A4,CafÃ© table,$1,299.00,,\n"  # 7 too many fields (unquoted comma in price)
    'A5,"Garden hose,50ft",12.5,,\n'  # 8 good (quoted comma)
    "A6,\n"  # 9 too few fields
    'A7,"Truncated'  # 10 truncated last line (unterminated quote)
)

EVENTS = (
    "user_id,item_id,event,timestamp,query,value\n"
    "u1,A1,purchase,2024-03-01T10:00:00Z,,1\n"  # 2 good
    "u1,ZZ,view,2024-03-01T10:01:00Z,,\n"  # 3 unknown item
    "u2,A2,teleport,2024-03-01T10:02:00Z,,\n"  # 4 unknown event type
    "u2,A2,view,yesterday-ish,,\n"  # 5 bad timestamp
    "u1,A1,purchase,2024-03-01T10:00:00Z,,1\n"  # 6 exact duplicate of row 2
    ",A1,view,2024-03-01T10:03:00Z,,\n"  # 7 missing user
    "u3,,search,1709287500,mail me at jo@example.com or +44 20 7946 0958,\n"  # 8 search
    "u3,A5,,,,\n"  # 9 no event type (purchase), no time (file order)
    "u3,A3,rating,2024-03-01T10:05:00Z,,\n"  # 10 rating without value
    "u4,A3,view,2024-03-01T10:06:00Z,,lots\n"  # 11 bad value, kept
)


def _problems(report: ValidationReport) -> dict[tuple[str, str], list[int]]:
    assert report.issues_path is not None
    with open(report.issues_path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    found: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        found.setdefault((row["field"], row["reason"]), []).append(int(row["row"]))
    return found


def _load(tmp_path: Path, catalog: Path, events: Path | None = None, config=None):
    config = config or ShoplmConfig()
    report = ValidationReport(tmp_path / "issues.csv")
    items = load_catalog(catalog, config, report)
    if events is not None:
        load_events(
            events,
            config,
            pd.Index(items["item_id"]),
            Pseudonymiser(b"0123456789abcdef"),
            report,
            tmp_path / "events.parquet",
        )
    report.close()
    return items, report


def test_broken_catalogue_reports_each_problem_and_keeps_good_rows(tmp_path, write):
    items, report = _load(tmp_path, write("catalog.csv", BROKEN_CATALOG))
    problems = _problems(report)

    assert list(items["item_id"]) == ["A1", "A2", "A3", "A5"]
    assert problems[("item_id", "missing item_id")] == [3]
    assert problems[("item_id", "duplicate item_id (the first row with this id is kept)")] == [6]
    assert problems[("price", "price is not a number; item kept without a price")] == [4]
    assert problems[("price", "negative price; item kept without a price")] == [5]
    assert problems[("(record)", "expected 5 fields, found 6")] == [7]
    assert problems[("(record)", "expected 5 fields, found 2")] == [9]
    unreadable = [k for k in problems if k[1].startswith("unreadable record")]
    assert [problems[k] for k in unreadable] == [[10]]
    stats = report.files[str(tmp_path / "catalog.csv")]
    assert (stats.rows_read, stats.rows_kept, stats.rows_rejected) == (9, 4, 5)


def test_text_is_cleaned_and_unmapped_columns_are_kept(tmp_path, write):
    items, report = _load(tmp_path, write("catalog.csv", BROKEN_CATALOG))
    by_id = items.set_index("item_id")
    assert by_id.loc["A2", "title"] == "Hammer & nails"
    assert by_id.loc["A5", "title"] == "Garden hose,50ft"
    assert pd.isna(by_id.loc["A2", "price"]) and pd.isna(by_id.loc["A3", "price"])
    assert by_id.loc["A1", "price"] == 99.0
    assert json.loads(by_id.loc["A1", "attributes"]) == {"colour": "green"}
    fixes = {what: n for (_, field, what), n in report.fixes.items() if field == "title"}
    assert fixes == {"HTML, mojibake or control characters cleaned": 1}


def test_mojibake_is_repaired_and_undecodable_bytes_are_flagged(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_bytes(b"item_id,title\nB1,Caf\xc3\x83\xc2\xa9 table\nB2,Bad \xff byte\n")
    items, report = _load(tmp_path, path)
    assert list(items["title"]) == ["Café table", "Bad \ufffd byte"]
    assert _problems(report)[
        ("title", "text holds bytes that are not valid UTF-8 (shown as \ufffd)")
    ] == [3]


def test_events_are_checked_against_the_catalogue(tmp_path, write):
    catalog = write("catalog.csv", BROKEN_CATALOG)
    events = write("events.csv", EVENTS)
    _, report = _load(tmp_path, catalog, events)
    problems = _problems(report)
    assert problems[("item_id", "item_id not in the catalogue")] == [3]
    assert problems[
        (
            "event",
            "unknown event type (expected one of view, click, add_to_cart, "
            "purchase, search, rating, return)",
        )
    ] == [4]
    assert problems[("timestamp", "unreadable or out-of-range timestamp")] == [5]
    assert problems[
        ("(record)", "exact duplicate of an earlier event (same user, item, type, time and fields)")
    ] == [6]
    assert problems[("user_id", "missing user_id")] == [7]
    assert problems[("value", "a rating event needs a numeric value")] == [10]
    assert problems[("value", "value is not a number; event kept without a value")] == [11]

    kept = pd.read_parquet(tmp_path / "events.parquet")
    assert len(kept) == 4  # rows 2, 8, 9, 11
    assert not kept["user"].isin(["u1", "u2", "u3", "u4"]).any()  # pseudonymised
    search = kept[kept["item"] < 0].iloc[0]
    assert search["query"] == "mail me at [email] or [phone]"
    assert pd.isna(kept.iloc[2]["timestamp"])  # row 9 had no time: kept in file order
    assert list(kept["seq"]) == sorted(kept["seq"])


def test_jsonl_and_parquet_inputs_with_a_column_mapping(tmp_path, write):
    config_path = write(
        "shoplm.toml",
        '[catalog.columns]\nitem_id = "sku"\ntitle = "name"\n'
        '[events.columns]\nuser_id = "customer"\nitem_id = "sku"\nevent = "action"\n'
        '[events.event_names]\npageview = "view"\n',
    )
    config = load_config(config_path)
    catalog = tmp_path / "catalog.jsonl.gz"
    with gzip.open(catalog, "wt", encoding="utf-8") as handle:
        handle.write('{"sku": "S1", "name": "Lamp", "price": 10}\n')
        handle.write("{not json}\n")
        handle.write('{"sku": "S2", "name": "Desk", "material": "oak"}\n')
    events = tmp_path / "shop_events.parquet"
    pd.DataFrame(
        {"customer": ["c1", "c2"], "sku": ["S1", "S2"], "action": ["pageview", "purchase"]}
    ).to_parquet(events)
    items, report = _load(tmp_path, catalog, events, config)
    assert list(items["item_id"]) == ["S1", "S2"]
    assert json.loads(items["attributes"][1]) == {"material": "oak"}
    assert _problems(report)[
        ("(record)", "invalid JSON: Expecting property name enclosed in double quotes")
    ] == [2]
    assert report.files[str(events)].rows_kept == 2


def test_a_bad_mapping_or_config_names_the_problem(tmp_path, write):
    config = load_config(write("shoplm.toml", '[catalog.columns]\nitem_id = "sku"\n'))
    with pytest.raises(InputError, match=r"column 'sku' \(mapped to item_id\) is not in the file"):
        _load(tmp_path, write("catalog.csv", "id,title\n1,x\n"), config=config)
    result = runner.invoke(
        app,
        [
            "validate",
            "--catalog",
            str(write("c.csv", "id\n1\n")),
            "--config",
            str(write("bad.toml", "[catalog.columns]\nsku=1\n")),
        ],
    )
    assert result.exit_code == 2
    assert "catalog.columns" in result.output


def test_validate_command_exit_codes(tmp_path, write):
    good = runner.invoke(
        app,
        [
            "validate",
            "--catalog",
            str(write("c.csv", BROKEN_CATALOG)),
            "--events",
            str(write("e.csv", EVENTS)),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert good.exit_code == 0, good.output
    assert "duplicate item_id" in good.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert sum(p["count"] for p in report["problems"] if p["severity"] == "error") == 11

    empty = runner.invoke(app, ["validate", "--catalog", str(write("e.csv", "item_id\n\n,\n"))])
    assert empty.exit_code == 1
    assert "nothing usable" in empty.output

    missing = runner.invoke(app, ["validate", "--catalog", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2
    assert "no such file" in missing.output


def test_dates_beyond_what_nanoseconds_hold_are_rejected_not_a_crash(tmp_path, write):
    catalog = write("catalog.csv", "item_id,title\nA1,Lamp\n")
    events = write(
        "events.csv",
        "user_id,item_id,event,timestamp\nu1,A1,view,2999-01-01\nu2,A1,view,2024-02-03\n"
        "u3,A1,view,1066-10-14\n",
    )
    _, report = _load(tmp_path, catalog, events)
    assert _problems(report)[("timestamp", "unreadable or out-of-range timestamp")] == [2, 4]
