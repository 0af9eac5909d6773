"""The layers of cmaam import only downwards: core <- io <- merging <- alignment; eval and finetune stay out.

Every module under cmaam/ is parsed (nothing is imported), and every import statement is checked,
also those inside functions, plus ``importlib.import_module("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cmaam"

# layer -> the cmaam layers it may import (itself included). The root package ``cmaam`` (its __init__ holds
# only the start-up Ctrl-C handler) is not a layer and may be imported by all.
ALLOWED = {
    "core": {"core"},
    "io": {"core", "io"},
    "merging": {"core", "io", "merging"},
    "alignment": {"core", "io", "merging", "alignment"},
}
# layers that must never import the application packages eval/ and finetune/
LIBRARY = ("core", "io", "merging", "alignment", "testing")

# Known breaks, each to be removed by the change that fixes it (the test fails while an entry is stale).
# merging/sweep.py reuses alignment's pair_jobs/interpolate and the analyzer's check_pair: the streaming
# executor rewrite (issue 11) moves these pieces down into merging.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    """The dotted name of a file under the repository root (cmaam/io/reader.py -> cmaam.io.reader)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "import_module")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def layer_of(path: Path) -> str | None:
    """The subpackage a file lies in (``io`` for cmaam/io/reader.py); None for the commands at the top."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


MODULES = sorted(PACKAGE.rglob("*.py"))


def violations() -> tuple[list[str], set[tuple[str, str]]]:
    problems, known = [], set()
    for path in MODULES:
        module = module_name(path)
        layer = layer_of(path)
        for line, imported in imported_names(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported}"
            top = imported.split(".")[0]
            if layer in LIBRARY and top in ("eval", "finetune"):
                problems.append(where + f" (the {layer} layer never imports eval or finetune)")
            if layer in ALLOWED and top == "cmaam" and imported != "cmaam":
                target = imported.split(".")[1]
                if target not in ALLOWED[layer]:
                    if (module, imported) in KNOWN_VIOLATIONS:
                        known.add((module, imported))
                    else:
                        problems.append(where + f" ({layer} may import only {', '.join(sorted(ALLOWED[layer]))})")
    return problems, known


def test_the_scan_sees_every_module_and_nested_imports():
    names = {module_name(path) for path in MODULES}
    assert {"cmaam.core.cli", "cmaam.io.reader", "cmaam.merging.executor", "cmaam.alignment.merge"} <= names
    # imports inside functions count: lora_vqa imports cmaam.io.processors inside save_outputs
    nested = imported_names(PACKAGE.parent / "finetune" / "lora_vqa.py")
    assert any(name == "cmaam.io.processors" for _, name in nested)


def test_library_layers_import_only_downwards_and_never_eval_or_finetune():
    problems, _ = violations()
    assert not problems, "layer rules broken:\n" + "\n".join(problems)


def test_eval_and_finetune_do_not_import_the_test_scaffolding():
    """cmaam.testing builds tiny models for tests and the demo; applications must not depend on it."""
    problems = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}"
                for folder in ("eval", "finetune") for path in sorted((PACKAGE.parent / folder).rglob("*.py"))
                for line, name in imported_names(path) if name.startswith("cmaam.testing")]
    assert not problems, "\n".join(problems)


def test_known_violations_are_not_stale():
    _, known = violations()
    assert known == KNOWN_VIOLATIONS, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(KNOWN_VIOLATIONS - known)}"


@pytest.mark.parametrize("source, expected", [
    ("import eval.vqa\n", "never imports eval or finetune"),
    ("def f():\n    from finetune.data import x\n", "never imports eval or finetune"),
    ("def f():\n    import importlib\n    importlib.import_module('eval.mgsm')\n", "never imports eval or finetune"),
    ("from cmaam.search import fitness\n", "io may import only core, io"),
])
def test_a_broken_rule_is_caught(tmp_path, monkeypatch, source, expected):
    """A module planted in a copy of the io layer is reported with its line and rule."""
    fake = tmp_path / "cmaam"
    (fake / "io").mkdir(parents=True)
    (fake / "io" / "planted.py").write_text(source, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", [fake / "io" / "planted.py"])
    problems, _ = violations()
    assert len(problems) == 1 and "cmaam/io/planted.py:" in problems[0] and expected in problems[0]
