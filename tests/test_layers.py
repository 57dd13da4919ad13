"""The package's layers, checked: every import points down (or sideways inside one package), and none is a cycle.

DESIGN.md draws the same picture. Imports inside functions count too: hiding one side of a cycle in a function
still makes a cycle, and so does an ``if TYPE_CHECKING:`` import (a type is a dependency too). The device runner's
closure leaves those out, as they never run there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each importable package of the project lives (cli/ and calibration/ sit at the top of the repository).
SOURCES = {
    "resnet_edge": ROOT / "resnet_edge",
    "resnet_edge.cli": ROOT / "cli",
    "resnet_edge.calibration": ROOT / "calibration",
}

# Bottom to top. A module may import from its own layer's package and from the layers below; layers that share a rank
# are independent of each other.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_exports"),
    ("jsonable", "formatting", "timing", "memory", "artifacts", "progress"),
    ("schema",),  # typed JSON documents (report.json, the calibration record), written through jsonable
    ("calibration",),
    ("onnx", "models"),
    ("environment",),  # reports the providers that load, from onnx.runtime
    ("quantization",),
    ("training",),  # reads the INT8 recipes (quantization/configs.py) for quantization-aware training
    ("conversion",),
    ("evaluation",),
    ("device",),
    ("pipeline",),
    ("cli",),
]
RANK = {layer: rank for rank, names in enumerate(LAYERS) for layer in names}
# The device runner ships alone to devices without torch or onnx: exactly these modules, nothing else of ours.
RUNNER_CLOSURE = {
    "resnet_edge.device.runner",
    "resnet_edge.device.facts",
    "resnet_edge.device.protocol",
    "resnet_edge.onnx.op_types",
    "resnet_edge.onnx.openvino_runtime",
    "resnet_edge.onnx.placement",
    "resnet_edge.onnx.plugins",
    "resnet_edge.onnx.providers",
    "resnet_edge.onnx.runtime",
    "resnet_edge.timing",
    "resnet_edge.errors",
}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, modules: dict[str, Path], *, type_hints: bool = True) -> set[str]:
    """The project modules that ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set() if type_hints else _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from package import module" names a module; "from module import name" names the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "resnet_edge"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


@pytest.fixture(scope="module")
def runtime_graph() -> dict[str, set[str]]:
    """The imports that run (``if TYPE_CHECKING:`` ones left out)."""
    modules = project_modules()
    return {name: imports_of(name, path, modules, type_hints=False) for name, path in modules.items()}


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if m != "resnet_edge" and layer_of(m) not in RANK)
    assert not unplaced, f"modules in no layer (add them to LAYERS and DESIGN.md): {unplaced}"


def test_imports_point_down(graph: dict[str, set[str]]) -> None:
    upward = []
    for source, targets in graph.items():
        if source == "resnet_edge":
            continue
        for target in targets:
            if target == "resnet_edge":  # the version string
                continue
            a, b = layer_of(source), layer_of(target)
            if a != b and (RANK[b] > RANK[a] or (RANK[b] == RANK[a])):
                upward.append(f"{source} -> {target}")
    assert not upward, "imports that point up or sideways between layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_device_runner_imports_only_what_it_ships(runtime_graph: dict[str, set[str]]) -> None:
    reached, todo = set(), ["resnet_edge.device.runner"]
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        todo.extend(t for t in runtime_graph[module] if t != "resnet_edge")
    assert reached == RUNNER_CLOSURE


def test_a_planted_upward_import_is_caught(tmp_path: Path) -> None:
    """The checker itself: an import from a lower layer into a higher one is found."""
    fake = tmp_path / "graph.py"
    fake.write_text("def f():\n    from resnet_edge.pipeline import run\n")
    modules = project_modules()
    found = imports_of("resnet_edge.onnx.graph", fake, modules)
    assert "resnet_edge.pipeline.run" in found
    assert RANK[layer_of("resnet_edge.pipeline.run")] > RANK[layer_of("resnet_edge.onnx.graph")]


# Third-party libraries each layer may not import, anywhere in its modules (DESIGN.md's "no torch", "no onnx").
FORBIDDEN_LIBRARIES = {
    "foundation": (
        {"errors", "_exports", "jsonable", "formatting", "timing", "memory", "artifacts", "progress", "schema"},
        {"torch", "onnx", "onnxsim"},
    ),
    "onnx": ({"onnx"}, {"torch", "torchvision"}),
    "models": ({"models"}, {"onnx", "onnxruntime", "onnxsim"}),
    "training": ({"training"}, {"onnx", "onnxruntime", "onnxsim"}),
}
# Modules the CLI reads at start-up: not even numpy at module level.
LIGHT_MODULES = (
    "resnet_edge.quantization.configs",
    "resnet_edge.conversion.options",
    "resnet_edge.evaluation.options",
    "resnet_edge.models.options",
    "resnet_edge.models.registry",
    "resnet_edge.training.options",
)
HEAVY = {"torch", "onnx", "onnxruntime", "onnxsim", "numpy"}


def _libraries(path: Path, *, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_lines(tree)
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN_LIBRARIES))
def test_layers_keep_off_the_libraries_they_must_not_need(layer: str) -> None:
    layers, forbidden = FORBIDDEN_LIBRARIES[layer]
    offenders = {
        name: sorted(_libraries(path) & forbidden)
        for name, path in project_modules().items()
        if layer_of(name) in layers and _libraries(path) & forbidden
    }
    assert not offenders, f"{layer} imports {offenders}"


def test_the_modules_the_cli_reads_at_start_up_import_no_heavy_library() -> None:
    modules = project_modules()
    heavy = {name: sorted(_libraries(modules[name], module_level_only=True) & HEAVY) for name in LIGHT_MODULES}
    assert not any(heavy.values()), heavy
