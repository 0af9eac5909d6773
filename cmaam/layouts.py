"""``python -m cmaam.layouts MODEL``: show how a checkpoint's parameters are classified (check a rules file)."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.alignment.alphas.strategies import STRATEGIES, get_strategy
from cmaam.alignment.layouts.resolve import get_layout
from cmaam.core.cli import run_cli
from cmaam.core.options import READ, add_execution_options


def describe(model: str, model_type: str | None = None, rules_file: str | None = None,
             strategy: str = "layerwise", show_names: bool = False, allow_pickle: bool = False) -> str:
    """A text report: tensors and parameters per component, the alpha groups of ``strategy``, bridge outputs."""
    from cmaam.io.adapters import open_model

    reader = open_model(model, allow_pickle=allow_pickle)
    layout = get_layout(model_type, None if model_type or rules_file else reader.config, rules_file)
    names = reader.keys()
    infos = layout.classify_all(names)
    lines = [f"{model}: layout {layout.model_type!r} ({layout.description or 'user rules'}), {len(names)} tensors",
             f"{'component':<20} {'tensors':>8} {'parameters':>14}"]
    for component, count in layout.component_counts(names).items():
        numel = sum(reader.numel(name) for name, info in infos.items() if info.component == component)
        lines.append(f"{component:<20} {count:>8} {numel:>14,}")
    groups = get_strategy(strategy).groups(infos)
    lines.append(f"{strategy} groups ({len(groups)}): "
                 + ", ".join(f"{key} [{len(members)}]" for key, members in groups.items()))
    lines.append("bridge outputs: " + (", ".join(layout.bridge_outputs(names)) or "none"))
    lines.append(f"input embedding: {layout.input_embedding(names) or 'none'}")
    if show_names:
        lines += [f"{name}\t{info.component}\t{info.stack}\t{'' if info.layer is None else info.layer}"
                  for name, info in infos.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.layouts", description=__doc__)
    parser.add_argument("model", help="Hugging Face model folder")
    parser.add_argument("--model-type", help="built-in layout (default: from config.json)")
    parser.add_argument("--rules-file", help="YAML rule table for an architecture without a built-in layout")
    parser.add_argument("--strategy", choices=STRATEGIES, default="layerwise", help="alpha grouping to show")
    parser.add_argument("--names", action="store_true", help="also print every name with its classification")
    add_execution_options(parser, READ)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(describe(args.model, args.model_type, args.rules_file, args.strategy, args.names, args.allow_pickle))
    return 0


if __name__ == "__main__":
    run_cli(main)
