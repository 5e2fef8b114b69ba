"""The package's imports go one way, so there are no cycles and a newcomer can read it bottom up.

Argument checks and choice lists -> checkpoint files and processes -> data / models / losses / metrics ->
config and run folders -> the data a config asks for and the loop's pieces -> training loop -> stages ->
command line. A module may import its own package and lower layers only.
"""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bcl"

LAYERS = [
    {"bcl", "bcl._checks", "bcl._tensors", "bcl.choices"},
    {"bcl.checkpoints", "bcl.distributed", "bcl.provenance"},
    {"bcl.data", "bcl.samplers", "bcl.metrics", "bcl.models", "bcl.losses"},
    {"bcl.config", "bcl.runs", "bcl.tensorboard"},
    {"bcl.engine", "bcl.datasets"},
    {"bcl.training"},
    {"bcl.stages"},
    {"bcl.cli", "bcl.compare"},
    {"bcl.evaluate"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports() -> dict:
    """``{group: {imported group, ...}}`` over every import statement (module level or not) in bcl/."""
    found = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target == "bcl" or target.startswith("bcl."):
                    found[_group(module)].add(_group(target))
    return found


def _layer(group: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def test_every_package_has_a_layer():
    groups = {_group(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert groups == set().union(*LAYERS), "a new module needs a place in LAYERS"


def test_imports_only_go_down():
    upward = [f"{source} imports {target}" for source, targets in _imports().items() for target in targets
              if target != source and _layer(target) >= _layer(source)]
    assert not upward, upward
