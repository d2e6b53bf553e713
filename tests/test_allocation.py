"""Layerwise sparsity allocation: the rules against direct transcriptions of the reference
formulas (design notes, section 5), the exact target, and ModelProfile on a tiny model with real
calibration statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl_prune.allocation import (
    ModelProfile,
    alpha_sparsities,
    depth_sparsities,
    esd_alpha,
    hill_alpha,
    match_target,
    offset_sparsities,
    owl_sparsities,
    weighted_mean,
)
from automl_prune.allocation.profile import layer_alphas
from automl_prune.allocation.rules import depth_schedule
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from search_spaces import make_space

BLOCKS = 4




# ----- direct transcriptions of the reference formulas ------------------------------------------
def owl_reference(D: np.ndarray, s: float, lam: float) -> np.ndarray:
    """Design notes 5 / OWL's code: scale D to [0, 2 lambda]; sparsity_l = s - (D_l - mean D)."""
    D = np.asarray(D, np.float64)
    scaled = (D - D.min()) * (1.0 / (D.max() - D.min()) * lam * 2)
    ratio = scaled - np.mean(scaled) + (1 - s)  # OWL keeps "1 - sparsity" per layer
    return 1.0 - ratio


def owl_outlier_ratios(model, stats, m: float) -> np.ndarray:
    """D_l = share of block l's Wanda scores |W_ij| ||X_j||_2 strictly above m x the block mean
    (OWL's check_outlier_mean over the pooled scores of the block), in float64."""
    out = []
    for i, block in enumerate(decoder_blocks(model)):
        scores = torch.cat([(lin.weight.detach().double().abs() * stats[i][name].l2.double().reshape(1, -1)).reshape(-1)
                            for name, lin in prunable_linears(block).items()])
        out.append(float((scores > scores.mean() * m).sum()) / scores.numel())
    return np.array(out)


def alphapruning_reference(layer_alpha: list[list[float]], layer_numel: list[list[int]], s: float,
                           eps: float) -> list[list[float]]:
    """AlphaPruning's ``ww_sparsity`` with ``mapping_type='block_wise'``: per layer, the block's mean
    alpha; linear map onto [s1, s2] = [1 - eps, 1 + eps]; times the scaler that makes the
    parameter-weighted mean equal s. Returns per block, per layer sparsities."""
    metrics = np.array([np.mean(a) for a, n in zip(layer_alpha, layer_numel) for _ in n])
    prunables = np.array([x for n in layer_numel for x in n], dtype=np.float64)
    s1, s2 = 1.0 - eps, 1.0 + eps
    ratios = (metrics - metrics.min()) / (metrics.max() - metrics.min()) * (s2 - s1) + s1
    ratios = ratios * (prunables.sum() * s / (prunables * ratios).sum())
    out, k = [], 0
    for n in layer_numel:
        out.append(list(ratios[k:k + len(n)]))
        k += len(n)
    return out


