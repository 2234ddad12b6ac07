"""Contrastive fine-tuning of the packaged MiniLM bi-encoder on a shop's (query, item) pairs.

The pretrained encoder knows English but not the shop: Home Depot's queries are short,
misspelt and full of sizes and model numbers, where zero-shot MiniLM trails plain BM25
(docs/search.md). Training it on the shop's own pairs (judged or clicked queries, or
synthetic queries from :mod:`shoplm.augment`) moves queries next to the items they mean.

Training is a plain torch loop, not the sentence-transformers trainer: on two CPU cores
the loop is all there is to pay for, and it lets the loss mask false negatives exactly.

- Loss: multiple-negatives ranking (InfoNCE, scale 20) over in-batch negatives plus
  ``hard_negatives`` BM25-mined items per pair. A mined item ranks high lexically but is
  not a known positive of the query: the top ``negative_skip`` BM25 ranks are skipped
  (often relevant but unjudged), and so is every item listed for the query in the pairs or
  in ``exclude`` (e.g. every judged-relevant item).
- In a batch, another row's item that is also a positive of this row's query is masked,
  not counted as a negative (a query with several positives often shares a batch).
- Pooling is the model's own mean pooling and L2 normalisation, so the saved folder loads
  unchanged in sentence-transformers and exports to the same ONNX graph as the base model.
- ``catalogue_negatives`` (query tower only): every catalogue item is a negative, a
  softmax over all item vectors (64 x 54,667 x 384 per step, cheap next to the encoder),
  so training optimises the full-catalogue ranking that search does; known positives of
  the query are hidden from it.
- ``freeze_embeddings`` (default) keeps the 30,522 x 384 word-piece table fixed: updating
  it costs more than the rest of a query-side step on a CPU (Adam touches all 11.7 M
  entries every step) and 5,000 training queries cannot teach it much.
- ``lora_rank`` trains LoRA adapters (``peft``, the ``finetune`` extra) on the attention
  and feed-forward projections and merges them into the weights before saving, so a LoRA
  model serves exactly like a fully fine-tuned one.

- ``towers="query"`` trains the query side only, against item vectors of the base model
  that are computed once (or passed in, e.g. a built ``DenseRetriever``'s). On two cores
  this is what makes fine-tuning cheap: a step encodes 64 queries of ~8 word pieces
  instead of as many 20-40-piece titles and their negatives, and a rebuild keeps its item
  vectors, so a catalogue of 54,667 titles (~14 min to encode here) is never re-encoded.
  ``towers="both"`` trains one shared encoder for queries and items (re-encode the items).

``save`` writes a sentence-transformers folder, its int8 ONNX export (the export
:mod:`shoplm.models.encoders` makes for the packaged model) and ``shoplm-model.json``;
``DenseRetriever(encoder=str(folder))`` serves it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from shoplm.models.encoders import (
    FINETUNED_MANIFEST,
    export_minilm_onnx,
    minilm_path,
)

ONNX_NAME = "model-int8.onnx"


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (the machine is shared: wall time lies)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_pairs(pairs: pd.DataFrame, n_items: int, name: str = "pairs") -> pd.DataFrame:
    """``pairs`` with columns ``query`` (text) and ``item`` (row of the catalogue texts).

    Rows with an empty query are dropped and counted in ``attrs["dropped_empty_query"]``; a
    missing column or an item outside the catalogue is an error naming the row.
    """
    missing = [c for c in ("query", "item") if c not in pairs.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; need 'query' and 'item'")
    items = pd.to_numeric(pairs["item"], errors="coerce")
    bad = items.isna() | (items < 0) | (items >= n_items)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{name}: row {row} has item {pairs['item'].tolist()[row]!r}, not a catalogue row "
            f"in [0, {n_items})"
        )
    queries = pairs["query"].fillna("").astype(str).str.strip()
    keep = queries != ""
    out = pd.DataFrame({"query": queries[keep], "item": items[keep].astype(np.int64)})
    out = out.reset_index(drop=True)
    out.attrs["dropped_empty_query"] = int((~keep).sum())
    return out


def mine_hard_negatives(
    queries: Sequence[str],
    texts: Sequence[str],
    known: dict[str, set[int]],
    n: int,
    skip: int = 3,
    depth: int = 30,
    seed: int = 0,
) -> np.ndarray:
    """``n`` BM25-mined negatives per distinct query, ``(len(queries), n)``, -1 if none.

    BM25 (bm25s, English stemmer and stop words) ranks the catalogue; ranks ``skip+1 ..
    depth`` minus every ``known[query]`` item are candidates, of which ``n`` are drawn at
    random, so that an item is hard (it shares words with the query) yet unlikely to be an
    unjudged positive (those crowd the very top ranks).
    """
    import bm25s
    import Stemmer

    out = np.full((len(queries), n), -1, dtype=np.int64)
    if n == 0 or not len(queries):
        return out
    stemmer = Stemmer.Stemmer("english")
    index = bm25s.BM25()
    index.index(
        bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, show_progress=False)
    ids, scores = index.retrieve(tokens, k=min(depth, len(texts)), show_progress=False, n_threads=1)
    rng = np.random.default_rng(seed)
    for row, query in enumerate(queries):
        exclude = known.get(query, set())
        pool = [
            int(i)
            for i, s in zip(ids[row, skip:], scores[row, skip:], strict=True)
            if s > 0 and int(i) not in exclude
        ]
        if pool:
            picked = rng.choice(pool, size=min(n, len(pool)), replace=False)
            out[row, : len(picked)] = picked
    return out


class BiEncoderFinetuner:
    """Fine-tunes MiniLM on (query, item) pairs; parameters only here, work in ``fit``.

    ``epochs`` may be fractional; ``max_minutes`` stops training early (the report says
    so). ``base`` is a MiniLM folder to start from (None: the packaged model).
    """

    def __init__(
        self,
        epochs: float = 1.0,
        batch_size: int = 64,
        lr: float = 5e-5,
        lora_rank: int | None = None,
        hard_negatives: int = 1,
        negative_skip: int = 3,
        negative_depth: int = 30,
        scale: float = 20.0,
        warmup: float = 0.1,
        weight_decay: float = 0.01,
        max_query_tokens: int = 32,
        max_item_tokens: int = 64,
        towers: str = "both",
        freeze_embeddings: bool = True,
        catalogue_negatives: bool = False,
        max_minutes: float | None = None,
        threads: int = 2,
        base: Path | None = None,
        seed: int = 0,
        show_progress: bool = True,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lora_rank = lora_rank
        self.hard_negatives = hard_negatives
        self.negative_skip = negative_skip
        self.negative_depth = negative_depth
        self.scale = scale
        self.warmup = warmup
        self.weight_decay = weight_decay
        self.max_query_tokens = max_query_tokens
        self.max_item_tokens = max_item_tokens
        self.towers = towers
        self.freeze_embeddings = freeze_embeddings
        self.catalogue_negatives = catalogue_negatives
        self.max_minutes = max_minutes
        self.threads = threads
        self.base = base
        self.seed = seed
        self.show_progress = show_progress

    def get_params(self) -> dict[str, object]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "lora_rank": self.lora_rank,
            "hard_negatives": self.hard_negatives,
            "negative_skip": self.negative_skip,
            "negative_depth": self.negative_depth,
            "scale": self.scale,
            "warmup": self.warmup,
            "weight_decay": self.weight_decay,
            "max_query_tokens": self.max_query_tokens,
            "max_item_tokens": self.max_item_tokens,
            "towers": self.towers,
            "freeze_embeddings": self.freeze_embeddings,
            "catalogue_negatives": self.catalogue_negatives,
            "max_minutes": self.max_minutes,
            "threads": self.threads,
            "base": None if self.base is None else str(self.base),
            "seed": self.seed,
            "show_progress": self.show_progress,
        }

    def fit(
        self,
        pairs: pd.DataFrame,
        texts: Sequence[str],
        exclude: pd.DataFrame | None = None,
        item_vectors: np.ndarray | None = None,
    ) -> Self:
        """Train on ``pairs`` (``query``, ``item`` = row of ``texts``, the item texts).

        ``exclude``: more (query, item) pairs never to use as negatives, e.g. judged items
        that are relevant but too weakly to train on as positives. ``item_vectors``: the
        base model's unit vectors of ``texts`` for ``towers="query"`` (encoded here, only
        for the items training touches, if None).
        """
        import torch

        if self.towers not in ("both", "query"):
            raise ValueError(f"towers must be 'both' or 'query', got {self.towers!r}")
        if self.catalogue_negatives and (self.towers != "query" or item_vectors is None):
            raise ValueError("catalogue_negatives needs towers='query' and item_vectors")
        if item_vectors is not None and item_vectors.shape[0] != len(texts):
            raise ValueError(
                f"item_vectors has {item_vectors.shape[0]} rows for {len(texts)} item texts"
            )

        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 for in-batch negatives, got {self.batch_size}"
            )
        texts = [str(t) for t in texts]
        pairs = check_pairs(pairs, len(texts))
        if pairs.empty:
            raise ValueError("pairs: no (query, item) pair with a non-empty query to train on")
        known: dict[str, set[int]] = {}
        for frame in (
            pairs,
            None if exclude is None else check_pairs(exclude, len(texts), "exclude"),
        ):
            if frame is not None:
                for query, group in frame.groupby("query")["item"]:
                    known.setdefault(str(query), set()).update(group.tolist())

        torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        wall, cpu = time.perf_counter(), cpu_seconds()
        distinct = sorted(known.keys() & set(pairs["query"]))
        mined = mine_hard_negatives(
            distinct,
            texts,
            known,
            self.hard_negatives,
            self.negative_skip,
            self.negative_depth,
            self.seed,
        )
        negatives = mined[pd.Index(distinct).get_indexer(pairs["query"])]
        mining_seconds = time.perf_counter() - wall

        model, transformer, tokenizer = self._load()
        frozen = None
        if self.towers == "query":
            frozen = self._frozen_vectors(model, texts, pairs, mined, item_vectors)
            catalogue = torch.from_numpy(frozen)
        n_pairs = len(pairs)
        steps = max(1, math.ceil(n_pairs * self.epochs / self.batch_size))
        rng = np.random.default_rng(self.seed)
        order = np.concatenate(
            [rng.permutation(n_pairs) for _ in range(math.ceil(self.epochs) or 1)]
        )
        params = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        warm = max(1, int(self.warmup * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
        )
        query_codes = pd.factorize(pairs["query"])[0]
        item_of = pairs["item"].to_numpy()
        query_of = pairs["query"].to_numpy()
        losses: list[float] = []
        transformer.train()
        train_start = time.perf_counter()
        stopped_early = False
        done = 0
        bar = tqdm(range(steps), desc="fine-tune", disable=not self.show_progress)
        for step in bar:
            if self.max_minutes is not None and time.perf_counter() - wall > self.max_minutes * 60:
                stopped_early = True
                break
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]
            if len(rows) < 2:
                break
            if self.catalogue_negatives:
                assert frozen is not None
                q = self._embed(
                    transformer, tokenizer, [query_of[r] for r in rows], self.max_query_tokens
                )
                logits = self.scale * q @ catalogue.T
                hide_rows, hide_cols = self._other_positives(query_of[rows], item_of[rows], known)
                logits = logits.index_put(
                    (torch.from_numpy(hide_rows), torch.from_numpy(hide_cols)),
                    torch.tensor(float("-inf")),
                )
                loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(item_of[rows]))
                self._step(loss, optimizer, schedule, params, losses)
                done += len(rows)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                continue
            hard = negatives[rows].ravel()
            hard = hard[hard >= 0]
            columns = np.concatenate([item_of[rows], hard])
            q = self._embed(
                transformer, tokenizer, [query_of[r] for r in rows], self.max_query_tokens
            )
            if frozen is None:
                d = self._embed(
                    transformer, tokenizer, [texts[i] for i in columns], self.max_item_tokens
                )
            else:
                d = torch.from_numpy(frozen[columns])
            logits = self.scale * q @ d.T
            mask = self._false_negatives(query_of[rows], query_codes[rows], columns, known)
            logits = logits.masked_fill(torch.from_numpy(mask), float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(rows)))
            self._step(loss, optimizer, schedule, params, losses)
            done += len(rows)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        train_seconds = time.perf_counter() - train_start
        transformer.eval()
        self.model_ = self._merged(model)
        self.report_ = {
            "pairs": n_pairs,
            "dropped_empty_query": pairs.attrs["dropped_empty_query"],
            "distinct_queries": len(distinct),
            "queries_without_hard_negative": int((mined < 0).all(axis=1).sum())
            if self.hard_negatives
            else len(distinct),
            "steps_planned": steps,
            "steps_done": len(losses),
            "pairs_seen": done,
            "stopped_early": stopped_early,
            "mining_seconds": mining_seconds,
            "train_seconds": train_seconds,
            "pairs_per_second": done / max(train_seconds, 1e-9),
            "cpu_seconds": cpu_seconds() - cpu,
            "loss_first": float(np.mean(losses[:20])) if losses else None,
            "loss_last": float(np.mean(losses[-20:])) if losses else None,
        }
        return self

    @staticmethod
    def _step(
        loss: Any, optimizer: Any, schedule: Any, params: list[Any], losses: list[float]
    ) -> None:
        import torch

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))

    @staticmethod
    def _other_positives(
        queries: np.ndarray, items: np.ndarray, known: dict[str, set[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) of every known positive of a row's query but its own: with the whole
        catalogue as negatives, these must be hidden, not pushed down."""
        rows: list[int] = []
        cols: list[int] = []
        for row, (query, own) in enumerate(zip(queries, items, strict=True)):
            others = known.get(query, set()) - {int(own)}
            rows.extend([row] * len(others))
            cols.extend(others)
        return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)

    def _frozen_vectors(
        self,
        model: Any,
        texts: list[str],
        pairs: pd.DataFrame,
        mined: np.ndarray,
        item_vectors: np.ndarray | None,
    ) -> np.ndarray:
        """Base-model item vectors for the query-only mode (zeros for items never used)."""
        if item_vectors is not None:
            return np.ascontiguousarray(item_vectors, dtype=np.float32)
        used = np.union1d(pairs["item"].to_numpy(), mined[mined >= 0])
        out = np.zeros((len(texts), model.get_sentence_embedding_dimension()), np.float32)
        out[used] = model.encode(
            [texts[i] for i in used],
            batch_size=64,
            normalize_embeddings=True,
            show_progress_bar=self.show_progress,
        )
        return out

    def _load(self) -> tuple[Any, Any, Any]:
        """The sentence-transformers model, its (maybe LoRA-wrapped) transformer, tokenizer."""
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(self.base or minilm_path()), device="cpu")
        transformer = model[0].auto_model
        if self.freeze_embeddings:
            transformer.embeddings.requires_grad_(False)
        if self.lora_rank:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as exc:
                raise ImportError("lora_rank needs peft: pip install 'shoplm[finetune]'") from exc
            config = LoraConfig(
                r=self.lora_rank,
                lora_alpha=2 * self.lora_rank,
                lora_dropout=0.0,
                target_modules=["query", "key", "value", "dense"],
            )
            transformer = get_peft_model(transformer, config)
            model[0].auto_model = transformer
        return model, transformer, model.tokenizer

    def _merged(self, model: Any) -> Any:
        """LoRA adapters folded into the weights: the saved model is a plain MiniLM."""
        if self.lora_rank:
            model[0].auto_model = model[0].auto_model.merge_and_unload()
        return model

    @staticmethod
    def _embed(transformer: Any, tokenizer: Any, texts: list[str], max_tokens: int) -> Any:
        """Mean-pooled, L2-normalised embeddings with gradients (as the model's own pooling)."""
        import torch

        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        hidden = transformer(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    @staticmethod
    def _false_negatives(
        queries: np.ndarray, codes: np.ndarray, columns: np.ndarray, known: dict[str, set[int]]
    ) -> np.ndarray:
        """(rows, columns) True where a column other than the row's own positive is a known
        positive of the row's query (so it must not count as a negative)."""
        n = len(queries)
        mask = np.zeros((n, len(columns)), dtype=bool)
        same_query = codes[:, None] == codes[None, :]
        mask[:, :n] = same_query
        for row, query in enumerate(queries):
            positives = known.get(query)
            if positives:
                mask[row] |= np.fromiter((c in positives for c in columns), bool, len(columns))
        mask[np.arange(n), np.arange(n)] = False
        return mask

    def save(self, path: Path) -> Path:
        """Write the model folder, its int8 ONNX export and the manifest; returns ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save(str(path))
        weights = path / "model.safetensors"
        model_id = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
        export_minilm_onnx(path / ONNX_NAME, model_dir=path)
        manifest = {
            "kind": "bi-encoder",
            "base": "minilm",
            "model_id": model_id,
            # "base": items are encoded by the base model (query tower trained alone)
            "items": "base" if self.towers == "query" else "model",
            "base_dir": None if self.base is None else str(self.base),
            "onnx": ONNX_NAME,
            "params": self.get_params(),
            "report": self.report_,
        }
        (path / FINETUNED_MANIFEST).write_text(json.dumps(manifest, indent=1))
        return path


def positive_pairs(
    labels: pd.DataFrame, item_ids: pd.Index, min_relevance: float = 2.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training pairs from graded judgments (``query, item_id, relevance`` 1-3).

    Returns ``(positives, exclude)``: pairs judged at least ``min_relevance`` (mean of the
    raters) are positives; every judged pair above the lowest grade is kept out of the
    negatives, since a half-relevant item is no negative either.
    """
    pairs = labels.groupby(["query", "item_id"], as_index=False)["relevance"].mean()
    pairs["item"] = item_ids.get_indexer(pairs["item_id"])
    if (pairs["item"] < 0).any():
        raise ValueError(f"{int((pairs['item'] < 0).sum())} judged items are not in the catalogue")
    positives = pairs[pairs["relevance"] >= min_relevance][["query", "item"]]
    exclude = pairs[pairs["relevance"] > 1.0][["query", "item"]]
    return positives.reset_index(drop=True), exclude.reset_index(drop=True)


def synthetic_pairs(frame: pd.DataFrame, item_ids: pd.Index) -> pd.DataFrame:
    """Pairs from an augmentation parquet (``item_id, query, backend, kept``): kept rows only.

    Queries whose item is not in the catalogue are dropped and counted in
    ``attrs["dropped_unknown_item"]`` (a parquet made for another version of the catalogue).
    """
    missing = [c for c in ("item_id", "query", "kept") if c not in frame.columns]
    if missing:
        raise ValueError(f"synthetic queries: missing column(s) {missing}")
    kept = frame[frame["kept"].astype(bool)]
    item = item_ids.get_indexer(kept["item_id"].astype(item_ids.dtype))
    out = pd.DataFrame({"query": kept["query"].astype(str).to_numpy(), "item": item})
    unknown = out["item"] < 0
    out = out[~unknown].reset_index(drop=True)
    out.attrs["dropped_unknown_item"] = int(unknown.sum())
    out.attrs["dropped_not_kept"] = int(len(frame) - len(kept))
    return out
