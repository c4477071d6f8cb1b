"""fedutils' layers (docs/architecture.md): imports go only downward, never in a cycle, and no
module reaches into another module's private names. Read from the source with `ast`."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fedutils"
LAYERS = ["core", "loop", "techniques", "bridges", "course"]   # lowest first


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """1.. for the layers, len(LAYERS)+1 for the public facades. The package root (set_seed,
    quiet_native_logs) sits with core: every layer may import it, and it imports only core."""
    parts = module.split(".")
    if len(parts) == 1:
        return 1
    return LAYERS.index(parts[1]) + 1 if parts[1] in LAYERS else len(LAYERS) + 1


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported fedutils module, names imported from it, line) for every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("fedutils")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedutils"):
            names = [a.name for a in node.names]
            submodules = [n for n in names if (PACKAGE.parent / node.module.replace(".", "/")
                                               / f"{n}.py").exists()
                          or (PACKAGE.parent / node.module.replace(".", "/") / n).is_dir()]
            found.append((node.module, [n for n in names if n not in submodules], node.lineno))
            found += [(f"{node.module}.{n}", [], node.lineno) for n in submodules]
    return found


SOURCES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: {target for target, _, _ in imports(p)} - {m} for m, p in SOURCES.items()}


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_imports_only_go_down_the_layers(module):
    for target, _, line in imports(SOURCES[module]):
        assert layer(target) <= layer(module), (
            f"{SOURCES[module].relative_to(PACKAGE.parent)}:{line} imports {target}, a higher "
            f"layer ({LAYERS}); move the code down or invert the dependency")


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_module_imports_another_modules_private_names(module):
    for target, names, line in imports(SOURCES[module]):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        hidden = [t for t in target.split(".") if t.startswith("_")]
        assert not private and not hidden, (
            f"{SOURCES[module].relative_to(PACKAGE.parent)}:{line} imports private "
            f"{private or hidden} from {target}: make it public or keep it in one module")


def test_there_is_no_import_cycle():
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if target not in SOURCES:
                continue
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(SOURCES):
        if module not in state:
            visit(module, [module])


def test_the_check_sees_the_layers():
    """The test would pass vacuously if it parsed nothing: it must see the known edges."""
    assert "fedutils.core.checks" in GRAPH["fedutils.loop.fedavg"]
    assert layer("fedutils.loop.fedavg") > layer("fedutils.core.data")
    assert layer("fedutils.fedavg") > layer("fedutils.course.capstone")
    assert not any(m.split(".")[1:2] == ["_fastround"] for m in SOURCES)
