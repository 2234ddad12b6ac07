"""Ranking metrics against hand-computed cases and brute-force references."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import scipy.sparse as sp

from shoplm.eval import metrics as M

LOG2_3 = np.log2(3.0)

# Three queries over six items. Gains: q0 = {1: 2, 4: 1, 5: 3}, q1 = {5: 1}, q2 = {} (none).
RANKED = np.array(
    [
        [3, 1, 4, -1],  # q0: gains 0, 2, 1, (padding)
        [2, 0, 5, 1],  # q1: gains 0, 0, 1, 0
        [0, 1, 2, 3],  # q2: nothing relevant exists
    ]
)
QRELS = sp.csr_matrix(
    (np.array([2.0, 1.0, 3.0, 1.0]), (np.array([0, 0, 0, 1]), np.array([1, 4, 5, 5]))),
    shape=(3, 6),
)


def assert_close(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(actual, np.array(expected, dtype=np.float64), equal_nan=True)


def test_gains_at_ranks_reads_the_judgement_of_each_position() -> None:
    assert_close(M.gains_at_ranks(RANKED, QRELS), [[0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


def test_gains_at_ranks_matches_a_dense_lookup_on_random_data() -> None:
    rng = np.random.default_rng(0)
    n, n_items, width = 40, 25, 12
    dense = rng.integers(0, 4, (n, n_items)) * (rng.random((n, n_items)) < 0.3)
    ranked = np.argsort(rng.random((n, n_items)), axis=1)[:, :width]
    ranked[rng.random((n, width)) < 0.2] = -1
    expected = np.where(ranked >= 0, dense[np.arange(n)[:, None], ranked], 0)
    assert_close(M.gains_at_ranks(ranked, sp.csr_matrix(dense)), expected)


def test_padding_never_matches_the_last_item_of_the_previous_query() -> None:
    # Query 0 judges the last item (id 2); query 1's padding must not pick that up.
    qrels = sp.csr_matrix(np.array([[0, 0, 5], [1, 0, 0]]))
    assert_close(M.gains_at_ranks(np.array([[0, 1], [-1, -1]]), qrels), [[0, 0], [0, 0]])


def test_duplicate_judgements_are_summed_without_changing_the_callers_matrix() -> None:
    # Entry (0, 1) stored twice with gains 1 and 2: one judgement of gain 3.
    qrels = sp.csr_matrix((np.array([1.0, 2.0]), np.array([1, 1]), np.array([0, 2])), shape=(1, 3))
    assert_close(M.gains_at_ranks(np.array([[1, 0]]), qrels), [[3, 0]])
    assert qrels.nnz == 2


@pytest.mark.parametrize(
    ("ranked", "message"),
    [
        (np.array([[1, 1, 0]] * 3), "repeats an item"),
        (np.array([[6, 0, 1]] * 3), "ranked ids"),
        (np.array([[-2, 0, 1]] * 3), "ranked ids"),
        (np.array([[0, 1, 2]] * 2), "queries"),
    ],
)
def test_invalid_lists_are_rejected(ranked: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        M.gains_at_ranks(ranked, QRELS)


def test_negative_gains_are_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        M.ndcg_at_k(np.array([[0]]), sp.csr_matrix(np.array([[-1.0]])), 1)


def test_recall() -> None:
    # @2: q0 finds item 1 of {1, 4, 5} -> 1/3; q1 finds none of {5} -> 0; q2 undefined.
    assert_close(M.recall_at_k(RANKED, QRELS, 2), [1 / 3, 0, np.nan])
    # @3: q0 finds items 1 and 4 -> 2/3; q1 finds 5 -> 1.
    assert_close(M.recall_at_k(RANKED, QRELS, 3), [2 / 3, 1, np.nan])
    # k beyond the list length: the same as the whole list; padding is not a hit.
    assert_close(M.recall_at_k(RANKED, QRELS, 10), [2 / 3, 1, np.nan])


def test_recall_denominator_is_not_capped_at_k() -> None:
    # q0 has 3 relevant items; a perfect top-1 (item 5) still only recalls 1/3.
    assert_close(M.recall_at_k(np.array([[5], [5], [0]]), QRELS, 1), [1 / 3, 1, np.nan])


def test_threshold_selects_relevant_grades() -> None:
    # gain > 1.5 leaves q0 = {1, 5} and q1 = {} (its item 5 has gain 1).
    # @3: q0 finds item 1 -> 1/2; q1 and q2 undefined.
    assert_close(M.recall_at_k(RANKED, QRELS, 3, threshold=1.5), [1 / 2, np.nan, np.nan])
    assert_close(M.hit_rate_at_k(RANKED, QRELS, 3, threshold=1.5), [1, 0, 0])


def test_hit_rate_and_precision() -> None:
    # @1: no list starts with a relevant item. @2: only q0 (item 1 at rank 2).
    assert_close(M.hit_rate_at_k(RANKED, QRELS, 1), [0, 0, 0])
    assert_close(M.hit_rate_at_k(RANKED, QRELS, 2), [1, 0, 0])
    # precision@2: q0 1/2, q1 0/2, q2 0/2 (defined: nothing relevant was shown).
    assert_close(M.precision_at_k(RANKED, QRELS, 2), [1 / 2, 0, 0])
    # precision@10 divides by 10 although the lists hold 4: q0 2/10, q1 1/10.
    assert_close(M.precision_at_k(RANKED, QRELS, 10), [2 / 10, 1 / 10, 0])


def test_mrr() -> None:
    # First relevant: q0 at rank 2 -> 1/2, q1 at rank 3 -> 1/3, q2 undefined.
    assert_close(M.mrr(RANKED, QRELS), [1 / 2, 1 / 3, np.nan])
    # Cut at 2: q1's hit at rank 3 no longer counts -> 0.
    assert_close(M.mrr(RANKED, QRELS, k=2), [1 / 2, 0, np.nan])


def test_average_precision() -> None:
    # Whole list: q0 hits at ranks 2 and 3: (1/2 + 2/3) / #relevant 3 = 7/18.
    #             q1 hit at rank 3: (1/3) / 1.
    assert_close(M.average_precision(RANKED, QRELS), [7 / 18, 1 / 3, np.nan])
    # k=2: q0 hit at rank 2: (1/2) / min(3, 2) = 1/4; q1 no hit: 0 / min(1, 2) = 0.
    assert_close(M.average_precision(RANKED, QRELS, k=2), [1 / 4, 0, np.nan])
    # A perfect top-2 for q0 (items 5, 1) is 1 at k=2 though a third relevant item exists.
    assert_close(
        M.average_precision(np.array([[5, 1], [5, 0], [0, 1]]), QRELS, k=2), [1, 1, np.nan]
    )


def test_ndcg_linear_gains() -> None:
    # @3: q0 DCG = 0/1 + 2/log2(3) + 1/log2(4); ideal from gains 3, 2, 1 = 3 + 2/log2(3) + 1/2.
    #     q1 DCG = 1/log2(4) = 1/2, ideal = 1.
    q0 = (2 / LOG2_3 + 1 / 2) / (3 + 2 / LOG2_3 + 1 / 2)
    assert_close(M.ndcg_at_k(RANKED, QRELS, 3), [q0, 1 / 2, np.nan])


def test_ndcg_ideal_comes_from_the_judgements_not_the_retrieved_items() -> None:
    # @2: q0 retrieved gains 0, 2 -> DCG 2/log2(3); its ideal uses gain 3 (item 5, never
    # retrieved) and 2: 3 + 2/log2(3).
    q0 = (2 / LOG2_3) / (3 + 2 / LOG2_3)
    assert_close(M.ndcg_at_k(RANKED, QRELS, 2), [q0, 0, np.nan])


def test_ndcg_exponential_gains() -> None:
    # 2**g - 1 turns gains 2, 1, 3 into 3, 1, 7.
    # @3: q0 DCG = 3/log2(3) + 1/2, ideal = 7 + 3/log2(3) + 1/2; q1 = (1/2) / 1.
    q0 = (3 / LOG2_3 + 1 / 2) / (7 + 3 / LOG2_3 + 1 / 2)
    assert_close(M.ndcg_at_k(RANKED, QRELS, 3, gain="exponential"), [q0, 1 / 2, np.nan])


@pytest.mark.parametrize("k", [1, 2, 3, 10])
@pytest.mark.parametrize("gain", ["linear", "exponential"])
def test_ndcg_of_the_ideal_ranking_is_one(k: int, gain: M.Gain) -> None:
    ideal = np.array([[5, 1, 4, -1], [5, 0, 1, 2], [0, 1, 2, 3]])
    assert_close(M.ndcg_at_k(ideal, QRELS, k, gain=gain), [1, 1, np.nan])


def test_unknown_gain_is_rejected() -> None:
    with pytest.raises(ValueError, match="gain"):
        M.ndcg_at_k(RANKED, QRELS, 3, gain="square")  # type: ignore[arg-type]


def test_targets_array_is_the_same_as_its_qrels() -> None:
    # targets 2, none, 0 -> one gain-1 judgement per query that has one.
    targets = np.array([2, -1, 0])
    qrels = M.qrels_from_targets(targets, 3)
    assert_close(qrels.toarray(), [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    ranked = np.array([[0, 2], [1, 0], [1, 2]])
    for metric in (M.recall_at_k, M.ndcg_at_k, M.precision_at_k):
        assert_close(metric(ranked, targets, 2), metric(ranked, qrels, 2))
    # q0 finds its target at rank 2, q1 has none, q2 misses it.
    assert_close(M.recall_at_k(ranked, targets, 2), [1, np.nan, 0])


def test_mean_metrics_averages_over_queries_with_a_relevant_item() -> None:
    means = M.mean_metrics(RANKED, QRELS, ks=(2, 3))
    # q2 is left out of every mean, hit rate and precision included: @2 hit rate (1 + 0) / 2.
    assert means["hit_rate@2"] == pytest.approx(1 / 2)
    assert means["precision@2"] == pytest.approx(1 / 4)
    assert means["recall@3"] == pytest.approx((2 / 3 + 1) / 2)
    assert means["map@3"] == pytest.approx((7 / 18 + 1 / 3) / 2)
    assert set(means) == {
        f"{name}@{k}"
        for name in ("ndcg", "recall", "precision", "hit_rate", "mrr", "map")
        for k in (2, 3)
    }


def test_target_ranks_ties() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [-np.inf, 0.2, 0.3, 0.2]])
    targets = np.array([0, 1])
    # q0: one item (0.9) beats 0.5; item 2 ties with it. q1: 0.3 beats 0.2, item 3 ties;
    # the masked -inf item never counts.
    np.testing.assert_array_equal(M.target_ranks(scores, targets), [1, 1])
    np.testing.assert_array_equal(M.target_ranks(scores, targets, ties="pessimistic"), [2, 2])


def test_target_ranks_rejects_a_nan_target() -> None:
    with pytest.raises(ValueError, match="NaN"):
        M.target_ranks(np.array([[np.nan, 1.0]]), np.array([0]))


def test_metrics_from_ranks() -> None:
    ranks = np.array([0, 1, 5])
    # @5: ranks 0 and 1 are in, 5 is out.
    assert_close(M.hit_rate_from_ranks(ranks, 5), [1, 1, 0])
    assert_close(M.ndcg_from_ranks(ranks, 5), [1, 1 / LOG2_3, 0])
    assert_close(M.mrr_from_ranks(ranks), [1, 1 / 2, 1 / 6])
    assert_close(M.mrr_from_ranks(ranks, k=5), [1, 1 / 2, 0])


def test_list_metrics_agree_with_rank_metrics_for_single_targets() -> None:
    rng = np.random.default_rng(1)
    n, n_items, k = 200, 60, 10
    scores = rng.random((n, n_items))
    targets = rng.integers(0, n_items, n)
    ranked = np.argsort(-scores, axis=1)[:, :k]
    ranks = M.target_ranks(scores, targets)
    assert 0 < np.mean(ranks < k) < 1  # both hits and misses are exercised
    assert_close(M.ndcg_at_k(ranked, targets, k), M.ndcg_from_ranks(ranks, k))
    assert_close(M.hit_rate_at_k(ranked, targets, k), M.hit_rate_from_ranks(ranks, k))
    assert_close(M.recall_at_k(ranked, targets, k), M.hit_rate_from_ranks(ranks, k))
    assert_close(M.mrr(ranked, targets, k), M.mrr_from_ranks(ranks, k))


def test_auc_hand_case() -> None:
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one, 0.8 both -> 3/4.
    assert M.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # A tied positive/negative pair counts one half.
    assert M.auc(np.array([1.0, 1.0]), np.array([1, 0])) == pytest.approx(0.5)


def test_auc_per_query_matches_a_pairwise_count() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, (30, 17)).astype(float)  # few values: many ties
    labels = rng.random((30, 17)) < 0.4
    labels[0] = True  # one class only: undefined
    expected = []
    for row, positive in zip(scores, labels, strict=True):
        diff = row[positive][:, None] - row[~positive][None, :]
        pairs = diff.size
        expected.append(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / pairs if pairs else np.nan)
    assert_close(M.auc_per_query(scores, labels), expected)


def test_catalog_coverage() -> None:
    # Items {0, 1, 2} of 10 appear; padding does not count as an item.
    assert M.catalog_coverage(np.array([[0, 1, -1], [1, 2, -1]]), 10) == pytest.approx(0.3)


def test_novelty() -> None:
    # popularity 4, 2, 2, 0 (sum 8): item 0 p = 1/2 -> 1 bit; item 1 p = 1/4 -> 2 bits;
    # item 3 is never seen and scores as the rarest seen item (2 of 8) -> 2 bits.
    popularity = np.array([4, 2, 2, 0])
    ranked = np.array([[0, 1, -1], [3, -1, -1], [-1, -1, -1]])
    assert_close(M.novelty(ranked, popularity), [1.5, 2, np.nan])


def test_intra_list_diversity_with_categories() -> None:
    categories = np.array([0, 0, 1, -1, 1, -1])
    ranked = np.array(
        [[0, 1, 2, -1], [2, 4, 0, 1], [0, 3, -1, -1], [3, 5, -1, -1], [0, -1, -1, -1]]
    )
    # [0, 1, 2]: cats 0, 0, 1 -> 1 of 3 pairs shared -> 2/3.
    # [2, 4, 0, 1]: cats 1, 1, 0, 0 -> 2 of 6 pairs shared -> 2/3.
    # [0, 3] and [3, 5]: unknown categories match nothing -> 1. A single item: undefined.
    assert_close(
        M.intra_list_diversity(ranked, item_categories=categories), [2 / 3, 2 / 3, 1, 1, np.nan]
    )


def test_intra_list_diversity_with_vectors() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    # [0, 1, 2]: cosines 0, 1/sqrt(2), 1/sqrt(2) -> 1 - sqrt(2)/3. A zero vector is at
    # cosine 0 from everything -> 1.
    ranked = np.array([[0, 1, 2], [0, 3, -1]])
    assert_close(M.intra_list_diversity(ranked, item_vectors=vectors), [1 - np.sqrt(2) / 3, 1])


def test_intra_list_diversity_matches_pairwise_cosines() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(30, 8))
    ranked = np.argsort(rng.random((20, 30)), axis=1)[:, :6]
    ranked[:5, 4:] = -1
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [
        np.mean([1 - unit[a] @ unit[b] for a, b in combinations(row[row >= 0], 2)])
        for row in ranked
    ]
    assert_close(M.intra_list_diversity(ranked, item_vectors=vectors), expected)


def test_intra_list_diversity_needs_exactly_one_similarity() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        M.intra_list_diversity(RANKED)
