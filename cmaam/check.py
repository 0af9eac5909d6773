"""Are these checkpoints mergeable? Same architecture, tensor names and shapes: ``python -m cmaam.check A B ...``.

Two models of different types (a text LLM and a VLM, LLaVA-OneVision and Qwen2-VL), or any two with ``--map
FILE.yaml``: the mapping summary of SOURCE onto TARGET (tensors mapped, kept from the target, source only,
vocabulary rows matched), what ``python -m cmaam.merge --source A --target B`` would merge.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import READ, ExecutionOptions, add_execution_options
from cmaam.merging.compatibility import check_compatibility


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="two or more model (or peft LoRA adapter) folders; "
                                                  "for a mapping: SOURCE TARGET")
    parser.add_argument("--map", default="auto", help="auto (models of different types are mapped layout onto "
                                                      "layout) or a YAML mapping file (SOURCE TARGET only)")
    add_execution_options(parser, READ)
    parser.add_argument("--limit", type=int, default=50, help="rows shown per kind of difference (default: 50)")
    return parser


def mapping_summary(source: str, target: str, map_spec: str, options: ExecutionOptions):
    """(mapping, None) of SOURCE onto TARGET when one is needed (different types, or a --map file); (None, reason)
    when the automatic mapping fails (the compatibility table then shows why); (None, None) for one type."""
    from cmaam.alignment.mapping import AUTO, build_mapping
    from cmaam.core.errors import CMAAMError
    from cmaam.io.adapters import open_model

    with open_model(source, options.allow_pickle, options.adapter_base) as source_reader, \
            open_model(target, options.allow_pickle, options.adapter_base) as target_reader:
        if map_spec == AUTO and source_reader.model_type == target_reader.model_type:
            return None, None
        if map_spec != AUTO:
            return build_mapping(source_reader, target_reader, map_spec), None
        try:
            return build_mapping(source_reader, target_reader), None
        except CMAAMError as error:
            return None, str(error)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = ExecutionOptions.from_args(args)
    reason = None
    if len(args.models) == 2:
        mapping, reason = mapping_summary(*args.models, args.map, options)
        if mapping is not None:
            print(mapping.table())
            print("mergeable over the mapping (python -m cmaam.merge --source SOURCE --target TARGET)")
            return 0
    elif args.map != "auto":
        from cmaam.core.errors import CMAAMError

        raise CMAAMError("--map takes exactly two models: SOURCE TARGET")
    report = check_compatibility(args.models, allow_pickle=options.allow_pickle, adapter_base=options.adapter_base)
    print(report.summary())
    if reason:
        print(f"no mapping either: {reason}")
    if report.differences:
        print()
        print(report.table(limit=args.limit))
    return 0 if report.compatible else 1


if __name__ == "__main__":
    run_cli(main)
