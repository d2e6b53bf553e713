"""What one worker needs per model size, from the memory model (models/memory_model.py): device
peak, host peak and disk of a search worker (one candidate, with its context) and of a SparseGPT
prune, for each offload mode, on a GPU worker, with the papers' calibration (C4, 128 x 2048) in
float16. The models are the Llama-2 family's shapes (built as weightless skeletons from their
configs; nothing is downloaded) and the offline models. benchmarks/memory_scaling.py sets the same
model against measured peaks.

    python benchmarks/memory_model_table.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from setup_args import write_results

RESULTS = Path(__file__).resolve().parent / "results"

#: Llama-2's published shapes (hidden, intermediate, layers, heads, KV heads); vocabulary 32,000
LLAMA2 = {"Llama-2-7B": (4096, 11008, 32, 32, 32), "Llama-2-13B": (5120, 13824, 40, 40, 40),
          "Llama-2-70B": (8192, 28672, 80, 64, 8)}


def shapes(offline: bool):
    from transformers import LlamaConfig

    from automl_prune.models.memory_model import ModelShape, model_config

    out = {}
    for name, (d, f, n, h, kv) in LLAMA2.items():
        out[name] = ModelShape.from_config(LlamaConfig(hidden_size=d, intermediate_size=f, num_hidden_layers=n,
                                                       num_attention_heads=h, num_key_value_heads=kv, vocab_size=32000))
    if offline:
        for alias in ("smollm2-135m",):
            config = model_config(alias)
            if config is not None:
                out[alias] = ModelShape.from_config(config)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--probe-tokens", type=int, default=8 * 512)
    ap.add_argument("--no-offline", action="store_true", help="leave out the offline models (their configs are read locally)")
    ap.add_argument("--stem", default="memory_model")
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()

    from automl_prune.models.memory_model import GIB, Job, estimate

    rows = []
    for name, shape in shapes(not args.no_offline).items():
        for kind, update in (("candidate", "none"), ("prune", "sparsegpt")):
            for mode in ("none", "cpu", "disk"):
                est = estimate(shape, Job(kind, offload=mode, device="cuda", dtype_bytes=2, n_windows=args.nsamples,
                                          seqlen=args.seqlen, batch_size=4, update=update, with_gram=True,
                                          probe_tokens=args.probe_tokens, probe_seqlen=512, fisher_windows=4))
                rows.append(dict(model=name, job="search worker" if kind == "candidate" else "sparsegpt prune", offload=mode,
                                 blocks=shape.n_blocks, device_gib=round(est.device_peak / GIB, 1),
                                 host_gib=round(est.host_peak / GIB, 1), disk_gib=round(est.disk / GIB, 1),
                                 parts={k: round(v / GIB, 2) for k, v in est.parts.items()}))
    lines = [f"Memory model (models/memory_model.py), GPU worker, float16 weights, calibration {args.nsamples} x {args.seqlen}, "
             f"probe {args.probe_tokens} tokens (windows of 512), layer_recon's Fisher on 4 probe windows; GiB.", "",
             "| model | job | offload | device peak | host peak | disk |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['job']} | {r['offload']} | {r['device_gib']:.1f} | {r['host_gib']:.1f} | "
                     f"{r['disk_gib']:.1f} |")
    write_results(args.results_dir, args.stem, dict(nsamples=args.nsamples, seqlen=args.seqlen, rows=rows),
                  "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
