"""Privacy at the edge: keyed pseudonyms for user ids, masking of contact data in text.

User ids are replaced by an HMAC-SHA256 of the id under a secret key before anything is
written. The key comes from an environment variable or a key file outside every engine
directory, so whoever holds an engine directory alone cannot reverse or recompute the
pseudonyms. The engine's manifest keeps only a fingerprint of the key, so that querying an
engine with the wrong key fails loudly instead of silently treating everyone as new.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets

import numpy as np
import pandas as pd

from shoplm.config import PrivacyConfig

_PSEUDONYM_HEX_CHARS = 32  # 128 bits: collisions are out of reach at any shop's user count
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Digits grouped by spaces, dots, dashes or brackets, with an optional leading +; a match
# is a phone number only with 7 to 15 digits (E.164's range), so sizes ("10 12 14"),
# prices and model numbers stay. A 13-digit barcode is masked too: privacy comes first.
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d\s().-]{5,}\d(?![\w.])")
_PHONE_DIGITS = range(7, 16)


def _mask_phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return "[phone]" if digits in _PHONE_DIGITS else match.group(0)


class PrivacyError(RuntimeError):
    """The pseudonymisation key is missing, unreadable or not the engine's key."""


class Pseudonymiser:
    """Maps raw user ids to stable keyed pseudonyms (hex strings)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise PrivacyError("the pseudonymisation key must be at least 16 bytes long")
        self._key = key
        # the keyed state is built once; copying it per id skips re-deriving the key pads
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def from_config(cls, config: PrivacyConfig, create: bool = False) -> Pseudonymiser:
        """The key from ``config.key_env``, else from ``config.key_file``.

        With ``create`` a missing key file is made with a fresh random key (mode 0600): a
        first build on a new machine then works without set-up, and later runs reuse it.
        """
        from_env = os.environ.get(config.key_env)
        if from_env:
            return cls(from_env.encode("utf-8"))
        key_file = config.key_file.expanduser()
        if not key_file.exists():
            if not create:
                raise PrivacyError(
                    f"no pseudonymisation key: set {config.key_env} or create {key_file}"
                )
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return cls(key_file.read_text(encoding="utf-8").strip().encode("utf-8"))

    @property
    def fingerprint(self) -> str:
        """A public check value of the key (reveals nothing about it)."""
        return hmac.new(self._key, b"shoplm key fingerprint", hashlib.sha256).hexdigest()[:16]

    def pseudonymise_one(self, user_id: str) -> str:
        digest = self._keyed.copy()
        digest.update(user_id.encode("utf-8"))
        return digest.hexdigest()[:_PSEUDONYM_HEX_CHARS]

    def pseudonymise(self, user_ids: pd.Series | np.ndarray) -> np.ndarray:
        """Pseudonyms for a batch; each distinct id is hashed once."""
        codes, uniques = pd.factorize(np.asarray(user_ids, dtype=object).astype(str))
        hashed = np.array([self.pseudonymise_one(u) for u in uniques], dtype=object)
        return hashed[codes]


def mask_contact_data(text: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Replace e-mail addresses with ``[email]`` and phone numbers with ``[phone]``.

    Returns the masked text and a mask of the rows that were changed.
    """
    codes, uniques = pd.factorize(text.fillna("").astype(str))
    distinct = pd.Series(uniques, dtype=object)
    masked_uniques = distinct.str.replace(_EMAIL, "[email]", regex=True).str.replace(
        _PHONE, _mask_phone, regex=True
    )
    masked = pd.Series(masked_uniques.to_numpy(dtype=object)[codes], index=text.index, dtype=object)
    return masked, (masked_uniques != distinct).to_numpy()[codes]
