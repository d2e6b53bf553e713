"""Local-executor throughput: candidates per minute, and the cost of one candidate relative to one
plain forward pass of the dense model over the calibration tokens (same run, same machine).

A candidate = decode a parameter set of the space, apply its masks to the working copy of the
weights (one-shot, from the cached dense statistics) and compute the objective(s). Parameter sets
are drawn at random (fixed seed) from the space of a study config, without the canonical-key or
mask reuse a real search adds on top.

Side by side in the same run (``--reload-candidates K``): the first K of those candidates scored
the way the OptiShear reference loop works, reloading the model and re-running the calibration
(statistics with Gram matrices, no cache) and the objectives' preparation for every candidate.
Peak resident memory (ru_maxrss) is read after each phase; it only grows within one process.

    python benchmarks/search_throughput.py --config configs/bawa-tpe-50.yaml --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
from pathlib import Path

import optuna
import torch

from automl_prune.provenance import environment
from automl_prune.search.execution.candidate import score_candidate
from automl_prune.search.study.config import load_config
from automl_prune.search.execution.setup import load_search
from automl_prune.search.study.definition import Study
from search_spaces import suggest
from setup_args import add_device, synchronize

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def forward_seconds(ctx, ids: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for row in ids:
            ctx.model(row[None].to(ctx.device), use_cache=False)
        synchronize(ctx.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_candidates(ctx, profile, space, objectives: list, n: int, seed: int) -> tuple[list[dict], list[dict], list]:
    """Seconds of ``n`` random candidates of ``space`` (seeded): per candidate ``decode``, ``masks``
    (masks on the working copy) and ``candidate`` (decode + masks + objectives, as a trial scores
    it); the parameter sets drawn and their plans."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rows, drawn, plans = [], [], []
    for _ in range(n):
        params = suggest(space, study.ask())
        drawn.append(params)
        t0 = time.perf_counter()
        plan = space.decode(params, profile)
        decode = time.perf_counter() - t0
        masks, scored = time_one(ctx, plan, objectives)
        rows.append(dict(decode=decode, masks=masks, candidate=decode + scored))
        plans.append(plan)
    return rows, drawn, plans


def time_one(ctx, plan, objectives: list, restore: bool = True) -> tuple[float, float]:
    """Seconds to apply ``plan``'s masks, and to apply them and compute the objectives (as a trial
    scores it: ``score_candidate`` finds the masks applied); the working copy restored after unless
    ``restore`` is False (a search leaves it pruned: the next candidate starts from it)."""
    synchronize(ctx.device)
    t0 = time.perf_counter()
    ctx.apply(plan)
    synchronize(ctx.device)
    t1 = time.perf_counter()
    score_candidate(ctx, plan, objectives)
    synchronize(ctx.device)
    t2 = time.perf_counter()
    if restore:
        ctx.restore()
    return t1 - t0, t2 - t0


