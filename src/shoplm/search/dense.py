"""Dense retrieval: items and queries embedded by a packaged text encoder, nearest by cosine.

Item vectors are computed once at fit time (optionally cached on disk by a hash of the item
texts, so rebuilding an engine over an unchanged catalogue costs nothing) and searched either
exactly (a matrix product) or through a faiss HNSW graph. Queries are encoded at request
time, so for MiniLM they go through the ONNX int8 export, not torch.

faiss was chosen over hnswlib and usearch because it ships wheels for every platform
(hnswlib 0.8 builds from source), offers exact and HNSW indexes behind one interface, and is
the library most ANN papers and benchmarks use as their reference.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from shoplm.models.encoders import (
    FINETUNED_MANIFEST,
    CachedQueryEncoder,
    cached_minilm_onnx,
    finetuned_manifest,
    finetuned_onnx_path,
    load_encoder,
)
from shoplm.recommend.base import top_k
from shoplm.search.base import Retriever
from shoplm.search.lexical import field_text
from shoplm.search.text import dominant_script, script_of

#: A query needs a letter or a digit to mean anything; emoji or punctuation alone do not.
_HAS_WORD = re.compile(r"[^\W_]")

#: Exact search up to this many items, HNSW above. A single query's exact search reads every
#: item vector, so it is memory-bound: on 54,667 x 384 floats (84 MB) it took 13-16 ms per
#: query against 0.45 ms for HNSW (ef_search 128, recall@100 0.993), docs/search.md.
EXACT_MAX_ITEMS = 20_000

#: Dense score rows per block in exact search (~64 MB of float32).
_BLOCK_CELLS = 1 << 24


class DenseRetriever(Retriever):
    """Bi-encoder retrieval over the text of ``fields``.

    ``encoder`` is ``"minilm"`` (English), ``"use"`` (multilingual) or ``"auto"``, which
    picks MiniLM when the catalogue is mostly Latin script and USE otherwise, or the path of
    a fine-tuned MiniLM folder (:mod:`shoplm.models.finetune`): its torch weights encode the
    items and its int8 ONNX export the queries; a saved retriever carries both its vectors
    and that export, so serving does not need the folder. With
    ``multilingual_queries`` an English catalogue is also indexed with USE, and queries
    written mostly in another script (a Chinese query to an English shop) are answered
    through it; this doubles the fit time, so it is off by default.

    ``index`` is ``"exact"``, ``"hnsw"`` or ``"auto"`` (exact up to
    :data:`EXACT_MAX_ITEMS` items). ``cache_dir`` keeps item vectors between fits.
    ``threads`` bounds item encoding and the HNSW build (None: all cores); queries are
    encoded on ``threads`` or, if unset, one thread (see :class:`OnnxMiniLMEncoder`).
    """

    def __init__(
        self,
        encoder: str = "auto",
        fields: Sequence[str] = ("title", "brand", "category"),
        index: str = "auto",
        multilingual_queries: bool = False,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 200,
        hnsw_ef_search: int = 128,
        batch_size: int = 128,
        threads: int | None = None,
        cache_dir: Path | None = None,
        show_progress: bool = True,
    ) -> None:
        self.encoder = encoder
        self.fields = fields
        self.index = index
        self.multilingual_queries = multilingual_queries
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search
        self.batch_size = batch_size
        self.threads = threads
        self.cache_dir = cache_dir
        self.show_progress = show_progress

    def get_params(self) -> dict[str, object]:
        return {
            "encoder": self.encoder,
            "fields": list(self.fields),
            "index": self.index,
            "multilingual_queries": self.multilingual_queries,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "hnsw_ef_search": self.hnsw_ef_search,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
            "show_progress": self.show_progress,
        }

    def fit(self, items: pd.DataFrame) -> Self:
        texts = item_texts(items, self.fields)
        self._model_dir = self._finetuned_dir()
        if self._model_dir is not None:
            primary = "minilm"
        elif self.encoder == "auto":
            primary = "minilm" if dominant_script(texts) == "latin" else "use"
        elif self.encoder in ("minilm", "use"):
            primary = self.encoder
        else:
            raise ValueError(
                "encoder must be 'auto', 'minilm', 'use' or a fine-tuned model folder (with "
                f"{FINETUNED_MANIFEST}), got {self.encoder!r}"
            )
        names = [primary]
        if self.multilingual_queries and primary == "minilm":
            names.append("use")
        self.n_items_ = len(items)
        self.encoders_ = names
        self.vectors_ = {name: self._item_vectors(name, texts) for name in names}
        self.indexes_ = {
            name: self._build_index(vectors) for name, vectors in self.vectors_.items()
        }
        if self._model_dir is not None:
            self.onnx_path_ = finetuned_onnx_path(self._model_dir)
        else:
            self.onnx_path_ = cached_minilm_onnx() if primary == "minilm" else None
        self._query_encoders: dict[str, CachedQueryEncoder] = {}
        return self

    def _finetuned_dir(self) -> Path | None:
        """The fine-tuned model folder ``encoder`` names, or None for a packaged encoder."""
        if self.encoder in ("auto", "minilm", "use"):
            return None
        folder = Path(self.encoder)
        if not (folder / FINETUNED_MANIFEST).is_file():
            return None
        if finetuned_manifest(folder).get("base") != "minilm":
            raise ValueError(f"{folder}: only fine-tuned MiniLM folders can be served")
        return folder

    def _item_model_dir(self, name: str) -> Path | None:
        """The folder whose torch weights encode the items for encoder ``name`` (None:
        packaged). A model fine-tuned on the query side only keeps its base's item vectors."""
        if name != "minilm" or self._model_dir is None:
            return None
        manifest = finetuned_manifest(self._model_dir)
        if manifest.get("items") == "base":
            base = manifest.get("base_dir")
            return None if base is None else Path(str(base))
        return self._model_dir

    def _item_vectors(self, name: str, texts: list[str]) -> np.ndarray:
        """Encode the item texts with the torch/numpy reference model, through the disk cache."""
        model_dir = self._item_model_dir(name)
        # a fine-tuned model's vectors are keyed by its weights, not only by "minilm"
        key = name
        if model_dir is not None and (model_dir / FINETUNED_MANIFEST).is_file():
            key = f"{name}-{finetuned_manifest(model_dir)['model_id']}"
        elif model_dir is not None:
            key = f"{name}-{model_dir.resolve()}"
        cached = None
        if self.cache_dir is not None:
            digest = hashlib.sha256("\x1f".join([key, *texts]).encode()).hexdigest()[:20]
            cached = Path(self.cache_dir) / f"item-vectors-{name}-{digest}.npy"
            if cached.exists():
                return np.load(cached)
        vectors = load_encoder(name, threads=self.threads, model_dir=model_dir).encode(
            texts, batch_size=self.batch_size, show_progress=self.show_progress
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(cached.name + ".partial.npy")
            np.save(partial, vectors)
            partial.replace(cached)
        return vectors

    def _uses_hnsw(self) -> bool:
        if self.index not in ("auto", "exact", "hnsw"):
            raise ValueError(f"index must be 'auto', 'exact' or 'hnsw', got {self.index!r}")
        return self.index == "hnsw" or (self.index == "auto" and self.n_items_ > EXACT_MAX_ITEMS)

    def _build_index(self, vectors: np.ndarray):  # type: ignore[no-untyped-def]
        """A faiss HNSW graph over the vectors, or None for exact search."""
        if not self._uses_hnsw():
            return None
        import faiss

        if self.threads:
            faiss.omp_set_num_threads(self.threads)
        graph = faiss.IndexHNSWFlat(vectors.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.hnsw_ef_construction
        graph.add(vectors)
        graph.hnsw.efSearch = self.hnsw_ef_search
        return graph

    def _query_encoder(self, name: str) -> CachedQueryEncoder:
        if name not in self._query_encoders:
            self._query_encoders[name] = CachedQueryEncoder(
                load_encoder(
                    "minilm-onnx" if name == "minilm" else name,
                    threads=self.threads or 1,
                    onnx_path=self.onnx_path_,
                )
            )
        return self._query_encoders[name]

    def encode_queries(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors per encoder, as ``(route, vectors)``.

        ``route[i]`` indexes :attr:`encoders_` (-1 for a query with no letter or digit, which
        is answered with nothing rather than with the items nearest to an empty string);
        ``vectors`` is ``(n, max dim)``, zero-padded for the narrower encoder.
        """
        queries = [str(q) for q in queries]
        has_word = np.array([_HAS_WORD.search(q) is not None for q in queries], dtype=bool)
        route = np.where(has_word, 0, -1)
        if len(self.encoders_) > 1:
            foreign = np.array([script_of(q) != "latin" for q in queries], dtype=bool)
            route[has_word & foreign] = 1
        width = max(v.shape[1] for v in self.vectors_.values())
        vectors = np.zeros((len(queries), width), dtype=np.float32)
        for slot, name in enumerate(self.encoders_):
            rows = np.flatnonzero(route == slot)
            if rows.size:
                encoded = self._query_encoder(name).encode([queries[i] for i in rows])
                vectors[rows, : encoded.shape[1]] = encoded
        return route, vectors

    def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.search(*self.encode_queries(queries), k)

    def search(
        self, route: np.ndarray, vectors: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items for encoded queries (:meth:`encode_queries` output)."""
        ids = np.full((len(route), k), -1, dtype=np.int64)
        scores = np.full((len(route), k), -np.inf, dtype=np.float32)
        for slot, name in enumerate(self.encoders_):
            rows = np.flatnonzero(route == slot)
            if rows.size:
                ids[rows], scores[rows] = self._search_one(name, vectors[rows], k)
        return ids, scores

    def _search_one(self, name: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        items = self.vectors_[name]
        queries = np.ascontiguousarray(queries[:, : items.shape[1]])
        graph = self.indexes_[name]
        if graph is not None:
            scores, ids = graph.search(queries, min(k, self.n_items_))
            ids, scores = ids.astype(np.int64), np.where(ids >= 0, scores, -np.inf)
            pad = k - ids.shape[1]
            return (
                np.pad(ids, ((0, 0), (0, pad)), constant_values=-1),
                np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf).astype(np.float32),
            )
        ids = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        block = max(1, _BLOCK_CELLS // max(self.n_items_, 1))
        for start in range(0, len(queries), block):
            rows = slice(start, start + block)
            ids[rows], scores[rows] = top_k(queries[rows] @ items.T, k)
        return ids, scores

    def score_items(self, queries: Sequence[str], item_ids: np.ndarray) -> np.ndarray:
        """Cosine of each query to given items (``item_ids`` (n, m), -1 = none, scored 0)."""
        return self.score_vectors(*self.encode_queries(queries), item_ids)

    def score_vectors(
        self, route: np.ndarray, vectors: np.ndarray, item_ids: np.ndarray
    ) -> np.ndarray:
        """:meth:`score_items` for queries already encoded by :meth:`encode_queries`."""
        out = np.zeros(item_ids.shape, dtype=np.float32)
        # rows per block so that the gathered (rows, m, dim) vectors stay within the budget
        block = max(1, _BLOCK_CELLS // max(item_ids.shape[1] * vectors.shape[1], 1))
        for slot, name in enumerate(self.encoders_):
            items = self.vectors_[name]
            routed = np.flatnonzero(route == slot)
            for start in range(0, routed.size, block):
                rows = routed[start : start + block]
                picked = items[np.maximum(item_ids[rows], 0)]  # (rows, m, dim)
                cosine = np.einsum("rmd,rd->rm", picked, vectors[rows, : items.shape[1]])
                out[rows] = np.where(item_ids[rows] >= 0, cosine, 0.0)
        return out

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, vectors in self.vectors_.items():
            np.save(path / f"vectors-{name}.npy", vectors)
        if self.onnx_path_ is not None:
            shutil.copyfile(self.onnx_path_, path / "query-encoder.onnx")
        for name, graph in self.indexes_.items():
            if graph is not None:
                import faiss

                faiss.write_index(graph, str(path / f"hnsw-{name}.faiss"))
        state = {"params": self.get_params(), "n_items": self.n_items_, "encoders": self.encoders_}
        (path / "dense.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read a retriever written by :meth:`save`."""
        path = Path(path)
        state = json.loads((path / "dense.json").read_text())
        params = state["params"]
        params["cache_dir"] = None if params["cache_dir"] is None else Path(params["cache_dir"])
        model = cls(**params)
        model.n_items_ = int(state["n_items"])
        model.encoders_ = list(state["encoders"])
        model.vectors_ = {name: np.load(path / f"vectors-{name}.npy") for name in model.encoders_}
        model.indexes_ = {
            name: _read_graph(path / f"hnsw-{name}.faiss") for name in model.encoders_
        }
        onnx = path / "query-encoder.onnx"
        model.onnx_path_ = onnx if onnx.exists() else None
        model._query_encoders = {}
        return model


def _read_graph(path: Path):  # type: ignore[no-untyped-def]
    if not path.exists():
        return None
    import faiss

    return faiss.read_index(str(path))


def item_texts(items: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """One string per item: the non-empty ``fields`` joined by ". ", in the given order."""
    columns = [field_text(items[f], f) for f in fields if f in items.columns]
    if not columns:
        raise ValueError(f"the catalogue has none of the fields {list(fields)}")
    joined = pd.Series("", index=items.index, dtype=object)
    for column in columns:
        column = column.str.replace(r"\s+", " ", regex=True).str.strip()
        joined = joined + np.where((joined != "") & (column != ""), ". ", "") + column
    return joined.tolist()
