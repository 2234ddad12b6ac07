"""RecBole's SASRec as a side-by-side peer on Amazon Beauty, scored under shoplm's protocol.

Runs with a separate virtual environment's python (RecBole and its pins are not shoplm
dependencies; docs/benchmarks.md, "RecBole SASRec peer", has the install recipe):

    /tmp/recbole-venv/bin/python bench/peer_recbole.py --shared-data ../shared/data \\
        --workdir /tmp/recbole-work --minutes 25 --threads 1 \\
        --install-notes /tmp/recbole-install-notes.json \\
        --out bench/results/peer_recbole_sasrec.json

The script never imports ray and never ``torch.load``s a checkpoint, so of the install
recipe's pins only ``numpy<2`` and ``pandas<3`` matter to it; ``setuptools<81`` and
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` are what RecBole's own ``run_recbole`` needs.

What it does:

1. Converts ``beauty_user_sequence.txt.gz`` into RecBole atomic files under ``--workdir``
   (never inside the repository): ``beauty.inter`` with ``user_id:token item_id:token
   timestamp:float``, the timestamp being a running counter over the file, so each user's
   items keep their order exactly (the data has no real timestamps).
2. Trains RecBole's own ``SASRec`` with its own data pipeline and ``Trainer``: leave-one-out
   split ``{"LS": "valid_and_test"}`` in time order, prefix augmentation of the training
   sequences, ``loss_type: CE`` over the full catalogue, ``MAX_ITEM_LIST_LENGTH`` 50, hidden
   size 64, 2 layers, 2 heads, inner size 256, dropout 0.5 / 0.5 (RecBole's defaults), Adam
   at 1e-3, batch 2048, seed fixed. Epochs run until the wall-clock budget (``--minutes``,
   training plus the per-epoch validation, as ``fit_min`` in ``bench/eval_sasrec.py``) would
   be exceeded by one more epoch, or until RecBole's early stopping (10 epochs without a
   better validation NDCG@10). The epoch with the best validation NDCG@10 is restored.
   Only ``Trainer._train_epoch`` / ``_valid_epoch`` are driven from here, because
   ``Trainer.fit`` has no time budget; nothing in RecBole is patched.
3. Scores the restored model under shoplm's protocol: for every user the last item is the
   target and everything before it the history (the model sees its last 50 items); the
   target is ranked against every item, the user's whole history masked, ties pessimistic
   (``shoplm.eval.protocols.evaluate_next_item`` when ``src/`` imports, else a
   reimplementation of the same three steps). RecBole's evaluator does not mask the
   history for sequential models, so its own validation and test figures are reported too,
   with shoplm's unmasked figures beside them as a cross-check of the id mapping.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import gzip
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KS = (5, 10, 20)
SEQ_FILE = ("amazon-2014-5core-seqrec", "beauty_user_sequence.txt.gz")
MODEL_CONFIG: dict[str, Any] = {
    "loss_type": "CE",
    "train_neg_sample_args": None,
    "MAX_ITEM_LIST_LENGTH": 50,
    "hidden_size": 64,
    "inner_size": 256,
    "n_layers": 2,
    "n_heads": 2,
    "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5,
    "learning_rate": 0.001,
    "train_batch_size": 2048,
    "stopping_step": 10,
}


def read_sequences(path: Path, max_users: int | None) -> tuple[list[str], list[list[str]]]:
    """``reviewerID asin_1 ... asin_n`` lines, in file order (items oldest first)."""
    users, seqs = [], []
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        tokens = line.split()
        if tokens:
            users.append(tokens[0])
            seqs.append(tokens[1:])
    if max_users is not None:
        users, seqs = users[:max_users], seqs[:max_users]
    return users, seqs


def write_atomic(users: list[str], seqs: list[list[str]], folder: Path) -> Path:
    """RecBole's ``.inter`` file; the timestamp is a running counter, so order is exact."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "beauty.inter"
    t = 0
    with path.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, seq in zip(users, seqs, strict=True):
            for item in seq:
                f.write(f"{user}\t{item}\t{t}\n")
                t += 1
    return path


