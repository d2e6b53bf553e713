"""The small study config the search tests share: the tiny Llama, real C4 / WikiText-2 text, TPE
over the BaWA space at 50%. Keyword overrides replace top-level fields."""

from __future__ import annotations

import yaml


def tiny_study_config(tmp_path, model_dir, data_dir, name="config.in.yaml", **over):
    base = {
        "model": str(model_dir),
        "device": "cpu",
        "data_dir": str(data_dir),
        "cache_dir": str(tmp_path / "cache"),
        "calibration": {"source": "c4", "nsamples": 4, "seqlen": 64, "seed": 0},
        "probe": {"nsamples": 2, "seqlen": 64, "seed": 1},
        "heldout": {"source": "wikitext2", "seqlen": 128, "windows": 2},
        "space": {"metric": {"name": "bawa"}, "allocation": {"name": "uniform"},
                  "pattern": {"name": "unstructured", "sparsity": 0.5}},
        "objectives": [{"name": "layer_recon"}],
        "searcher": {"name": "tpe", "seed": 0, "n_startup_trials": 4},
        "budget": {"trials": 10},
        "final": {"baselines": ["wanda", "magnitude"], "top": 1, "fidelity_sample": 4},
        **over,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(base))
    return path


def tiny_front_config(tmp_path, model_dir, data_dir, **over):
    """A sparsity front on the tiny Llama: NSGA-III over sparsity in [0.3, 0.7] (0.1 grid), a
    Wanda-family metric, the OWL allocation (lambda 0 = uniform) and DSnoT on or off."""
    base = dict(space={"metric": {"name": "bawa", "forms": ["product"], "alpha": [0, 0], "beta": [-0.3, 0.3],
                                  "gamma": [0.7, 1.3], "norms": ["l2"], "activations": ["l2"], "clip": False},
                       "allocation": {"name": "owl", "M": [2, 12], "lambda": [0.0, 0.3]},
                       "pattern": {"name": "sparsity", "low": 0.3, "high": 0.7, "step": 0.1, "points": [0.4, 0.6]},
                       "reconstruction": {"refine": ["none", "dsnot"]}},
                objectives=[{"name": "layer_recon"}, {"name": "sparsity"}],
                searcher={"name": "nsga3", "seed": 0, "population": 4},
                final={"top": 2, "fidelity_sample": 0, "baselines": ["wanda"]})
    return tiny_study_config(tmp_path, model_dir, data_dir, **{**base, **over})

