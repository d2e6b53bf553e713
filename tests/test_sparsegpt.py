"""SparseGPT: the OBS update beats mask-only pruning, masks are kept/valid, bad Hessians don't crash."""

from __future__ import annotations

import pytest
import torch

from automl_prune.calibration.stats import LinearStats
from automl_prune.metrics.kernel import score
from automl_prune.metrics.spec import WandaMetric
from automl_prune.pruning.masks import check_nm, unstructured_mask
from automl_prune.pruning.sparsegpt import hessian_from_stats, sparsegpt_prune

OUT, IN = 32, 256  # two 128-column blocks


def correlated_layer(seed=0, n_tokens=1024, n_seqs=8):
    """X = Z A (correlated inputs) with its statistics, and a random weight."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(IN, IN, generator=g) / IN**0.5 + 0.3 * torch.eye(IN)
    X = torch.randn(n_tokens, IN, generator=g) @ A
    W = torch.randn(OUT, IN, generator=g)
    stats = LinearStats.empty(IN, with_gram=True)
    stats.update(X.reshape(n_seqs, -1, IN), n_seqs=n_seqs)
    return X, W, stats


def out_error(X, W, W_new):
    return float(torch.linalg.norm(X @ W.T - X @ W_new.T))


def test_hessian_scaling_follows_reference():
    X, _, stats = correlated_layer()
    H = hessian_from_stats(stats)
    assert H.dtype == torch.float32
    torch.testing.assert_close(H, (2 * X.double().T @ X.double() / stats.n_seqs).float(), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="Gram"):
        hessian_from_stats(LinearStats.empty(IN))


def test_adaptive_mask_beats_mask_only():
    X, W, stats = correlated_layer()
    res = sparsegpt_prune(W, stats, sparsity=0.5)
    assert res.weight.dtype == torch.float32 and res.mask.dtype == torch.bool
    assert not res.info["fell_back"] and res.info["attempts"] == 1
    # exact count per 128-column block, all rows jointly
    assert [int(res.mask[:, c : c + 128].sum()) for c in (0, 128)] == [OUT * 128 // 2] * 2
    assert (res.weight[res.mask] == 0).all()
    assert out_error(X, W, res.weight) < 0.9 * out_error(X, W, W.masked_fill(res.mask, 0.0))


def test_given_wanda_mask_is_kept_and_update_helps():
    X, W, stats = correlated_layer(seed=1)
    mask = unstructured_mask(score(WandaMetric(), W, stats), 0.5, "row")
    res = sparsegpt_prune(W, stats, mask=mask)
    assert torch.equal(res.mask, mask)
    assert (res.weight[mask] == 0).all()
    assert (res.weight[~mask] != 0).all()  # only the given zeros
    assert out_error(X, W, res.weight) < 0.9 * out_error(X, W, W.masked_fill(mask, 0.0))
    same = sparsegpt_prune(W, stats, mask=mask.clone(), prune_n=2, prune_m=4)  # the mask wins over N:M
    torch.testing.assert_close(same.weight, res.weight)
    assert torch.equal(same.mask, mask)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_output_valid(n, m):
    X, W, stats = correlated_layer(seed=2)
    res = sparsegpt_prune(W, hessian_from_stats(stats), prune_n=n, prune_m=m)
    assert check_nm(res.weight, n, m) and check_nm(res.mask, n, m)
    assert (res.mask.reshape(OUT, -1, m).sum(-1) == m - n).all()
    assert out_error(X, W, res.weight) < out_error(X, W, W.masked_fill(res.mask, 0.0))


def test_nm_with_blocksize_not_a_multiple_of_m():
    _, W, stats = correlated_layer(seed=3)
    res = sparsegpt_prune(W, stats, prune_n=2, prune_m=4, blocksize=30)
    assert check_nm(res.weight, 2, 4)


def test_zero_sparsity_keeps_weight_and_dead_inputs_are_zeroed():
    X, W, stats = correlated_layer(seed=4)
    res = sparsegpt_prune(W, stats, sparsity=0.0)
    assert not res.mask.any()
    torch.testing.assert_close(res.weight, W)
    H = hessian_from_stats(stats)
    H[5, :] = 0
    H[:, 5] = 0  # input 5 never active
    res = sparsegpt_prune(W, H, sparsity=0.5)
    assert res.info["n_dead"] == 1 and (res.weight[:, 5] == 0).all()


def test_rank_deficient_negative_perturbation_does_not_raise():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(16, 8, generator=g) @ torch.randn(8, IN, generator=g)  # rank 8 of 256
    H = 2 * X.T @ X / 16
    H -= 0.3 * torch.diag(H).mean() * torch.eye(IN)  # indefinite
    W = torch.randn(OUT, IN, generator=g)
    res = sparsegpt_prune(W, H, sparsity=0.5)
    assert res.info["attempts"] > 1 or res.info["fell_back"]
    assert res.info["percdamp"] > 0.01
    assert int(res.mask.sum()) == OUT * IN // 2 and torch.isfinite(res.weight).all()


@pytest.mark.parametrize("bad", ["negative", "nan"])
def test_unusable_hessian_falls_back_to_masking(bad):
    _, W, stats = correlated_layer(seed=6)
    H = -torch.eye(IN) if bad == "negative" else hessian_from_stats(stats)
    if bad == "nan":
        H[3, 7] = float("nan")
    res = sparsegpt_prune(W, H, sparsity=0.5)
    assert res.info["fell_back"] and res.info["reason"]
    assert int(res.mask.sum()) == OUT * IN // 2
    torch.testing.assert_close(res.weight, W.masked_fill(res.mask, 0.0))
    res = sparsegpt_prune(W, H, prune_n=2, prune_m=4)
    assert res.info["fell_back"] and check_nm(res.weight, 2, 4)


def test_argument_errors():
    _, W, stats = correlated_layer(seed=7)
    with pytest.raises(ValueError, match="divisible"):
        sparsegpt_prune(W[:, :250], torch.eye(250), prune_n=2, prune_m=4)
    with pytest.raises(ValueError, match="N:M"):
        sparsegpt_prune(W, stats, prune_n=4, prune_m=4)
    with pytest.raises(ValueError, match="H must be"):
        sparsegpt_prune(W, torch.eye(10))
    with pytest.raises(ValueError, match="mask"):
        sparsegpt_prune(W, stats, mask=torch.zeros(OUT, IN))
