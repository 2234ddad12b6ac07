"""The one contract every text generator keeps, and the product record prompts are built from.

A backend turns prompts into texts: ``generate(prompts) -> list[str | None]``, one answer per
prompt, ``None`` where it could not answer (the caller counts those; nothing is dropped
silently). Prompts are built by the backend itself (:meth:`GenerationBackend.prompt`), because
a base model wants a few-shot text, a chat model the same text as a user message, and the
template backend a structured record: keeping that choice inside the backend lets the cache,
the progress bar and the post-processing treat every backend alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from shoplm.augment import prompts

Task = Literal["queries", "description"]
Language = Literal["en", "zh"]


@dataclass(frozen=True)
class Product:
    """The text of one catalogue item that augmentation reads (empty strings where unknown)."""

    item_id: str
    title: str
    brand: str = ""
    category: str = ""
    description: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    language: Language = "en"


@dataclass
class GenerationStats:
    """What a backend did: requests, retries, failures by reason, tokens and wall time.

    ``completion_tokens`` is what the model reported (or a whitespace/character estimate when
    it reports nothing); tokens per second divide it by ``seconds``.
    """

    prompts: int = 0
    answered: int = 0
    requests: int = 0
    retries: int = 0
    failures: Counter = field(default_factory=Counter)
    completion_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "prompts": self.prompts,
            "answered": self.answered,
            "requests": self.requests,
            "retries": self.retries,
            "failures": dict(self.failures),
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.completion_tokens / self.seconds, 2)
            if self.seconds
            else None,
            "prompts_per_s": round(self.prompts / self.seconds, 3) if self.seconds else None,
        }


class GenerationBackend(ABC):
    """Base class: parameters in ``__init__`` (no loading there); ``generate`` answers.

    ``name`` identifies the backend kind and ``model`` the model behind it; with
    :meth:`generation_params` they make the disk-cache key, so changing any of them
    regenerates rather than reusing an answer made under other settings.
    """

    name: str = "backend"
    #: answers worth caching on disk: False where generating is cheaper than a cache read
    cacheable: bool = True

    @property
    @abstractmethod
    def model(self) -> str:
        """The model identity that goes into the cache key (a name, a file name, a version)."""

    @abstractmethod
    def generation_params(self) -> dict[str, object]:
        """Every setting that changes the answer (temperature, max tokens, seed, ...)."""

    @abstractmethod
    def generate(self, prompts: Sequence[str]) -> list[str | None]:
        """One answer per prompt, in order; ``None`` where no usable answer came back."""

    def prompt(self, task: Task, product: Product, n: int) -> str:
        """The prompt for ``task`` on ``product``: a few-shot text in the product's language."""
        return prompts.few_shot(task, product, n)

    @property
    def stats(self) -> GenerationStats:
        """Counters since construction (created on first access)."""
        if not hasattr(self, "_stats"):
            self._stats = GenerationStats()
        return self._stats
