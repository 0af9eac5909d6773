"""Console commands (``cmaam-merge``, ``cmaam-eval-mgsm``, ...), installed by ``[project.scripts]``.

Each runs its module's ``main`` through run_cli, exactly as ``python -m MODULE`` does. The module is
imported only when the command starts, so this file stays cheap and imports no layer of the library.
"""

from __future__ import annotations

import importlib
from typing import Callable, NoReturn

def command(module: str) -> Callable[[], NoReturn]:
    """The console entry point of ``module``: import it, then ``run_cli(module.main)`` on sys.argv."""

    def run() -> NoReturn:
        from cmaam.core.cli import run_cli

        run_cli(importlib.import_module(module).main)

    run.__name__ = run.__qualname__ = module.replace(".", "_")
    run.__doc__ = f"``python -m {module.removesuffix('.__main__')}`` as a console command."
    run.module = module  # what the command runs (tests check it)
    return run


merge = command("cmaam.merge")
sweep = command("cmaam.sweep")
mergekit = command("cmaam.mergekit")
moe = command("cmaam.moe")
check = command("cmaam.check")
soups = command("cmaam.soups")
compare = command("cmaam.compare")
monitor = command("cmaam.monitor")
experiment = command("cmaam.experiment")
evolve = command("cmaam.evolve")
layouts = command("cmaam.layouts")
extract_lora = command("cmaam.extract_lora")
tiny = command("cmaam.tiny")
reproducible = command("cmaam.reproducible")
eval_mgsm = command("eval.mgsm.__main__")
eval_vqa = command("eval.vqa.__main__")
finetune = command("finetune.lora_vqa")
synthetic_vqa = command("finetune.synthetic_vqa")
prepare_vqa = command("finetune.data_prep")
