"""Masks: exact counts per group, deterministic ties, N:M validity, pattern parsing."""

from __future__ import annotations

import pytest
import torch

from automl_prune.errors import UserError
from automl_prune.pruning.masks import (
    check_nm,
    nm_mask,
    parse_pattern,
    realised_sparsity,
    unstructured_mask,
)
from reference import per_row_counts


def stable_lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """The references' per-row selection: ``torch.sort(score, dim=-1, stable=True)[1][:, :k]``."""
    idx = torch.sort(score, dim=-1, stable=True)[1][:, :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)


def scores(out, inp, seed=0, quantized=False):
    s = torch.rand(out, inp, generator=torch.Generator().manual_seed(seed))
    return (s * 4).floor() if quantized else s  # quantized: many ties


# ----- unstructured --------------------------------------------------------------------------------
@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 1.0])
def test_row_counts_and_reference_equality(sparsity, quantized):
    s = scores(17, 33, quantized=quantized)
    mask = unstructured_mask(s, sparsity, "row")
    k = int(33 * sparsity)
    assert (per_row_counts(mask) == k).all()
    assert torch.equal(mask, stable_lowest(s, k))


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_matrix_count_and_reference_equality(sparsity, quantized):
    s = scores(13, 21, seed=1, quantized=quantized)
    mask = unstructured_mask(s, sparsity, "matrix")
    k = int(13 * 21 * sparsity)
    assert int(mask.sum()) == k
    assert torch.equal(mask, stable_lowest(s.reshape(1, -1), k).reshape(13, 21))


@pytest.mark.parametrize("quantized", [False, True])
def test_column_block_counts(quantized):
    s = scores(7, 10, seed=2, quantized=quantized)
    mask = unstructured_mask(s, 0.5, "column_block", block=4)  # blocks of width 4, 4, 2
    for c0, width in [(0, 4), (4, 4), (8, 2)]:
        blk = s[:, c0 : c0 + width]
        assert int(mask[:, c0 : c0 + width].sum()) == int(7 * width * 0.5)
        expected = stable_lowest(blk.reshape(1, -1), int(blk.numel() * 0.5)).reshape(blk.shape)
        assert torch.equal(mask[:, c0 : c0 + width], expected)


def test_column_block_128_default():
    s = scores(8, 300, seed=3)
    mask = unstructured_mask(s, 0.6, "column_block")
    assert [int(mask[:, c : c + 128].sum()) for c in (0, 128, 256)] == [int(8 * 128 * 0.6)] * 2 + [int(8 * 44 * 0.6)]


def test_ties_go_to_lower_index():
    s = torch.ones(3, 8)
    row = unstructured_mask(s, 0.5, "row")
    assert row[:, :4].all() and not row[:, 4:].any()
    mat = unstructured_mask(s, 0.5, "matrix")
    assert mat.flatten()[:12].all() and not mat.flatten()[12:].any()
    # a tie straddling the threshold: [0, 1, 1, 1, 2] with k = 2 keeps index order among the 1s
    s = torch.tensor([[1.0, 0.0, 1.0, 2.0, 1.0]])
    assert unstructured_mask(s, 0.4, "row").tolist() == [[True, True, False, False, False]]


def test_nan_scores_are_pruned_last():
    s = torch.tensor([[float("nan"), 0.3, 0.1, 0.2]])
    assert unstructured_mask(s, 0.75, "row").tolist() == [[False, True, True, True]]


def test_bad_arguments():
    s = scores(4, 8)
    with pytest.raises(ValueError, match="sparsity"):
        unstructured_mask(s, 1.5)
    with pytest.raises(ValueError, match="group"):
        unstructured_mask(s, 0.5, "column")
    with pytest.raises(ValueError, match="2-D"):
        unstructured_mask(s.flatten(), 0.5)


