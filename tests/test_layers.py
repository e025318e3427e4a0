"""Every import points inward: the domain core at the bottom, the web layer above the services,
the app on top; and no two modules need each other.

Read from the source with ``ast``, imports inside functions included (a lazy import is still a
dependency, only a hidden one)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "waybill"

#: Lowest first. A module belongs to the most specific entry naming it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("domain core", ("waybill.tracking", "waybill.config")),
    (
        "data",
        (
            "waybill.models",
            "waybill.auth.models",
            "waybill.notify.models",
            "waybill.db",
            "waybill.errors",
            "waybill.catalogue",
        ),
    ),
    (
        "services",
        (
            "waybill.ingest",
            "waybill.eta",
            "waybill.observe",
            "waybill.orders",
            "waybill.devices",
            "waybill.notify",
            "waybill.auth",
            "waybill.realtime",
            "waybill.integrations",
            "waybill.watchdog",
        ),
    ),
    ("web", ("waybill.api", "waybill.pages", "waybill.security")),
    ("entry points", ("waybill", "waybill.app", "waybill.cli", "waybill.serve", "waybill.demo")),
]
SKIPPED = ("waybill.migrations",)  # alembic's scripts: they read the tables, nothing else


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.startswith(SKIPPED):
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ours that ``name`` imports (``from pkg import mod`` names ``pkg.mod``
    when that is a module, else ``pkg`` itself)."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            subs = [f"{module}.{alias.name}" for alias in node.names]
            targets = [s for s in subs if s in known] or [module]
        else:
            continue
        for target in targets:
            while target and target not in known:  # import a.b.c of a package a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, files) for name, path in files.items()}


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if layer_of(t) > layer_of(m)
    )


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import one another (Tarjan's strongly connected parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_of_a_higher_layer() -> None:
    assert upward_imports(import_graph()) == []


def test_no_two_modules_import_each_other() -> None:
    assert cycles(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        layer_of(module)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ({"ingest.py": "from waybill.api.merchant import bp\n"}, "upward"),
        ({"ingest.py": "def f():\n    from waybill.pages import bp\n"}, "upward"),
        (
            {"orders.py": "import waybill.devices\n", "devices.py": "from . import orders\n"},
            "cycle",
        ),
    ],
)
def test_the_checks_catch_an_upward_import_and_a_cycle(
    tmp_path: Path, source: dict[str, str], problem: str
) -> None:
    package = tmp_path / "waybill"
    for sub in ("", "api", "notify"):
        (package / sub).mkdir(parents=True, exist_ok=True)
        (package / sub / "__init__.py").write_text("")
    for name in ("ingest.py", "pages.py", "orders.py", "devices.py", "api/merchant.py"):
        (package / name).write_text(source.get(name, ""))
    graph = import_graph(package)
    if problem == "upward":
        assert upward_imports(graph)
    else:
        assert cycles(graph) == [["waybill.devices", "waybill.orders"]]
