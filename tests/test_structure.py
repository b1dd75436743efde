"""The package's shape: imports flow one way (no cycle, function-level imports counted), the registry at the
bottom imports nothing of flaxzoo, the command line is imported by nothing, and a model is one file."""

import ast
from pathlib import Path

import flaxzoo
from flaxzoo.zoo import specs

PACKAGE = Path(flaxzoo.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The flaxzoo modules ``name`` imports anywhere in its source (a function's body included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            # `from flaxzoo import graph` imports the module flaxzoo.graph; `from flaxzoo.graph import trace` flaxzoo.graph
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name, path):
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[name] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def test_no_import_cycle_among_flaxzoo_modules():
    cycle = find_cycle()
    assert cycle is None, " -> ".join(cycle)


def test_the_registry_imports_nothing_of_flaxzoo_and_nothing_imports_the_cli():
    assert GRAPH["flaxzoo.registry"] == set()
    assert [name for name, deps in GRAPH.items() if "flaxzoo.cli" in deps] == []


def test_every_model_is_one_model_file_and_its_mirror_modules_are_generated():
    """Constructors are the registry's; no flaxzoo module outside models/ names a model."""
    model_files = {p.stem for p in (PACKAGE / "models").glob("*.py")} - {"__init__", "common"}
    assert {spec.constructor.__code__.co_filename for spec in specs()} == {str(PACKAGE / "models" / "common.py")}
    for spec in specs():
        assert spec.family.module.__module__.rpartition(".")[2] in model_files
        for keras_module in spec.keras_modules:
            assert not (PACKAGE / f"{keras_module}.py").exists(), f"{keras_module}.py: mirror modules are generated"
            assert getattr(getattr(flaxzoo, keras_module), spec.keras_name) is spec.constructor

