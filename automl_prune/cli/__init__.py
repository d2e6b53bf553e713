"""The ``automl-prune`` command line: search, report, prune, eval, stats."""

from __future__ import annotations

import argparse
import logging
import sys

from ..version import __version__
from ..errors import PruningError, UserError
from . import eval_cmd, prune_cmd, search_cmd, stats_cmd


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="automl-prune", description="AutoML search over pruning metrics, sparsity "
                                "allocations and patterns for LLMs; prune, evaluate and export.")
    p.add_argument("--version", action="version", version=f"automl-prune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (search_cmd, prune_cmd, eval_cmd, stats_cmd):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"automl-prune: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except PruningError as exc:
        print(f"automl-prune: pruning failed: {one_line(exc)}", file=sys.stderr)
        return PruningError.exit_code
    except KeyboardInterrupt:
        print("automl-prune: interrupted", file=sys.stderr)
        return 130


def one_line(exc: Exception) -> str:
    """An error's message on one line (a message quoting a parser's multi-line text included)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _quiet_libraries() -> None:
    """Our own progress bars and messages only: no per-tensor bars from transformers."""
    logging.getLogger("automl_prune").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search's own bar reports trials


if __name__ == "__main__":
    sys.exit(main())
