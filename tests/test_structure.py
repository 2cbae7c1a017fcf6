"""The layout the README describes: no import cycle among vaelab's modules (imports inside
functions included), and an entry point short enough to read as the story of a run."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_vaelab_modules(path: Path, known: set[str]) -> set[str]:
    """Every vaelab module ``path`` imports, at the top or inside a function; ``from a import b``
    counts as importing ``a.b`` when that is a module, else ``a``."""
    found = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def with_packages_entered(module: str, imports: set[str], known: set[str]) -> set[str]:
    """Importing ``a.b.c`` from outside package ``a.b`` first runs ``a/b/__init__.py``: an edge to
    that package too (from a module inside it, the package is already being imported)."""
    found = set(imports)
    for name in imports:
        parts = name.split(".")
        for end in range(1, len(parts)):
            package = ".".join(parts[:end])
            if package in known and not (module == package or module.startswith(package + ".")):
                found.add(package)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for p in SRC.rglob("*.py") if "conf" not in p.relative_to(SRC).parts]
    known = {module_name(p) for p in paths}
    graph = {}
    for p in paths:
        module = module_name(p)
        graph[module] = with_packages_entered(module, imported_vaelab_modules(p, known), known) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_importing_a_module_enters_its_package_from_outside_only():
    known = {"a", "a.b", "a.b.c", "a.b.d", "e"}
    assert with_packages_entered("e", {"a.b.c"}, known) == {"a", "a.b", "a.b.c"}
    assert with_packages_entered("a.b.d", {"a.b.c"}, known) == {"a.b.c"}


def test_no_import_cycle_in_vaelab_lazy_imports_included():
    graph = import_graph()
    assert "vaelab.checkpoints" in graph["vaelab.models.prior"]  # the finder sees real imports
    assert "vaelab.models" in graph["vaelab.config"]  # and the packages they enter
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("layer", ["vaelab.models", "vaelab.data", "vaelab.checkpoints", "vaelab.building"])
def test_lower_layers_do_not_import_the_command_line_layer(layer):
    graph = import_graph()
    for module, imports in graph.items():
        if module == layer or module.startswith(layer + "."):
            assert not imports & {"vaelab.training", "vaelab.eval"}, (module, imports)


def test_train_py_reads_as_one_story_under_200_lines():
    assert len((SRC / "vaelab" / "training.py").read_text().splitlines()) < 200


def vaelab_names_used(path: Path) -> list[tuple[str, str]]:
    """(module, name) for each ``from vaelab.m import name`` and each ``alias.name`` where
    ``import vaelab.m as alias``, anywhere in the file."""
    tree = ast.parse(path.read_text())
    aliases, used = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vaelab"):
            used += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name.startswith("vaelab")})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.append((aliases[node.value.id], node.attr))
    return used


@pytest.mark.parametrize("path", sorted((SRC.parent / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_the_benchmarks_use_only_names_that_exist(path):
    """The benchmarks run outside the suite: a name moved in vaelab must not break them unseen."""
    import importlib

    for module, name in vaelab_names_used(path):
        imported = importlib.import_module(module)
        assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), f"{path.name}: {module}.{name}"


def test_only_the_model_contract_imports_the_training_loop():
    """Models build on ``GenerativeModel`` (vaelab.models.base); the loop's internals are its own."""
    graph = import_graph()
    importers = {module for module, imports in graph.items() if "vaelab.loop" in imports}
    assert importers == {"vaelab.models.base"}, importers


def test_a_model_cannot_override_the_loop():
    from vaelab.models import VAE

    with pytest.raises(TypeError, match="overrides the training loop's training_step"):
        type("Custom", (VAE,), {"training_step": lambda self, batch, batch_idx: None})


def hasattr_calls(path: Path) -> list[str]:
    """The source of every ``hasattr(...)`` and ``getattr(..., default)`` call in ``path``: both ask
    whether an object has a part."""
    text = path.read_text()
    return [
        ast.get_source_segment(text, node)
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and (node.func.id == "hasattr" or (node.func.id == "getattr" and len(node.args) == 3))
    ]


def test_nothing_outside_the_models_asks_hasattr_about_a_model():
    """Model families are told apart by the protocols of vaelab.models.base (LatentVariableModel,
    CodebookModel), not by asking whether a model has some part."""
    model_words = {"model", "pl_module", "module", "cls", "model_class"}
    for path in sorted((SRC / "vaelab").rglob("*.py")):
        if "models" in path.relative_to(SRC).parts or path.name == "loop.py":
            continue
        for call in hasattr_calls(path):
            subject = call.split("(", 1)[1].split(",")[0]
            assert not model_words & set(subject.split(".")), f"{path.name}: {call}"


def test_the_readme_stays_a_way_in():
    """Under 200 lines; the rest lives in docs/ and is linked from it."""
    readme = (SRC.parent / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for doc in sorted((SRC.parent / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"README.md does not link docs/{doc.name}"
