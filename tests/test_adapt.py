"""``shoplm build --finetune``: the query encoder is trained on the shop inside the build."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shoplm import store
from shoplm.cli import app
from shoplm.engine import Engine

KINDS = ["drill", "saw", "lamp", "kettle", "chair", "rug", "hose", "ladder", "paint", "glove"]
BRANDS = ["Makita", "Bosch", "Ikea", "Philips", "Dewalt", "Stanley"]


def test_a_finetune_build_trains_serves_and_records_its_encoder(tmp_path, write):
    rows = ["item_id,title,category,brand"]
    for i in range(60):
        kind, brand = KINDS[i % len(KINDS)], BRANDS[i % len(BRANDS)]
        rows.append(f"p{i},{brand} {kind} model {i} heavy duty,{kind}s,{brand}")
    catalog = write("catalog.csv", "\n".join(rows) + "\n")
    labels = write(
        "labels.csv",
        "query,item_id,relevance\nbosch saw,p1,3\ncordless drill,p0,3\n"
        "reading lamp,p2,2\nbosch saw,p7,1\n",
    )
    result = CliRunner().invoke(
        app,
        [
            "build",
            "--catalog",
            str(catalog),
            "--search-labels",
            str(labels),
            "--out",
            str(tmp_path / "engine"),
            "--finetune",
        ],
    )
    assert result.exit_code == 0, result.output
    version = store.resolve(tmp_path / "engine")
    manifest = json.loads((version / "manifest.json").read_text())
    report = manifest["finetune"]
    assert report["synthetic_pairs"] > 60 and report["label_pairs"] == 3
    # three label pairs: every synthetic pair is kept (the draw keeps at least 10,000)
    assert report["synthetic_pairs"] == report["synthetic_pairs_available"]
    assert (version / "models" / "encoder" / "shoplm-model.json").is_file()
    assert (version / "augment" / "synthetic_queries.parquet").is_file()
    # the version is self-contained: it loads and answers from its own folder
    engine = Engine.load(tmp_path / "engine")
    hits = engine.search(["makita drill"], 5)[0].items
    assert "p0" in hits
