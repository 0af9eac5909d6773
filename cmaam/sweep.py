"""``python -m cmaam.sweep``: linear-alpha baselines, one merged model per alpha from a single read of S and T."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import ExecutionOptions
from cmaam.merge import add_common_arguments
from cmaam.merging.sweep import sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.sweep", description=__doc__.split(":", 1)[1].strip())
    add_common_arguments(parser)
    parser.add_argument("--alphas", required=True, help="comma-separated alphas in [0, 1], e.g. 0.3,0.5,0.7")
    parser.add_argument("--output-dir", required=True, help="writes OUTPUT_DIR/alpha_<a> for each alpha")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cmaam.alignment.mapping import layout_mapper

    outputs = sweep(args.source, args.target, args.output_dir, args.alphas, ExecutionOptions.from_args(args),
                    interp=args.interp, mapper=layout_mapper(args.map))
    for output in outputs:
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