def test_large_matrix_matches_reference():
    s = scores(96, 1536, seed=4)
    assert torch.equal(unstructured_mask(s, 0.5, "row"), stable_lowest(s, 768))


# ----- N:M ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4), (8, 32)])
@pytest.mark.parametrize("quantized", [False, True])
def test_nm_valid_and_matches_sort(n, m, quantized):
    s = scores(9, 64, seed=5, quantized=quantized)
    mask = nm_mask(s, n, m)
    assert (mask.reshape(9, -1, m).sum(-1) == m - n).all()
    assert check_nm(mask, n, m)
    w = torch.randn(9, 64).masked_fill(mask, 0.0)
    assert check_nm(w, n, m)
    assert realised_sparsity(mask) == pytest.approx((m - n) / m)
    groups = s.reshape(9, -1, m)
    idx = torch.sort(groups, dim=-1, stable=True)[1][..., : m - n]
    assert torch.equal(mask, torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(9, 64))


def test_nm_ties_lower_index_pruned():
    mask = nm_mask(torch.ones(2, 8), 2, 4)
    assert mask.tolist() == [[True, True, False, False] * 2] * 2
    mask = nm_mask(torch.tensor([[5.0, 1.0, 1.0, 1.0]]), 2, 4)
    assert mask.tolist() == [[False, True, True, False]]


def test_nm_errors():
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(scores(4, 10), 2, 4)
    for n, m in [(0, 4), (4, 4), (5, 4), (-1, 2)]:
        with pytest.raises(ValueError):
            nm_mask(scores(4, 8), n, m)


def test_check_nm_rejects():
    w = torch.ones(2, 8)
    assert not check_nm(w, 2, 4)
    assert not check_nm(torch.ones(2, 6), 2, 4)  # in % m != 0
    w[:, ::2] = 0
    assert check_nm(w, 2, 4) and not check_nm(w, 1, 4)


# ----- helpers ----------------------------------------------------------------------------------
def test_realised_sparsity_and_counts():
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 4.0, 5.0]])
    assert realised_sparsity(w) == pytest.approx(3 / 8)
    assert per_row_counts(w).tolist() == [2, 1]
    mask = torch.tensor([[True, False], [True, True]])
    assert realised_sparsity(mask) == pytest.approx(0.75)
    assert per_row_counts(mask).tolist() == [1, 2]


def test_parse_pattern():
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern(" 4:8 ") == (4, 8)
    assert parse_pattern("1:4") == (1, 4)
    for bad in ["2-4", "4:2", "0:4", "4:4", "a:b", "2:4:8", "", ":4", "-1:4", "2.0:4", 24, None]:
        with pytest.raises(UserError):
            parse_pattern(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("sparsity", [0.0001, 0.3, 0.5, 0.9999])
def test_a_whole_matrix_past_the_bracket_size_matches_the_stable_sort(sparsity, quantized):
    """Groups of at least BRACKET_MIN weights take the bracketed selection (masks._kth_smallest_flat)."""
    from automl_prune.pruning.masks import BRACKET_MIN

    s = scores(300, 300, seed=7, quantized=quantized)
    assert s.numel() >= BRACKET_MIN
    k = int(s.numel() * sparsity)
    assert torch.equal(unstructured_mask(s, sparsity, "matrix").reshape(1, -1), stable_lowest(s.reshape(1, -1), k))


def test_the_bracketed_selection_is_kthvalue_on_skewed_and_tied_values():
    from automl_prune.pruning.masks import _kth_smallest_flat

    gen = torch.Generator().manual_seed(3)
    skewed = torch.rand(200_000, generator=gen) ** 12  # most values near 0
    tied = torch.cat([torch.zeros(150_000), torch.rand(50_000, generator=gen)])
    for x in (skewed, tied, -skewed):
        for k in (1, 7, 1000, 100_000, 149_999, 150_001, 199_999, 200_000):
            assert torch.equal(_kth_smallest_flat(x, k), x.kthvalue(k).values), k
