# ruff: noqa: RUF001, SIM905  (full-width Chinese punctuation; word lists as strings)
"""Deterministic shopper-style queries and descriptions from catalogue fields, no model.

Shoppers type a few words, not titles: the product type ("fan timer"), the type with a
brand, a size or a colour ("lutron fan timer", "600 watt fan timer", "black wall oven"),
words in another order, a synonym ("tap" for "faucet") and typos ("faucett"). The template
backend writes such queries from the title, brand, category and attributes, so the
augmentation pipeline runs everywhere and covers every product in seconds; the LLM backends
add phrasings no template knows.

Everything is seeded per product (``seed`` and the item id), so a product's queries do not
change when the catalogue around it changes, and two runs give identical output.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence

import jieba

from shoplm.augment.base import GenerationBackend, Language, Product, Task

#: bump when the templates change, so cached or stored outputs are recognisably older
TEMPLATE_VERSION = "1"

#: Words that join a title's product part to its details: "Oven in Black", "Kit with Case".
_DETAIL_SPLIT = re.compile(
    r"\s(?:with|for|in|featuring|includes?)\s(?!\.)|\s[-–|(]\s?|,\s", re.IGNORECASE
)
_HAS_DIGIT = re.compile(r"\d")
_UNIT = re.compile(
    r"^(?:in|ft|gal|qt|oz|lb|lbs|cu|yd|mm|cm|m|ml|l|kg|g|w|v|watt|volt|amp|sq|pk|pack|pc|x|"
    r"dia|btu|mah|gb|tb|hz)\.?$",
    re.IGNORECASE,
)
_CLEAN_WORD = re.compile(r"^[^\w#/]+|[^\w/%+]+$")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

COLOURS = frozenset(
    "white black brown chrome stainless steel bronze nickel brass wood oak walnut "
    "cherry maple plastic pvc copper aluminum aluminium glass gray grey red blue "
    "green yellow orange pink purple silver gold beige ivory natural clear satin "
    "matte gloss".split()
)

#: Two-way synonyms shoppers use for common catalogue words (English).
SYNONYMS_EN: dict[str, tuple[str, ...]] = {
    "faucet": ("tap",),
    "cordless": ("battery",),
    "sofa": ("couch",),
    "refrigerator": ("fridge",),
    "bulb": ("light bulb", "lamp"),
    "lamp": ("light",),
    "washer": ("washing machine",),
    "dryer": ("clothes dryer",),
    "rug": ("carpet",),
    "mower": ("lawnmower", "lawn mower"),
    "trimmer": ("weed eater", "string trimmer"),
    "grill": ("bbq", "barbecue"),
    "television": ("tv",),
    "tv": ("television",),
    "laptop": ("notebook",),
    "sneakers": ("trainers",),
    "pants": ("trousers",),
    "headphones": ("earphones",),
    "fixture": ("light",),
    "knob": ("handle",),
    "cabinet": ("cupboard",),
    "vanity": ("bathroom cabinet",),
    "toilet": ("wc",),
    "stainless": ("stainless steel",),
    "aluminum": ("aluminium",),
    "gray": ("grey",),
    "drill": ("drill driver",),
    "saw": ("power saw",),
    "outdoor": ("exterior",),
    "exterior": ("outdoor",),
    "interior": ("indoor",),
    "indoor": ("interior",),
    "shelf": ("shelving",),
    "hose": ("garden hose",),
    "tile": ("tiles",),
    "paint": ("paints",),
    "cushion": ("pillow",),
    "curtain": ("drape",),
    "blind": ("shade",),
    "heater": ("space heater",),
}

#: Chinese synonyms (both directions are listed where both are common).
SYNONYMS_ZH: dict[str, tuple[str, ...]] = {
    "手机": ("移动电话",),
    "电脑": ("计算机",),
    "笔记本": ("笔记本电脑",),
    "冰箱": ("电冰箱",),
    "电视": ("电视机",),
    "灯": ("灯具",),
    "吸顶灯": ("顶灯",),
    "水壶": ("烧水壶",),
    "电钻": ("手电钻",),
    "沙发": ("布艺沙发",),
    "耳机": ("耳麦",),
    "运动鞋": ("跑鞋",),
    "裤子": ("长裤",),
    "洗衣机": ("滚筒洗衣机",),
    "空调": ("冷气机",),
}

_KEYBOARD = [
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
]
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_KEYBOARD):
    for _c, _ch in enumerate(_row):
        near = [_row[i] for i in (_c - 1, _c + 1) if 0 <= i < len(_row)]
        near += [
            _KEYBOARD[rr][cc]
            for rr in (_r - 1, _r + 1)
            if 0 <= rr < len(_KEYBOARD)
            for cc in (_c, _c + 1)
            if cc < len(_KEYBOARD[rr])
        ]
        _NEIGHBOURS[_ch] = "".join(near)


def typo(word: str, rng: random.Random) -> str:
    """A plausible typing slip: swapped, dropped, doubled or neighbouring-key letter.

    Only alphabetic words of four or more letters get one: a slip in "in" or a model number
    makes a different query, not a misspelt one.
    """
    if len(word) < 4 or not word.isalpha() or not word.isascii():
        return word
    i = rng.randrange(1, len(word) - 1)  # first letter is rarely mistyped
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    near = _NEIGHBOURS.get(word[i].lower(), "")
    return word[:i] + rng.choice(near) + word[i + 1 :] if near else word


class TemplateBackend(GenerationBackend):
    """Shopper-style queries from field combinations, synonyms and seeded typos.

    ``typo_rate`` is the share of queries that get one misspelt word (Home Depot's real
    queries have many); ``seed`` with the item id seeds each product's choices.
    """

    name = "template"
    cacheable = False  # regenerating is faster than a cache read

    def __init__(self, seed: int = 0, typo_rate: float = 0.15, synonym_rate: float = 0.3) -> None:
        self.seed = seed
        self.typo_rate = typo_rate
        self.synonym_rate = synonym_rate

    @property
    def model(self) -> str:
        return f"templates-v{TEMPLATE_VERSION}"

    def generation_params(self) -> dict[str, object]:
        return {"seed": self.seed, "typo_rate": self.typo_rate, "synonym_rate": self.synonym_rate}

    def prompt(self, task: Task, product: Product, n: int) -> str:
        """A JSON record of the product: templates read fields, not prose."""
        return json.dumps(
            {
                "task": task,
                "n": n,
                "item_id": product.item_id,
                "title": product.title,
                "brand": product.brand,
                "category": product.category,
                "attributes": [list(pair) for pair in product.attributes],
                "language": product.language,
            },
            ensure_ascii=False,
        )

    def generate(self, prompts: Sequence[str]) -> list[str | None]:
        started = time.perf_counter()
        out: list[str | None] = []
        for i, raw in enumerate(prompts):
            try:
                record = json.loads(raw)
                product = Product(
                    item_id=str(record["item_id"]),
                    title=str(record["title"]),
                    brand=str(record.get("brand", "")),
                    category=str(record.get("category", "")),
                    attributes=tuple((str(k), str(v)) for k, v in record.get("attributes", [])),
                    language=record.get("language", "en"),
                )
                task, n = record["task"], int(record["n"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"template prompt {i} is not a record made by TemplateBackend.prompt: {exc}"
                ) from exc
            if task == "queries":
                text = "\n".join(self.queries(product, n))
            else:
                text = self.description(product)
            out.append(text or None)
            self.stats.completion_tokens += len(text.split())
        self.stats.prompts += len(prompts)
        self.stats.answered += sum(o is not None for o in out)
        self.stats.seconds += time.perf_counter() - started
        return out

    # ------------------------------------------------------------------ queries
    def queries(self, product: Product, n: int) -> list[str]:
        """Up to ``n`` distinct queries for ``product`` (fewer when its text is too thin)."""
        rng = random.Random(f"{self.seed}\x1f{product.item_id}")
        parts = (_chinese_parts if product.language == "zh" else _english_parts)(product)
        candidates = _combinations(parts, product.language, rng)
        out: list[str] = []
        seen = {_key(product.title)}
        for query in candidates:
            query = self._vary(query, product.language, rng)
            if query and _key(query) not in seen:
                seen.add(_key(query))
                out.append(query)
            if len(out) >= n:
                break
        return out

    def _vary(self, query: str, language: Language, rng: random.Random) -> str:
        synonyms = SYNONYMS_ZH if language == "zh" else SYNONYMS_EN
        if rng.random() < self.synonym_rate:
            hits = [w for w in synonyms if w in query] if language == "zh" else None
            words = query.split()
            if language == "zh" and hits:
                word = rng.choice(hits)
                query = query.replace(word, rng.choice(synonyms[word]), 1)
            elif language != "zh":
                idx = [i for i, w in enumerate(words) if w in synonyms]
                if idx:
                    i = rng.choice(idx)
                    words[i] = rng.choice(synonyms[words[i]])
                    query = _join(" ".join(words).split(), language)
        if language != "zh" and rng.random() < self.typo_rate:
            words = query.split()
            idx = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
            if idx:
                i = rng.choice(idx)
                words[i] = typo(words[i], rng)
                query = " ".join(words)
        return query

    # ------------------------------------------------------------------ descriptions
    def description(self, product: Product) -> str:
        """A plain sentence restating what the fields say (type, brand, sizes, colours).

        Templates cannot add facts; what they add is the product type and specs spelt out
        as words, which thin titles bury among model numbers.
        """
        parts = (_chinese_parts if product.language == "zh" else _english_parts)(product)
        kind = " ".join(parts["type"]) or product.title
        if product.language == "zh":
            text = f"{parts['brand']}{kind}" if parts["brand"] else kind
            extras = "，".join(parts["specs"] + parts["colours"])
            cat = f"，属于{product.category}" if product.category else ""
            return f"{text}{cat}{'，' + extras if extras else ''}。"
        text = f"A {kind}" + (f" by {parts['brand']}" if parts["brand"] else "")
        if product.category:
            text += f", in {product.category}"
        details = parts["specs"] + parts["colours"] + [f"{k} {v}" for k, v in product.attributes]
        if details:
            text += ": " + ", ".join(details)
        return text + "."


# ---------------------------------------------------------------------- field analysis
def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _english_parts(product: Product) -> dict:
    """Brand, product-type words, modifiers, specs and colours of an English title."""
    main = _DETAIL_SPLIT.split(product.title, maxsplit=1)[0]
    words = [_CLEAN_WORD.sub("", w).lower() for w in main.split()]
    words = [w for w in words if w]
    all_words = [_CLEAN_WORD.sub("", w).lower() for w in product.title.split()]
    specs: list[str] = []
    plain: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if _HAS_DIGIT.search(word):
            spec = word.replace("-", " ").replace(",", "")  # "25,000-BTU" -> "25000 btu"
            if i + 1 < len(words) and _UNIT.match(words[i + 1]):
                spec += " " + words[i + 1].rstrip(".")
                i += 1
            specs.append(spec)
        elif not _UNIT.match(word) and word not in _STOP_EN:
            plain.append(word)
        i += 1
    brand = product.brand.lower().strip()
    if not brand and plain and words and words[0] == plain[0] and len(plain) > 2:
        brand = plain[0]  # titles usually open with the maker: "Lutron Maestro ..."
    body = [w for w in plain if w not in brand.split()]
    nouns = [w for w in body if w not in COLOURS] or body
    # "Drill Driver Kit": a packaging word names no product type, so take one word more
    kind = nouns[-3:] if nouns and nouns[-1] in _PACKAGING else nouns[-2:]
    modifiers = nouns[:-2]
    colours = [w for w in all_words if w in COLOURS]
    category = product.category.split(">")[-1].strip().lower() if product.category else ""
    attrs = [v.lower() for _, v in product.attributes if v and len(v) <= 30]
    return {
        "brand": brand,
        "type": kind,
        "modifiers": modifiers,
        "specs": specs,
        "colours": list(dict.fromkeys(colours)),
        "category": category,
        "attributes": attrs,
        "words": body,
    }


def _chinese_parts(product: Product) -> dict:
    """The same parts for a Chinese title, segmented with jieba (Latin words kept whole)."""
    tokens = [t.strip() for t in jieba.lcut(product.title) if t.strip()]
    tokens = [_CLEAN_WORD.sub("", t).lower() for t in tokens]
    tokens = _merge_units([t for t in tokens if t])
    han = [t for t in tokens if _HAN.search(t) and not _HAS_DIGIT.search(t)]
    specs = [t for t in tokens if _HAS_DIGIT.search(t)]
    brand = product.brand.strip().lower()
    if not brand and " " in product.title.strip() and tokens:
        brand = product.title.split()[0].lower()  # "小米 米家 LED 吸顶灯": the maker first
    body = [t for t in han if t not in brand]
    colours = [t for t in body if t.endswith("色")]
    long_words = [t for t in body if len(t) >= 2 and t not in colours]
    # the product noun is usually the longest word ("电热水壶", "吸顶灯"); ties go to the last
    ranked = sorted(enumerate(long_words), key=lambda p: (len(p[1]), p[0]))
    kind = [ranked[-1][1]] if ranked else body[-1:]
    category = product.category.split(">")[-1].strip() if product.category else ""
    return {
        "brand": brand,
        "type": kind,
        "modifiers": [t for t in long_words if t not in kind and t not in colours],
        "specs": specs,
        "colours": colours,
        "category": category,
        "attributes": [v for _, v in product.attributes if v and len(v) <= 15],
        "words": [t for t in tokens if t not in brand],
    }


_ZH_UNITS = frozenset(
    "升 毫升 寸 英寸 米 厘米 毫米 瓦 伏 克 千克 斤 件 只 个 包 片 匹 码 号 g kg ml l w v".split()
)
_PACKAGING = frozenset("kit set pack combo bundle sample assortment case pair".split())
_STOP_EN = frozenset(["a", "an", "and", "the", "of", "to", "on", "at", "by", "or"])


def _merge_units(tokens: list[str]) -> list[str]:
    """Glue a number to its unit ("1.7", "升" -> "1.7升"): jieba splits them apart."""
    out: list[str] = []
    for token in tokens:
        if out and token in _ZH_UNITS and _HAS_DIGIT.search(out[-1]):
            out[-1] += token
        else:
            out.append(token)
    return out


def _join(words: Sequence[str], language: Language) -> str:
    """Words as a query: spaces in English; in Chinese only around Latin/digit words.

    A word repeated by two parts ("brass" as colour and type) is written once.
    """
    words = list(dict.fromkeys(w for w in words if w))
    if language != "zh":
        return " ".join(words)
    out = ""
    for word in words:
        if out and not (_HAN.search(word) and _HAN.search(out[-1])):
            out += " "
        out += word
    return out


def _combinations(parts: dict, language: Language, rng: random.Random) -> list[str]:
    """Candidate queries in order of preference, each strategy's pick seeded by ``rng``."""
    kind = list(parts["type"])
    head = kind[-1:]
    brand = parts["brand"].split()
    pick = rng.choice
    out = [
        _join(kind, language),
        _join(brand + (head if rng.random() < 0.5 else kind), language) if brand else "",
        _join([pick(parts["specs"]), *kind], language) if parts["specs"] else "",
        _join([pick(parts["colours"]), *kind], language) if parts["colours"] else "",
        _join([pick(parts["modifiers"]), *head], language) if parts["modifiers"] else "",
        _join([parts["category"], *brand], language) if parts["category"] and brand else "",
        _join([pick(parts["attributes"]), *head], language) if parts["attributes"] else "",
        _join(kind + brand, language) if brand else "",
        _join(head, language),  # the bare noun: all a two-word title leaves
    ]
    words = parts["words"]
    for _ in range(3):  # word drops: a random 2-4 words of the title, order kept
        if len(words) >= 3:
            size = rng.randint(2, min(4, len(words) - 1))
            keep = sorted(rng.sample(range(len(words)), size))
            out.append(_join([words[i] for i in keep], language))
    return [q for q in out if q.strip()]
