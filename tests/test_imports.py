"""The package's modules import one another without a cycle and only downwards through the
layers ARCHITECTURE.md draws, counting the imports inside functions too (an import moved into a
function hides a cycle from Python, not from a reader)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "imagebuilder"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its code.

    ``from . import x`` names the module ``x`` when there is one, else the package itself.
    Importing ``a.b.c`` runs ``a/b/__init__.py`` first, so the packages on the way count too,
    except those the importer is inside of (they are being initialised already)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            else:
                continue
            for target in filter(files.__contains__, targets):
                graph[name] |= {parent for parent in ancestors(target) | {target}
                                if parent in files and parent != name
                                and not (name + ".").startswith(parent + ".")}
    return graph


def ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# The layers, lowest first: a package imports from its own layer or lower ones only.  Packages
# on one layer do not import each other.
LAYERS = (
    ("core", "schemas"),
    ("distros",),
    ("host",),
    ("image",),
    ("measure",),
    ("validate", "verify"),
    ("vm",),
    ("build",),
    ("commands",),
    ("cli",),
    ("__main__",),
)
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def room(module: str) -> str:
    """``imagebuilder.image.disk`` -> ``image``; the package itself is ``imagebuilder``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if room(target) != "imagebuilder" and room(module) != room(target)
                  and LAYER[room(target)] >= LAYER[room(module)])


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    assert "imagebuilder.build.container" in graph["imagebuilder.commands.build"]  # inside a function
    assert "imagebuilder.image.disk" in graph["imagebuilder.measure.predict"]  # from ..image.disk
    assert "imagebuilder.validate" in graph["imagebuilder.commands.validate"]  # runs its __init__
    assert "imagebuilder.validate" not in graph["imagebuilder.validate.checks"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert upward_arrows({"imagebuilder.image.disk": {"imagebuilder.build.kiwi"},
                          "imagebuilder.build.kiwi": {"imagebuilder.image.disk"}}) == \
        ["imagebuilder.image.disk -> imagebuilder.build.kiwi"]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_every_room_has_a_layer_and_says_its_one_job():
    rooms = {room(name) for name in import_graph()} - {"imagebuilder"}
    assert rooms == set(LAYER)
    for package in (PACKAGE / name for name in rooms if (PACKAGE / name).is_dir()):
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert docstring, f"{package.name}/__init__.py says nothing of its job"


def test_imports_point_only_down_the_layers():
    assert upward_arrows(import_graph()) == []


def test_only_the_cli_imports_the_verbs_and_only_verbs_use_click():
    graph = import_graph()
    importers = {module for module, targets in graph.items()
                 if any(room(target) == "commands" for target in targets) and room(module) != "commands"}
    assert importers == {"imagebuilder.cli"}
    # click is the verbs' layer; settings as data (build/settings.py) declares the build options.
    clicking = {module for module, path in ((module_name(path), path) for path in PACKAGE.rglob("*.py"))
                if "import click" in path.read_text()}
    assert {room(module) for module in clicking} <= {"commands", "cli", "build", "core"}
