"""Data augmentation: synthetic shopper queries and descriptions from a language model.

Three backends share one interface (:class:`GenerationBackend`): templates (no model, runs
everywhere), a local GGUF model through llama-cpp-python (extra ``shoplm[llm]``), and any
OpenAI-compatible HTTP endpoint. See docs/augment.md.
"""

from shoplm.augment.base import GenerationBackend, GenerationStats, Product
from shoplm.augment.cache import GenerationCache, generate_cached
from shoplm.augment.enrich import DescriptionEnricher
from shoplm.augment.llamacpp import LlamaCppBackend
from shoplm.augment.openai_compat import BackendConfigError, OpenAICompatibleBackend
from shoplm.augment.queries import (
    RoundTripFilter,
    SyntheticQueries,
    SyntheticQueryGenerator,
    detect_language,
    products_from_items,
)
from shoplm.augment.run import augment_catalogue
from shoplm.augment.template import TemplateBackend

__all__ = [
    "BackendConfigError",
    "DescriptionEnricher",
    "GenerationBackend",
    "GenerationCache",
    "GenerationStats",
    "LlamaCppBackend",
    "OpenAICompatibleBackend",
    "Product",
    "RoundTripFilter",
    "SyntheticQueries",
    "SyntheticQueryGenerator",
    "TemplateBackend",
    "augment_catalogue",
    "detect_language",
    "generate_cached",
    "products_from_items",
]