def reference_hill_alpha(eigs: np.ndarray, window: str, bins: int = 100) -> float:
    """Loop transcription of AlphaPruning's ``net_esd_estimator`` (fix_fingers='xmin_peak' for the
    two peak windows, no restriction for 'all'), in float64."""
    x = np.sort(np.asarray(eigs, np.float64))
    N = x.size
    logx = np.log(x)
    alphas, Ds = np.zeros(N - 1), np.ones(N - 1)
    if window != "all":
        h = np.log10(x)
        counts, edges = np.histogram(h, bins=bins, range=(h.min(), h.max()))
        xmin2 = 10 ** edges[np.argmax(counts)]
        xmin_min = np.log10(0.95 * xmin2) if window == "alphapruning" else 0.95 * xmin2
        xmin_max = 1.5 * xmin2
    for i, xmin in enumerate(x[:-1]):
        if window != "all":
            if xmin < xmin_min:
                continue
            if xmin > xmin_max:
                break
        n = float(N - i)
        alpha = 1 + n / (np.sum(logx[i:]) - n * logx[i])
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = np.max(np.abs(1 - (x[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
    return float(alphas[int(np.argmin(Ds))])


# ----- match_target: the exact target ----------------------------------------------------------------
def _random_cases(n_cases: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        L = int(rng.integers(1, 40))
        raw = rng.normal(0, rng.choice([0.01, 0.1, 0.5, 2.0]), L)
        weights = rng.integers(1, 10**7, L).astype(np.float64)
        lo = float(rng.choice([0.0, 0.0, 0.1, 0.3]))
        hi = float(rng.choice([0.99, 0.9, 0.8, 0.7]))
        target = float(rng.choice([lo, hi, rng.uniform(lo, hi), rng.uniform(lo, hi)]))
        yield raw, weights, target, (lo, hi)


@pytest.mark.parametrize("mode", ["shift", "scale"])
def test_match_target_hits_the_target_exactly_even_with_clipping(mode):
    clipped_cases = 0
    for raw, w, target, bounds in _random_cases(300, seed=1 if mode == "shift" else 2):
        if mode == "scale":
            raw = np.abs(raw) + 1e-3
        s = np.array(match_target(raw, w, target, bounds=bounds, mode=mode))
        assert abs(weighted_mean(s, w) - target) <= 1e-9, (raw, w, target, bounds)
        assert np.all(s >= bounds[0]) and np.all(s <= bounds[1])
        # the raw order is kept (a shift or a positive scale, then a clip)
        order = np.argsort(raw, kind="stable")
        assert np.all(np.diff(s[order]) >= -1e-12)
        clipped_cases += bool(np.any((s == bounds[0]) | (s == bounds[1])) and bounds[0] < target < bounds[1])
    assert clipped_cases >= 30  # the clipping branch is really exercised


def test_match_target_free_blocks_are_a_pure_shift_or_scale():
    raw = np.array([0.0, 0.02, -0.05, 0.3, -0.4])
    w = np.array([3.0, 1.0, 2.0, 5.0, 1.0])
    s = np.array(match_target(raw, w, 0.5, bounds=(0.0, 0.6)))
    free = (s > 0) & (s < 0.6)
    assert s[3] == 0.6 and free.sum() == 4
    c = s[free] - raw[free]
    assert np.ptp(c) < 1e-12
    assert weighted_mean(s, w) == pytest.approx(0.5, abs=1e-12)


def test_match_target_rejects_impossible_requests():
    with pytest.raises(ValueError, match="outside the bounds"):
        match_target([0.0, 0.1], [1, 1], 0.95, bounds=(0.0, 0.9))
    with pytest.raises(ValueError):
        match_target([0.0, 0.1], [1, 0], 0.5)
    with pytest.raises(ValueError):
        match_target([0.0, -0.1], [1, 1], 0.5, mode="scale")
    with pytest.raises(ValueError):
        match_target([0.0, float("nan")], [1, 1], 0.5)


def test_equal_raw_values_give_exactly_the_target():
    """A uniform allocation must come out as the target itself, not one ulp below it (576 * 0.5
    must prune 288 weights of a row, not 287)."""
    rng = np.random.default_rng(8)
    for target in (0.5, 0.45, 0.55, 0.6, 0.7, 0.3, 0.35, 0.8, 0.65, 0.9):
        for _ in range(20):
            L = int(rng.integers(1, 33))
            w = rng.integers(1, 10**7, L).astype(np.float64)
            for rule in (lambda: owl_sparsities([0.2] * L, w, target, 0.1),
                         lambda: alpha_sparsities([3.0] * L, w, target, 0.3),
                         lambda: offset_sparsities([0.04] * L, w, target),
                         lambda: depth_sparsities(0.0, 0.0, w, target),
                         lambda: match_target(np.full(L, 0.7), w, target, mode="scale")):
                assert rule() == [target] * L


# ----- OWL ---------------------------------------------------------------------------------------------
def test_owl_rule_is_the_reference_formula():
    rng = np.random.default_rng(3)
    for _ in range(50):
        L = int(rng.integers(2, 33))
        D = rng.uniform(0, 0.1, L)
        s, lam = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.02, 0.2))
        ours = owl_sparsities(D, np.full(L, 1000.0), s, lam)  # equal blocks: the reference's plain mean
        assert np.allclose(ours, owl_reference(D, s, lam), rtol=0, atol=1e-11)
        # more outliers => pruned less; the spread is exactly 2 lambda
        assert np.ptp(ours) == pytest.approx(2 * lam, abs=1e-11)
        assert np.argmin(ours) == np.argmax(D)


def test_owl_rule_with_unequal_blocks_and_clipping():
    D = np.array([0.01, 0.05, 0.02, 0.09, 0.03])
    w = np.array([1.0, 4.0, 2.0, 1.0, 8.0])
    s = np.array(owl_sparsities(D, w, 0.6, 0.08))
    ref = owl_reference(D, 0.6, 0.08)
    assert np.ptp(s - ref) < 1e-12  # same shape, one common shift (the weighted mean)
    assert weighted_mean(s, w) == pytest.approx(0.6, abs=1e-12)
    clipped = np.array(owl_sparsities(D, w, 0.75, 0.2, bounds=(0.0, 0.8)))
    assert clipped.max() == 0.8 and weighted_mean(clipped, w) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("m", [3.0, 5.0, 7.5])
def test_profile_outlier_ratios_are_owls_counts(calibrated, m):
    model, stats, _ = calibrated
    exact = ModelProfile.build(model, stats, with_alphas=False, owl_knots=10**7)
    counts = np.array(exact.owl_counts, dtype=np.float64)
    assert np.allclose(exact.outlier_ratios(m), owl_outlier_ratios(model, stats, m), rtol=0, atol=1.01 / counts.min())


def test_owl_space_decodes_to_the_reference_allocation(calibrated, profile):
    model, stats, _ = calibrated
    prof = profile  # the default sketch of 4,096 knots: exact where M = 5 lands (a few hundred outliers)
    space = make_space({"metric": "bawa", "allocation": "owl"})
    point = space.named_points()["wanda+owl"]
    assert (point["alloc.M"], point["alloc.lambda"]) == (5.0, 0.08)  # the paper's setting
    plan = space.decode(point, prof)
    assert plan.metric.name == "wanda"
    ref = owl_reference(owl_outlier_ratios(model, stats, 5.0), 0.5, 0.08)  # equal blocks: no weighting needed
    assert np.allclose(plan.sparsity, ref, rtol=0, atol=1e-9)
    assert weighted_mean(plan.sparsity, prof.block_params) == pytest.approx(0.5, abs=1e-12)


def test_outlier_ratio_counts_strictly_above_m():
    """OWL's check_outlier_mean counts W > M x mean: a score equal to the threshold is not an outlier."""
    tail = np.array([1.5, 2.0, 2.0, 3.0, 7.0], np.float32)
    prof = ModelProfile(layer_names=[["a"]], layer_numels=[[10]], owl_counts=[10], owl_tails=[tail], owl_tail_sizes=[5])
    assert prof.outlier_ratios(2.0).tolist() == [0.2]
    assert prof.outlier_ratios(1.0).tolist() == [0.5]
    assert prof.outlier_ratios(1.999).tolist() == [0.4]
    assert prof.outlier_ratios(7.0).tolist() == [0.0]


def test_owl_sketch_is_close_to_the_exact_counts(calibrated, profile):
    model, stats, _ = calibrated
    exact = ModelProfile.build(model, stats, with_alphas=False, owl_knots=10**7)
    sketch = ModelProfile.build(model, stats, with_alphas=False, owl_knots=256)
    assert max(sketch.owl_tail_sizes) > 256 and min(profile.owl_tail_sizes) > profile.owl_knots  # sketches
    for m in (1.0, 1.5, 2.0, 3.0, 5.0, 8.0):
        assert np.allclose(sketch.outlier_ratios(m), exact.outlier_ratios(m), rtol=0.02, atol=2e-4), m
        assert np.allclose(profile.outlier_ratios(m), exact.outlier_ratios(m), rtol=0.002, atol=2e-5), m
    # where the sketch holds every rank (the top ~knots / ln(size) values: a few hundred outliers
    # here), its count is exact
    counts = np.array(exact.owl_counts, dtype=np.float64)
    for m in (5.0, 6.0, 8.0, 10.0):
        assert np.all(exact.outlier_ratios(m) * counts < profile.owl_knots / np.log(max(profile.owl_tail_sizes)))
        assert np.array_equal(profile.outlier_ratios(m), exact.outlier_ratios(m)), m


@pytest.mark.parametrize("knots", [10**7, 4096, 64])
def test_outlier_ratios_are_monotone_in_m(calibrated, knots):
    model, stats, _ = calibrated
    prof = ModelProfile.build(model, stats, with_alphas=False, owl_knots=knots)
    grid = np.concatenate([np.linspace(1.0, 12.0, 200), [50.0, 1e6]])
    ratios = np.stack([prof.outlier_ratios(m) for m in grid])  # (M, blocks)
    assert np.all(np.diff(ratios, axis=0) <= 1e-15)
    assert np.all(ratios[0] > 0) and np.all(ratios[-1] == 0) and np.all(ratios <= 1)
    with pytest.raises(ValueError, match="floor"):
        prof.outlier_ratios(0.5)


# ----- AlphaPruning ---------------------------------------------------------------------------------------
def test_alpha_rule_is_the_reference_mapping():
    rng = np.random.default_rng(4)
    for _ in range(50):
        L = int(rng.integers(2, 33))
        per_block = int(rng.integers(1, 8))
        layer_alpha = [list(rng.uniform(2, 8, per_block)) for _ in range(L)]
        layer_numel = [list(rng.integers(10**3, 10**6, per_block)) for _ in range(L)]
        s, eps = float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.05, 0.4))
        ours = alpha_sparsities([np.mean(a) for a in layer_alpha], [sum(n) for n in layer_numel], s, eps)
        ref = alphapruning_reference(layer_alpha, layer_numel, s, eps)
        for b in range(L):
            assert np.allclose(ref[b], ours[b], rtol=0, atol=1e-11)
        block_alpha = np.array([np.mean(a) for a in layer_alpha])
        assert np.argmax(ours) == np.argmax(block_alpha)  # higher alpha: pruned more


def test_alpha_space_decodes_to_the_reference_allocation(calibrated, profile):
    space = make_space({"metric": "bawa", "allocation": "alpha"})
    point = space.named_points()["wanda+alphapruning"]
    assert point["alloc.eps"] == 0.3
    plan = space.decode(point, profile)
    ref = alphapruning_reference(profile.layer_alphas, profile.layer_numels, 0.5, 0.3)
    assert np.allclose(plan.sparsity, [r[0] for r in ref], rtol=0, atol=1e-11)
    assert np.allclose(profile.block_alphas(), [np.mean(a) for a in profile.layer_alphas])


@pytest.mark.parametrize("window", ["alphapruning", "peak", "all"])
def test_hill_alpha_matches_the_reference_loop(window):
    rng = np.random.default_rng(5)
    for shape, dist in [((64, 128), "normal"), ((96, 48), "t"), ((128, 128), "normal"), ((50, 80), "t")]:
        w = rng.standard_t(3, shape) if dist == "t" else rng.normal(0, 0.02, shape)
        eigs = np.linalg.svd(w, compute_uv=False) ** 2
        alpha, xmin, ks = hill_alpha(eigs, window=window)
        assert alpha == pytest.approx(reference_hill_alpha(eigs, window), rel=1e-9)
        assert alpha > 1 and 0 <= ks <= 1 and xmin in eigs


def test_esd_alpha_uses_the_squared_singular_values(calibrated):
    model, _, _ = calibrated
    w = decoder_blocks(model)[0].mlp.up_proj.weight
    eigs = np.linalg.svd(w.detach().double().numpy(), compute_uv=False) ** 2
    assert esd_alpha(w) == pytest.approx(reference_hill_alpha(eigs, "alphapruning"), rel=1e-4)


# ----- offsets and depth ----------------------------------------------------------------------------------
def test_offsets_differing_by_a_constant_give_the_same_allocation():
    rng = np.random.default_rng(6)
    for _ in range(100):
        L = int(rng.integers(2, 30))
        o = rng.uniform(-0.05, 0.05, L)
        w = rng.integers(10**4, 10**6, L).astype(np.float64)
        s = float(rng.uniform(0.2, 0.8))
        bounds = (0.0, float(rng.choice([0.99, s + 0.02])))
        base = offset_sparsities(o, w, s, bounds=bounds)
        for k in (-0.3, 0.01, 0.7):
            assert np.allclose(offset_sparsities(o + k, w, s, bounds=bounds), base, rtol=0, atol=1e-12)
        assert weighted_mean(base, w) == pytest.approx(s, abs=1e-9)


def test_depth_schedule():
    w = np.array([5.0, 5.0, 6.0, 5.0, 7.0, 5.0])
    assert depth_sparsities(0.0, 0.0, w, 0.45) == [0.45] * 6
    lin = np.array(depth_sparsities(0.2, 0.0, w, 0.45))
    assert np.all(np.diff(lin) > 0) and np.allclose(np.diff(lin), 0.2 / 5)  # a linear trend, slope a / (L - 1)
    quad = np.array(depth_sparsities(0.0, 0.3, w, 0.45))
    assert np.allclose(np.diff(quad, 2), 0.3 * 2 / 25)  # b t^2 with t = l / (L - 1)
    for a, b in [(0.3, -0.3), (-0.2, 0.25), (0.1, 0.1)]:
        assert weighted_mean(depth_sparsities(a, b, w, 0.45), w) == pytest.approx(0.45, abs=1e-12)
    # each trend has zero mean over continuous depth; over L points it is exactly linear / quadratic
    t = np.linspace(0, 1, 9)
    assert np.allclose(depth_schedule(0.4, -0.2, 9), 0.4 * (t - 0.5) - 0.2 * (t * t - 1 / 3))
    assert depth_sparsities(0.2, 0.1, [3.0], 0.5) == [0.5]  # one block: the target


# ----- ModelProfile ------------------------------------------------------------------------------------------
def test_profile_layout(calibrated, profile):
    model, _, _ = calibrated
    blocks = decoder_blocks(model)
    assert profile.n_blocks == BLOCKS
    assert profile.layer_names == [list(prunable_linears(b)) for b in blocks]
    assert profile.layer_names[0] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert profile.block_params.tolist() == [float(sum(lin.weight.numel() for lin in prunable_linears(b).values()))
                                             for b in blocks]
    assert profile.owl_counts == [int(p) for p in profile.block_params]
    assert profile.has_owl and profile.has_alphas
    assert all(len(a) == 7 and all(np.isfinite(a)) and min(a) > 1 for a in profile.layer_alphas)


def test_profile_without_statistics_has_no_owl_material(calibrated):
    model, stats, _ = calibrated
    prof = ModelProfile.build(model, None, with_alphas=False)
    assert not prof.has_owl and not prof.has_alphas and prof.n_blocks == BLOCKS
    with pytest.raises(ValueError):
        prof.outlier_ratios(5.0)
    with pytest.raises(ValueError):
        prof.block_alphas()
    with pytest.raises(ValueError, match="blocks"):
        ModelProfile.build(model, stats[:2], with_alphas=False)
    owl = make_space({"allocation": "owl"})
    with pytest.raises(ValueError, match="calibration statistics"):
        owl.decode(owl.named_points()["wanda+owl"], prof)
    alpha = make_space({"allocation": "alpha"})
    with pytest.raises(ValueError, match="with_alphas"):
        alpha.decode(alpha.named_points()["wanda+alphapruning"], prof)


def test_alpha_cache_hit_on_second_build(calibrated, profile, tmp_path):
    model, _, _ = calibrated
    first = ModelProfile.build(model, None, alpha_cache_dir=tmp_path, alpha_cache_key="tiny-llama")
    assert first.info["alpha_cache"] == "miss"
    files = list((tmp_path / "esd_alpha").glob("*.json"))
    assert len(files) == 1
    second = ModelProfile.build(model, None, alpha_cache_dir=tmp_path, alpha_cache_key="tiny-llama")
    assert second.info["alpha_cache"] == "hit"
    assert second.layer_alphas == first.layer_alphas == profile.layer_alphas
    # another key or another window misses (one block, through the cache function itself, to keep
    # the SVDs few)
    one = decoder_blocks(model)[:1]
    assert layer_alphas(one, cache_dir=tmp_path, cache_key="other")[1]["alpha_cache"] == "miss"
    assert layer_alphas(one, cache_dir=tmp_path, cache_key="other", window="peak")[1]["alpha_cache"] == "miss"
    assert layer_alphas(one, cache_dir=tmp_path, cache_key="other")[1]["alpha_cache"] == "hit"
    files[0].write_text("{not json")
    # a corrupt entry, or one written for other layers under the same key, is recomputed and rewritten
    alphas, info = layer_alphas(one, cache_dir=tmp_path, cache_key="tiny-llama")
    assert info["alpha_cache"] == "miss" and alphas == first.layer_alphas[:1]
    assert layer_alphas(one, cache_dir=tmp_path, cache_key="tiny-llama")[1]["alpha_cache"] == "hit"