def time_allocations(ctx, plan, objectives: list, n: int, seed: int, spread: float = 0.1, moves: bool = False) -> list[dict]:
    """Seconds of ``n`` allocation-only candidates of ``plan``'s metric (already scored once, as in
    a search), scored one after the other as a search does (no restore between). Without ``moves``:
    random per-block sparsities of the same mean (uniform in +-``spread``; every block changes; the
    first one also turns the stored scores into ranks, score_cache.py). With ``moves``: EvoPress's
    mutation at block granularity, each child of the previous one by 1-3 switches (one block
    ``spread / 4`` up, another as much down; the mean kept), so the blocks left alone keep their
    masks and errors. ``masks`` and ``candidate`` (masks + objectives) per candidate."""
    target = plan.sparsity if isinstance(plan.sparsity, float) else float(sum(plan.sparsity) / len(plan.sparsity))
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    nb = len(ctx.blocks)
    current = [target] * nb
    step = spread / 4
    rows = []
    for _ in range(n):
        if moves:
            for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
                a, b = rng.sample(range(nb), 2)
                current[a], current[b] = current[a] + step, current[b] - step
            per_block = current
        else:
            offsets = (torch.rand(nb, generator=gen, dtype=torch.float64) * 2 - 1) * spread
            per_block = (offsets - offsets.mean() + target).clamp(0.0, 0.99).tolist()
        candidate = plan.model_copy(update={"sparsity": [round(x, 10) for x in per_block]})
        masks, scored = time_one(ctx, candidate, objectives, restore=False)
        rows.append(dict(masks=masks, candidate=scored))
    ctx.restore()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bawa-tpe-50.yaml")
    ap.add_argument("--data-dir", default=None)
    add_device(ap)
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed plain forward passes (median)")
    ap.add_argument("--allocation-candidates", type=int, default=8,
                    help="allocation-only candidates of the last metric (unstructured spaces; 0: skip)")
    ap.add_argument("--reload-candidates", type=int, default=2,
                    help="candidates also scored with a model reload and a fresh calibration each (0: skip)")
    ap.add_argument("--stem", default=None)
    ap.add_argument("--results-dir", default=str(RESULTS), help="where STEM.json and STEM.md go")
    args = ap.parse_args()

    overrides = {k: v for k, v in dict(data_dir=args.data_dir, device=args.device).items() if v}
    config = load_config(args.config, overrides or None)
    study = Study.from_config(config)
    objectives = study.objectives
    ctx, profile, space = load_search(study)
    prepare_s = ctx.info["objectives_prepare_seconds"]
    c = config.calibration
    ctx.restore()
    fwd = forward_seconds(ctx, ctx.calib_ids, repeats=args.repeats)

    rows, drawn, plans = time_candidates(ctx, profile, space, objectives, args.candidates, args.seed)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    alloc = None
    if args.allocation_candidates and plans[0].nm is None:
        arows = time_allocations(ctx, plans[-1], objectives, args.allocation_candidates, args.seed)
        mrows = time_allocations(ctx, plans[-1], objectives, args.allocation_candidates, args.seed, moves=True)
        alloc = dict(candidates=len(arows), first_seconds={k: round(v, 3) for k, v in arows[0].items()},
                     median_seconds={k: round(statistics.median(r[k] for r in arows[1:] or arows), 3) for k in arows[0]},
                     moves_median_seconds={k: round(statistics.median(r[k] for r in mrows), 3) for k in mrows[0]})
    peak_cached = peak_rss_mib()
    reload = reload_per_candidate(config, drawn[: args.reload_candidates]) if args.reload_candidates else None
    result = dict(config=args.config, space=config.space, objectives=[o.model_dump() for o in config.objectives],
                  calibration=f"{c.source} {c.nsamples} x {c.seqlen} seed {c.seed}", candidates=args.candidates,
                  seed=args.seed, prepare_seconds=round(prepare_s, 2), forward_seconds=round(fwd, 3),
                  median_seconds={k: round(v, 3) for k, v in med.items()},
                  candidates_per_minute=round(60 / med["candidate"], 2),
                  candidate_vs_forward=round(med["candidate"] / fwd, 3),
                  masks_vs_forward=round(med["masks"] / fwd, 3), allocation_only=alloc,
                  score_cache_mib=round(ctx.scores.budget / 2**20), peak_rss_mib_cached=peak_cached,
                  reload_per_candidate=reload, environment=environment(ctx.device), context=ctx.info)
    if reload:
        result["reload_vs_cached"] = round(reload["median_seconds"] / med["candidate"], 1)
    stem = args.stem or f"throughput_{Path(args.config).stem}"
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    md = (f"{args.config}: {args.candidates} random candidates of the space, objectives "
          f"{', '.join(o.name for o in config.objectives)}; calibration {result['calibration']}.\n\n"
          f"| quantity | value |\n|---|---:|\n"
          f"| one plain forward over the calibration tokens (s) | {fwd:.2f} |\n"
          f"| one candidate: masks + objectives, median (s) | {med['candidate']:.2f} |\n"
          f"| of which masks (s) | {med['masks']:.2f} |\n"
          f"| candidate / forward | {med['candidate'] / fwd:.2f} |\n"
          f"| candidates per minute | {60 / med['candidate']:.1f} |\n"
          f"| one-time preparation of the objectives (s) | {prepare_s:.1f} |\n")
    if alloc:
        md += (f"| allocation-only candidate (the last metric at {alloc['candidates']} random per-block "
               f"allocations): masks + objectives, median (s) | {alloc['median_seconds']['candidate']:.2f} |\n"
               f"| of which masks (s) | {alloc['median_seconds']['masks']:.2f} |\n"
               f"| the first of them, which also ranks the stored scores (s) | {alloc['first_seconds']['candidate']:.2f} |\n"
               f"| allocation move (EvoPress's mutation by blocks: 1-3 switches of two blocks' sparsities by 0.025, "
               f"{alloc['candidates']} in a row): masks + objectives, median (s) | {alloc['moves_median_seconds']['candidate']:.2f} |\n"
               f"| of which masks (s) | {alloc['moves_median_seconds']['masks']:.2f} |\n")
    md += (f"| score cache bound (MiB) | {result['score_cache_mib']} |\n"
          f"| peak resident memory, cached loop (MiB) | {peak_cached:.0f} |\n")
    if reload:
        md += (f"| reload-per-candidate loop: model load + calibration + objective preparation + candidate, "
               f"median of {reload['candidates']} (s) | {reload['median_seconds']:.1f} |\n"
               f"| reload-per-candidate / cached candidate | {result['reload_vs_cached']:.1f}x |\n"
               f"| candidates per minute, reload per candidate | {60 / reload['median_seconds']:.2f} |\n"
               f"| peak resident memory after the reload loop (MiB) | {reload['peak_rss_mib']:.0f} |\n")
    (results / f"{stem}.md").write_text(md)
    print(md)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def reload_per_candidate(config, params_list: list[dict]) -> dict:
    """Score each parameter set as a reload-per-trial loop does: load the model, capture the
    statistics afresh (no cache), prepare the objectives, then score the one candidate."""
    times = []
    for params in params_list:
        start = time.perf_counter()
        study = Study.from_config(config)
        objectives = study.objectives
        ctx, profile, space = load_search(study, progress=False, use_cache=False)
        score_candidate(ctx, space.decode(params, profile), objectives)
        times.append(time.perf_counter() - start)
        del ctx
    return dict(candidates=len(times), seconds=[round(t, 2) for t in times], median_seconds=round(statistics.median(times), 2),
                peak_rss_mib=peak_rss_mib())


if __name__ == "__main__":
    main()
