"""The canonical item and event schemas that every layer of shoplm reads.

A shop's own files are mapped onto these names by :mod:`shoplm.config`; after loading, the
rest of the code only ever sees these columns.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class EventType(StrEnum):
    """What a user did. ``return`` is a purchase taken back (e.g. a cancelled order line)."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    SEARCH = "search"
    RATING = "rating"
    RETURN = "return"


#: Stable small-int codes for event types, used in the Parquet event table.
EVENT_CODES: Final[dict[str, int]] = {e.value: i for i, e in enumerate(EventType)}

#: Item fields: name -> meaning. Only ``item_id`` is required.
ITEM_FIELDS: Final[dict[str, str]] = {
    "item_id": "the shop's own product id (any string, unique in the catalogue)",
    "title": "product name",
    "description": "longer product text; HTML is stripped",
    "category": "category path, levels separated by ' > ' (e.g. 'Tools > Drills')",
    "brand": "brand or maker",
    "price": "a non-negative number in the shop's currency",
    "image": "image path or URL",
    "created_at": "when the product was added (ISO 8601 or epoch seconds)",
    "attributes": "JSON object of further fields; unmapped input columns are gathered here",
    "available": (
        "false, no or 0 keeps the product out of search results and recommendations (out of "
        "stock, withdrawn) while its history still teaches the models; empty means available"
    ),
}

#: Event fields: name -> meaning. Only ``user_id`` and ``item_id`` are required.
EVENT_FIELDS: Final[dict[str, str]] = {
    "user_id": "the shop's own user id; pseudonymised before anything is written",
    "item_id": "the product the event is about (may be empty for a search)",
    "event": "one of " + ", ".join(e.value for e in EventType) + "; empty means purchase",
    "timestamp": "ISO 8601 or epoch seconds/milliseconds; empty keeps file order",
    "query": "the search text, for search events; e-mails and phone numbers are masked",
    "value": "quantity, rating or amount, depending on the event",
    "session_id": "the visit or basket the event belongs to",
}

ITEM_TEXT_FIELDS: Final[tuple[str, ...]] = ("title", "description", "category", "brand")
