# ruff: noqa: RUF001, RUF002  (Chinese prompts and templates use full-width punctuation)
"""Few-shot prompts for small base models, and the parser that reads their answers.

A 270M base model follows a pattern, not an instruction: the prompt is an instruction line,
three worked examples in the catalogue's language and the product to complete, so the model
continues with one line of queries separated by ``;`` (``；`` in Chinese). The examples come
first and the product last, so llama.cpp reuses the examples' evaluated prefix across
products and only the product's own tokens are evaluated each time. Chat models get the same
text as the user message; the parser also accepts numbered or bulleted lines.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoplm.augment.base import Product, Task

_QUERY_EXAMPLES = {
    "en": (
        "Write short search queries that shoppers type into an online shop's search box to "
        "find each product.",
        [
            (
                "DEWALT 20-Volt MAX Lithium-Ion Cordless 1/2 in. Drill/Driver Kit",
                "dewalt cordless drill; 20v drill driver kit; battery powered drill; "
                "1/2 in drill dewalt",
            ),
            (
                "Moen Arbor Single-Handle Pull-Down Sprayer Kitchen Faucet in Stainless",
                "moen kitchen faucet; pull down faucet stainless; single handle sink faucet; "
                "moen arbor",
            ),
            (
                "Rust-Oleum 1 qt. Gloss White Oil-Based Interior/Exterior Paint",
                "white gloss paint; oil based paint quart; rustoleum white; exterior enamel paint",
            ),
        ],
        "Product: {product}\nQueries:",
    ),
    "zh": (
        "为每个商品写出顾客在网店搜索框里会输入的简短搜索词。",
        [
            (
                "小米 米家 LED 吸顶灯 450 白色 客厅卧室",
                "小米吸顶灯；客厅灯 led；卧室吸顶灯 白色；米家灯",
            ),
            (
                "美的 1.7升 不锈钢 电热水壶 自动断电",
                "美的电热水壶；不锈钢烧水壶；自动断电水壶；电水壶 1.7l",
            ),
            (
                "得力 无线 充电式 电钻 12V 家用 套装",
                "充电电钻；得力电钻；家用电钻套装；12v 手电钻",
            ),
        ],
        "商品：{product}\n搜索词：",
    ),
}

_DESCRIPTION_EXAMPLES = {
    "en": (
        "Write a one-sentence factual product description from the product name. Do not "
        "invent brands or numbers.",
        [
            (
                "Everbilt 3/8 in. x 2 ft. Zinc-Plated Steel Chain",
                "A 2-foot length of 3/8-inch zinc-plated steel chain from Everbilt for "
                "securing, hanging and general utility use.",
            ),
            (
                "Glacier Bay 2-Piece Round Front Toilet in White",
                "A white two-piece toilet with a round front bowl from Glacier Bay, suited "
                "to compact bathrooms.",
            ),
        ],
        "Product: {product}\nDescription:",
    ),
    "zh": (
        "根据商品名称写一句客观的商品描述，不要编造品牌或数字。",
        [
            (
                "美的 1.7升 不锈钢 电热水壶",
                "美的出品的1.7升不锈钢电热水壶，适合家庭和办公室快速烧水。",
            ),
            (
                "得力 无线 充电式 电钻 12V",
                "得力12V无线充电式电钻，适合家庭装修和日常维修。",
            ),
        ],
        "商品：{product}\n描述：",
    ),
}

#: what the model writes next once it has answered: the start of another example
STOP = ["\n", "Product:", "商品："]

_SPLIT = re.compile(r"[;；\n]+")
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.)、:]|\(\d+\))\s*")
_QUOTES = "\"'“”‘’「」`"


def product_text(product: Product) -> str:
    """The one-line product text a prompt shows: title, then brand and category if known."""
    parts = [product.title]
    if product.brand and product.brand.lower() not in product.title.lower():
        parts.append(f"({product.brand})")
    if product.category:
        parts.append(f"[{product.category}]")
    return " ".join(p for p in parts if p).replace("\n", " ")


def few_shot(task: Task, product: Product, n: int) -> str:
    """The few-shot prompt for ``task`` ("queries" or "description") in the product's language.

    ``n`` is not stated in the prompt: the examples show four queries each, which small
    models copy more reliably than a number.
    """
    table = _QUERY_EXAMPLES if task == "queries" else _DESCRIPTION_EXAMPLES
    instruction, examples, template = table[product.language]
    lines = [instruction, ""]
    for text, answer in examples:
        lines += [template.format(product=text) + " " + answer, ""]
    lines.append(template.format(product=product_text(product)))
    return "\n".join(lines)


def parse_queries(answer: str) -> list[str]:
    """Split a model's answer into queries: ``;``/``；``/newlines, bullets and quotes removed."""
    out = []
    for part in _SPLIT.split(answer):
        text = _BULLET.sub("", part).strip().strip(_QUOTES).strip()
        text = text.removeprefix("Queries:").removeprefix("搜索词：").strip()
        if text:
            out.append(text)
    return out
