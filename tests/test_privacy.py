"""Pseudonyms are keyed and stable; contact data in free text is masked, products are not."""

from __future__ import annotations

import stat

import numpy as np
import pandas as pd
import pytest

from shoplm.config import PrivacyConfig
from shoplm.data.privacy import PrivacyError, Pseudonymiser, mask_contact_data


def test_pseudonyms_are_stable_keyed_and_batched():
    one = Pseudonymiser(b"k" * 32)
    other = Pseudonymiser(b"j" * 32)
    batch = one.pseudonymise(np.array(["alice", "bob", "alice"], dtype=object))
    assert batch[0] == batch[2] != batch[1]
    assert batch[0] == one.pseudonymise_one("alice")
    assert other.pseudonymise_one("alice") != batch[0]
    assert len(batch[0]) == 32 and "alice" not in batch[0]
    assert one.fingerprint != other.fingerprint


def test_key_from_environment_or_a_private_key_file(tmp_path, monkeypatch):
    config = PrivacyConfig(key_env="TEST_SHOPLM_KEY", key_file=tmp_path / "keys" / "k")
    monkeypatch.delenv("TEST_SHOPLM_KEY", raising=False)
    with pytest.raises(PrivacyError, match="set TEST_SHOPLM_KEY or create"):
        Pseudonymiser.from_config(config)
    created = Pseudonymiser.from_config(config, create=True)
    assert stat.S_IMODE(config.key_file.stat().st_mode) == 0o600
    assert Pseudonymiser.from_config(config).fingerprint == created.fingerprint
    monkeypatch.setenv("TEST_SHOPLM_KEY", "from-the-environment-123")
    assert Pseudonymiser.from_config(config).fingerprint != created.fingerprint
    with pytest.raises(PrivacyError, match="at least 16 bytes"):
        Pseudonymiser(b"short")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("call me on +44 20 7946 0958 please", "call me on [phone] please"),
        ("(555) 123-4567", "[phone]"),
        ("jo.bloggs+shop@mail.example.co.uk drill", "[email] drill"),
        ("cordless drill 20v 4.0ah", "cordless drill 20v 4.0ah"),
        ("shoe sizes 10 12 14", "shoe sizes 10 12 14"),
        ("under $1,299.99", "under $1,299.99"),
        ("7-1/4 inch blade 2024", "7-1/4 inch blade 2024"),
        ("浴室 防水 灯", "浴室 防水 灯"),
    ],
)
def test_contact_data_is_masked_and_product_words_are_not(query, expected):
    masked, changed = mask_contact_data(pd.Series([query]))
    assert masked[0] == expected
    assert changed[0] == (query != expected)
