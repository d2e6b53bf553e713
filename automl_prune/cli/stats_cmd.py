"""`automl-prune stats`: precompute (or verify) the calibration statistics cache of a model."""

from __future__ import annotations

import argparse

from . import common, paths


def register(sub) -> None:
    p = sub.add_parser("stats", help="precompute the calibration statistics cache",
                       description="Capture the input statistics of every prunable linear layer of the dense model "
                                   "(one-shot mode) and store them in the cache, so that pruning and searches start at once.")
    common.add_model_options(p)
    common.add_calibration_options(p)
    common.add_data_dir_option(p)
    p.add_argument("--gram", action="store_true", help="also store the Gram matrices X^T X (needed by SparseGPT and the layer error)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: a subcommand loads the model stack only when it runs (--help and argument errors answer at once)
    from ..calibration.dense import dense_statistics
    from ..data import calibration_windows, check_source
    from ..models.gguf_cache import default_cache_dir
    from ..models.loading import load_model

    paths.check(args)  # every path option, before anything is read
    common.resolve_quick(args)
    check_source(args.calib, "calibration", data_dir=args.data_dir, split=args.calib_split, text_field=args.text_field)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir)
    calib = calibration_windows(args.calib, loaded.tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                                data_dir=args.data_dir, split=args.calib_split, text_field=args.text_field,
                                bos=common.use_bos(args, loaded.model))
    res = dense_statistics(loaded.model, calib.input_ids, with_gram=args.gram, batch_size=args.batch_size,
                           device=loaded.info["device"], cache_dir=args.cache_dir, windows_info=calib.info)
    n_layers = sum(len(b) for b in res.stats)
    print(f"statistics of {n_layers} linear layers ({len(res.stats)} blocks) from {calib.input_ids.shape[0]} x "
          f"{calib.input_ids.shape[1]} tokens of {args.calib}: cache {res.info['cache']} in {res.info['seconds']:.1f} s")
    print(f"cache: {default_cache_dir(args.cache_dir) / 'stats'} key {res.info.get('cache_key', '-')[:32]}")
    return 0
