"""SASRec: a causal transformer over a user's recent items, the sequential source.

Why this design (see docs/sasrec.md for the measurements behind each choice):

- **Full softmax cross-entropy** over the whole catalogue at every position. Re-runs of
  SASRec with this loss (Klenitskiy & Vasilev, RecSys'23) beat the original one-negative
  binary loss by a wide margin; with shop-sized catalogues (10^4 items) the full softmax is
  affordable on a CPU.
- **Tied output layer**: an item is scored by the dot product of the sequence state with the
  item's own input embedding, so every gradient step on an item's input also shapes its
  output, which matters when most items are seen a handful of times.
- **Length-bucketed batches**: rows are padded only to the longest row in their batch, so
  a catalogue of short sessions does not pay for ``max_len`` positions everywhere.
- **Optional item text vectors** (``item_init``): each item's embedding is its free id
  vector plus a learned linear projection of its text vector. The projection is trained by
  every item, so an item seen twice, or never, still lands next to items with similar text.
- **Early stopping** on a validation split's NDCG@10 within a wall-clock budget, then the
  best epoch's weights are restored: training time on a shared CPU is the binding limit.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shoplm.data.interactions import Interactions, Sequences
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.base import Recommender

_CONFIG_FILE = "sasrec.json"
_WEIGHTS_FILE = "sasrec.pt"
_SCORE_BATCH = 256


@dataclass(frozen=True)
class _NetConfig:
    """What is needed to rebuild the network before loading its weights."""

    n_items: int
    dim: int
    n_layers: int
    n_heads: int
    max_len: int
    dropout: float
    text_dim: int


class _Block(nn.Module):
    """Pre-norm transformer block: pre-norm trains stably without learning-rate warm-up."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = (
            self.qkv(self.norm_attn(x))
            .view(b, length, 3, self.n_heads, dim // self.n_heads)
            .permute(2, 0, 3, 1, 4)
        )
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.out(att.transpose(1, 2).reshape(b, length, dim)))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class _SASRecNet(nn.Module):
    """Item id 0 is padding; catalogue item ``i`` is row ``i + 1`` of the embedding table."""

    def __init__(self, cfg: _NetConfig) -> None:
        super().__init__()
        # Items and positions start at one scale, so neither drowns the other in the sum.
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=cfg.dim**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.pos_emb.weight, std=cfg.dim**-0.5)
        self.register_buffer("text", torch.zeros(cfg.n_items + 1, cfg.text_dim))
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim, bias=False) if cfg.text_dim else None
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            _Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.dim)

    def item_table(self) -> torch.Tensor:
        """Embeddings of all items (padding row included): id vector plus projected text."""
        table = self.item_emb.weight
        if self.text_proj is not None:
            table = table + self.text_proj(self.text)
        return table

    def encode(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Hidden state after every position of right-aligned, 0-padded ``seq`` (B, L)."""
        valid = seq > 0
        length = seq.shape[1]
        # Positions count from the first real item, as at query time, so a training prefix
        # and the same prefix served later see identical position embeddings.
        pos = (torch.arange(length) - (length - valid.sum(1, keepdim=True))).clamp(min=0)
        x = self.emb_dropout(table[seq] + self.pos_emb(pos))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        # Padding rows may attend to themselves so their softmax is defined; they are never
        # read out.
        mask = (causal & (valid[:, None, :] | torch.eye(length, dtype=torch.bool)))[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)


class _FullSoftmaxCE(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ items.T`` over the whole catalogue.

    The (positions x catalogue) logit matrix dominates training time on a CPU. Autograd's
    log-softmax + NLL walks it about ten times and allocates three copies; this walks it five
    times in place and keeps one. The softmax is never normalised in the big matrix: with
    ``E = exp(logits - max)`` and row sums ``s``, the gradient ``(E / s - onehot) @ items`` is
    ``(E @ items) / s - items[target]``, and likewise for the item side, so the division
    happens on (positions x dim) matrices instead.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        items: torch.Tensor,
        targets: torch.Tensor,
        smoothing: float,
    ) -> torch.Tensor:
        exp = hidden @ items.T
        target_logit = exp.gather(1, targets[:, None]).squeeze(1)
        loss = -target_logit
        if smoothing:
            loss = (1 - smoothing) * loss - smoothing * exp.mean(1)
        top = exp.amax(1, keepdim=True)
        row_sum = exp.sub_(top).exp_().sum(1, keepdim=True)
        loss = loss + row_sum.log().squeeze(1) + top.squeeze(1)
        ctx.save_for_backward(hidden, items, targets, exp, row_sum)
        ctx.smoothing = smoothing
        return loss.sum()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        hidden, items, targets, exp, row_sum = ctx.saved_tensors
        eps = ctx.smoothing
        weight = grad / row_sum  # (positions, 1): the softmax normaliser times the loss scale
        grad_hidden = (exp @ items) * weight - (1 - eps) * grad * items[targets]
        grad_items = exp.T @ (hidden * weight)
        grad_items.index_add_(0, targets, hidden, alpha=-(1 - eps) * float(grad))
        if eps:
            grad_hidden -= eps * grad * items.mean(0)
            grad_items -= eps * grad / items.shape[0] * hidden.sum(0)
        return grad_hidden, grad_items, None, None


class SASRecRecommender(Recommender):
    """Next-item recommender: a causal self-attention model over the last ``max_len`` items.

    Parameters follow the published Beauty settings (hidden 64, 2 layers, dropout 0.5, Adam
    1e-3); ``max_minutes`` caps training wall time, ``patience`` is counted in validation
    epochs without a better NDCG@10. ``item_init`` is an optional (n_items, d) array of text
    encoder vectors (rows of unknown text may be zero).
    """

    def __init__(
        self,
        max_len: int = 50,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 1,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        batch_size: int = 128,
        max_epochs: int = 200,
        patience: int = 5,
        max_minutes: float = 30.0,
        item_init: np.ndarray | None = None,
        seed: int = 0,
        n_threads: int = 2,
        verbose: bool = False,
    ) -> None:
        self.max_len = max_len
        self.dim = dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.max_minutes = max_minutes
        self.item_init = item_init
        self.seed = seed
        self.n_threads = n_threads
        self.verbose = verbose

    # ------------------------------------------------------------------ training
    def fit(
        self,
        interactions: Interactions,
        validation: tuple[Sequences, np.ndarray] | None = None,
    ) -> Self:
        """Train on every next-item step of every user's sequence.

        ``validation`` is ``(histories, targets)``, e.g. a leave-one-out split's
        ``valid_history`` / ``valid_targets``: each epoch is scored by NDCG@10 on it, training
        stops after ``patience`` epochs without improvement, and the best epoch is restored.
        Without it, training runs ``max_epochs`` (or until ``max_minutes``).
        """
        start = time.perf_counter()
        torch.set_num_threads(self.n_threads)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.n_items = interactions.n_items
        text = self._text_matrix()
        self.net_config_ = _NetConfig(
            n_items=self.n_items,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            max_len=self.max_len,
            dropout=self.dropout,
            text_dim=0 if text is None else text.shape[1],
        )
        self.net_ = _SASRecNet(self.net_config_)
        if text is not None:
            self.net_.text.copy_(torch.from_numpy(text))
        seqs = interactions.to_sequences()
        self.popularity_ = np.log1p(
            np.bincount(seqs.items, minlength=self.n_items).astype(np.float32)
        )
        windows = _training_windows(seqs, self.max_len + 1)
        # Decay shrinks what data does not support: the id vectors of rarely seen items fall
        # back towards their projected text. Norm gains and biases are not decayed.
        params = list(self.net_.parameters())
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=self.lr,
            weight_decay=self.weight_decay,
            betas=(0.9, 0.98),
            fused=True,
        )
        best, best_state, stale = -1.0, None, 0
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.max_epochs):
            t0, cpu0 = time.perf_counter(), time.process_time()
            loss, n_targets = self._train_epoch(windows, optimizer, rng)
            record = {
                "epoch": epoch + 1,
                "loss": loss,
                "n_targets": n_targets,
                "train_s": time.perf_counter() - t0,
            }
            if validation is not None:
                record["ndcg10"] = evaluate_next_item(self, *validation, ks=(10,))["ndcg@10"]
                if record["ndcg10"] > best:
                    best, stale = record["ndcg10"], 0
                    best_state = {k: v.clone() for k, v in self.net_.state_dict().items()}
                else:
                    stale += 1
            record["epoch_s"] = time.perf_counter() - t0
            record["epoch_cpu_s"] = time.process_time() - cpu0
            self.history_.append(record)
            if self.verbose:
                print(" ".join(f"{k}={v:.4g}" for k, v in record.items()), flush=True)
            elapsed = time.perf_counter() - start
            if stale >= self.patience or elapsed + record["epoch_s"] > 60 * self.max_minutes:
                break
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.best_epoch_ = (
            max(self.history_, key=lambda r: r["ndcg10"])["epoch"]
            if validation is not None
            else len(self.history_)
        )
        self.fit_minutes_ = (time.perf_counter() - start) / 60
        self.net_.eval()
        return self

    def _text_matrix(self) -> np.ndarray | None:
        """Unit-length text vectors with a zero padding row, or None without ``item_init``."""
        if self.item_init is None:
            return None
        init = np.asarray(self.item_init, dtype=np.float32)
        if init.shape[0] != self.n_items:
            raise ValueError(f"item_init has {init.shape[0]} rows, expected {self.n_items}")
        norms = np.linalg.norm(init, axis=1, keepdims=True)
        unit = init / np.maximum(norms, 1e-12)
        return np.vstack([np.zeros((1, init.shape[1]), np.float32), unit])

    def _train_epoch(
        self, windows: np.ndarray, optimizer: torch.optim.Optimizer, rng: np.random.Generator
    ) -> tuple[float, int]:
        """One pass over the windows; returns the mean loss and the number of targets."""
        self.net_.train()
        total, count = 0.0, 0
        for batch in _length_buckets(windows, self.batch_size, rng):
            seq = torch.from_numpy(windows[batch])
            seq = seq[:, int((seq > 0).any(0).nonzero()[0, 0]) :]
            inputs, targets = seq[:, :-1], seq[:, 1:]
            keep = (targets > 0) & (inputs > 0)
            table = self.net_.item_table()
            hidden = self.net_.encode(inputs, table)[keep]
            loss = _FullSoftmaxCE.apply(hidden, table[1:], targets[keep] - 1, self.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            (loss / len(hidden)).backward()
            optimizer.step()
            total += loss.item()
            count += len(hidden)
        return total / count, count

    # ------------------------------------------------------------------ querying
    def score(self, histories: Sequences) -> np.ndarray:
        """Scores of every item after each history; items outside the catalogue are ignored.

        An empty history (a brand-new session) gets the training popularity of each item.
        """
        self.net_.eval()
        padded = histories.to_padded(self.max_len, pad=-1)
        padded = np.where((padded >= 0) & (padded < self.n_items), padded + 1, 0)
        lengths = (padded > 0).sum(1)
        # Similar lengths share a batch, so each batch is cropped to its own longest row.
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        with torch.inference_mode():
            table = self.net_.item_table()
            for lo in range(0, len(order), _SCORE_BATCH):
                rows = order[lo : lo + _SCORE_BATCH]
                width = max(int(lengths[rows].max()), 1)
                seq = torch.from_numpy(padded[rows, -width:])
                last = self.net_.encode(seq, table)[:, -1]
                out[rows] = (last @ table[1:].T).numpy()
        empty = ~(padded > 0).any(1)
        out[empty] = self.popularity_
        return out

    # ------------------------------------------------------------------ persistence
    def _params(self) -> dict[str, object]:
        """The ``__init__`` parameters except ``item_init``, which the weights carry."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name not in ("self", "item_init")}

    def save(self, path: Path) -> None:
        """Config JSON (parameters, network shape, fit summary) plus the weights."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "params": self._params(),
            "net": asdict(self.net_config_),
            "best_epoch": self.best_epoch_,
            "fit_minutes": self.fit_minutes_,
            "history": self.history_,
        }
        (path / _CONFIG_FILE).write_text(json.dumps(config, indent=2))
        torch.save(
            {"net": self.net_.state_dict(), "popularity": torch.from_numpy(self.popularity_)},
            path / _WEIGHTS_FILE,
        )

    @classmethod
    def load(cls, path: Path) -> Self:
        """Rebuild a model written by :meth:`save`; the text vectors live in the weights."""
        path = Path(path)
        config = json.loads((path / _CONFIG_FILE).read_text())
        model = cls(**config["params"])
        model.n_items = config["net"]["n_items"]
        model.best_epoch_ = config["best_epoch"]
        model.fit_minutes_ = config["fit_minutes"]
        model.history_ = config["history"]
        state = torch.load(path / _WEIGHTS_FILE, weights_only=True)
        model.net_config_ = _NetConfig(**config["net"])
        model.net_ = _SASRecNet(model.net_config_)
        model.net_.load_state_dict(state["net"])
        model.net_.eval()
        model.popularity_ = state["popularity"].numpy()
        return model


def _training_windows(seqs: Sequences, width: int) -> np.ndarray:
    """Cut every row into right-aligned windows of at most ``width`` items (ids shifted +1).

    A row longer than ``width`` becomes several windows that overlap by one item, so each of
    its next-item steps is trained exactly once, with up to ``width - 1`` items of context.
    """
    lengths = seqs.lengths
    steps = np.maximum(lengths - 1, 0)
    n_windows = -(-steps // (width - 1))
    row = np.repeat(np.arange(len(seqs)), n_windows)
    k = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = seqs.indptr[row + 1] - k * (width - 1)
    begin = np.maximum(end - width, seqs.indptr[row])
    cols = np.arange(width) - width
    index = end[:, None] + cols[None, :]
    inside = index >= begin[:, None]
    out = np.zeros((row.size, width), dtype=np.int64)
    out[inside] = seqs.items[index[inside]] + 1
    return out


def _length_buckets(
    windows: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Batches of similar-length windows (little padding), in a random order each epoch."""
    lengths = (windows > 0).sum(1)
    order = np.lexsort((rng.random(len(windows)), lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