def versions() -> dict[str, str]:
    names = ["recbole", "torch", "numpy", "pandas", "scipy", "setuptools", "ray"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class RecBoleScorer:
    """shoplm's ``Scorer`` over a trained RecBole sequential model.

    ``score`` takes histories in shoplm's item ids, keeps each one's last ``max_len`` items,
    maps them to RecBole's internal ids (0 is RecBole's padding), and returns scores over
    shoplm's items (the padding column dropped, so it can never be recommended).
    """

    def __init__(self, model: Any, rec_ids: np.ndarray, max_len: int) -> None:
        self.model = model
        self.rec_ids = rec_ids  # shoplm item id -> RecBole internal item id
        self.max_len = max_len

    def score_lists(self, histories: list[np.ndarray]) -> np.ndarray:
        import torch
        from recbole.data.interaction import Interaction

        seq = np.zeros((len(histories), self.max_len), dtype=np.int64)
        lengths = np.zeros(len(histories), dtype=np.int64)
        for row, items in enumerate(histories):
            tail = self.rec_ids[np.asarray(items, dtype=np.int64)[-self.max_len :]]
            seq[row, : tail.size] = tail  # RecBole's sequences are left-aligned
            lengths[row] = tail.size
        batch = Interaction(
            {
                self.model.ITEM_SEQ: torch.from_numpy(seq),
                self.model.ITEM_SEQ_LEN: torch.from_numpy(lengths),
            }
        )
        self.model.eval()
        with torch.no_grad():
            scores = self.model.full_sort_predict(batch).cpu().numpy()
        return scores[:, self.rec_ids].astype(np.float32)

    def score(self, histories: Any) -> np.ndarray:
        """shoplm's ``Scorer.score``: a ``Sequences`` batch in, (n, n_items) scores out."""
        return self.score_lists([histories[i] for i in range(len(histories))])


def local_next_item(
    scorer: RecBoleScorer, histories: list[np.ndarray], targets: np.ndarray, mask: bool
) -> dict[str, float]:
    """The same protocol as ``evaluate_next_item`` for when shoplm's src does not import."""
    ranks = np.empty(len(histories), dtype=np.int64)
    for start in range(0, len(histories), 1024):
        chunk = histories[start : start + 1024]
        scores = scorer.score_lists(chunk)
        if mask:
            for row, items in enumerate(chunk):
                scores[row, items] = -np.inf
        tgt = targets[start : start + len(chunk)]
        target_scores = scores[np.arange(len(chunk)), tgt][:, None]
        ranks[start : start + len(chunk)] = np.count_nonzero(scores >= target_scores, 1) - 1
    metrics: dict[str, float] = {}
    for k in KS:
        metrics[f"hr@{k}"] = float((ranks < k).mean())
        metrics[f"ndcg@{k}"] = float(np.where(ranks < k, 1 / np.log2(ranks + 2.0), 0).mean())
    metrics["mrr"] = float((1.0 / (ranks + 1)).mean())
    metrics["n_users"] = len(histories)
    return metrics


def shoplm_protocol(
    scorer: RecBoleScorer, seqs: list[np.ndarray], mask: bool
) -> tuple[dict[str, float], str]:
    """Test metrics: last item the target, the rest the history, full ranking."""
    targets = np.array([s[-1] for s in seqs], dtype=np.int64)
    try:
        sys.path.insert(0, str(REPO / "src"))
        from shoplm.data.interactions import Sequences
        from shoplm.eval.protocols import evaluate_next_item
    except ImportError as exc:
        print(f"shoplm does not import ({exc}); using the local reimplementation")
        histories = [s[:-1] for s in seqs]
        return local_next_item(scorer, histories, targets, mask), "local reimplementation"
    history = Sequences.from_lists([s[:-1] for s in seqs])
    metrics = evaluate_next_item(scorer, history, targets, ks=KS, mask_history=mask)
    return metrics, "shoplm.eval.protocols.evaluate_next_item (ties pessimistic)"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recbole-work"))
    parser.add_argument("--minutes", type=float, default=25.0, help="training budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=300, help="RecBole's default")
    parser.add_argument("--max-users", type=int, default=None, help="smoke tests only")
    parser.add_argument("--install-notes", type=Path, default=None, help="JSON to embed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out.resolve()
    seq_path = (args.shared_data / SEQ_FILE[0] / SEQ_FILE[1]).resolve()
    workdir = args.workdir.resolve()
    if workdir == REPO or REPO in workdir.parents:
        raise SystemExit("--workdir must lie outside the repository (the data is not ours)")
    notes = json.loads(args.install_notes.read_text()) if args.install_notes else None
    wall = time.perf_counter()

    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    users, raw_seqs = read_sequences(seq_path, args.max_users)
    write_atomic(users, raw_seqs, workdir / "beauty")
    os.chdir(workdir)  # RecBole writes log/, log_tensorboard/ and saved/ under the cwd
    config_dict = {
        **MODEL_CONFIG,
        "data_path": str(workdir),
        "checkpoint_dir": str(workdir / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "metrics": ["Recall", "NDCG"],
        "topk": list(KS),
        "valid_metric": "NDCG@10",
        "epochs": args.max_epochs,
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": False,
        "show_progress": False,
        "log_wandb": False,
        "worker": 0,
    }
    argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config reads --key=value from argv
    try:
        config = Config(model="SASRec", dataset="beauty", config_dict=config_dict)
    finally:
        sys.argv = argv
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    trainer.eval_collector.data_collect(train_data)
    prep_s = time.perf_counter() - wall
    print(f"data ready in {prep_s:.0f} s: {dataset}", flush=True)

    budget = args.minutes * 60
    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state, stale = -1.0, -1, None, 0
    stop_reason = "max epochs"
    start = time.perf_counter()
    cpu_start = time.process_time()
    for epoch in range(args.max_epochs):
        t0 = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        t1 = time.perf_counter()
        score, _ = trainer._valid_epoch(valid_data, show_progress=False)
        t2 = time.perf_counter()
        history.append(
            {
                "epoch": epoch,
                "loss": round(float(loss), 2),
                "valid_ndcg@10": float(score),
                "train_s": round(t1 - t0, 1),
                "valid_s": round(t2 - t1, 1),
            }
        )
        print(
            f"epoch {epoch}: loss {float(loss):.1f} valid NDCG@10 {score:.4f} "
            f"train {t1 - t0:.0f} s valid {t2 - t1:.0f} s load {load_average()}",
            flush=True,
        )
        if score > best_score:
            best_score, best_epoch, stale = float(score), epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stale >= config["stopping_step"]:
            stop_reason = "early stopping"
            break
        if t2 - start + (t2 - t0) > budget:
            stop_reason = "time budget"
            break
    fit_s = time.perf_counter() - start
    fit_cpu_s = time.process_time() - cpu_start
    assert best_state is not None
    model.load_state_dict(best_state)

    recbole_valid = dict(trainer.evaluate(valid_data, load_best_model=False))
    recbole_test = dict(trainer.evaluate(test_data, load_best_model=False))

    asins = sorted({item for seq in raw_seqs for item in seq})
    index = {asin: i for i, asin in enumerate(asins)}
    rec_ids = np.asarray(dataset.token2id(dataset.iid_field, asins), dtype=np.int64)
    seqs = [np.array([index[a] for a in seq], dtype=np.int64) for seq in raw_seqs]
    scorer = RecBoleScorer(model, rec_ids, config["MAX_ITEM_LIST_LENGTH"])
    t_eval = time.perf_counter()
    masked, source = shoplm_protocol(scorer, seqs, mask=True)
    unmasked, _ = shoplm_protocol(scorer, seqs, mask=False)
    eval_s = time.perf_counter() - t_eval
    repeats = sum(int(s[-1] in set(s[:-1].tolist())) for s in seqs)

    report = {
        "dataset": "amazon-2014-5core-seqrec beauty",
        "model": "RecBole SASRec",
        "protocol": (
            "leave-one-out, last item the test target, full ranking over every item, "
            "the user's history masked, ties pessimistic"
        ),
        "metrics_source": source,
        "test": masked,
        "test_unmasked": unmasked,
        "recbole_own": {
            "note": "RecBole's evaluator: history not masked for sequential models",
            "valid": recbole_valid,
            "test": recbole_test,
        },
        "users": len(seqs),
        "items": len(asins),
        "targets_repeating_history": repeats,
        "config": {
            **MODEL_CONFIG,
            "seed": args.seed,
            "threads": args.threads,
            "valid_metric": "NDCG@10",
        },
        "budget_minutes": args.minutes,
        "stop_reason": stop_reason,
        "epochs_completed": len(history),
        "best_epoch": best_epoch,
        "best_valid_ndcg@10": best_score,
        "fit_s": round(fit_s, 1),
        "fit_cpu_s": round(fit_cpu_s, 1),
        "prep_s": round(prep_s, 1),
        "shoplm_eval_s": round(eval_s, 1),
        "wall_s": round(time.perf_counter() - wall, 1),
        "load_average_end": load_average(),
        "epochs": history,
        "versions": versions(),
        "install_notes": notes,
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("test", "recbole_own", "epochs_completed")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
