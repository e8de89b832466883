"""The module import graph of the packages and the benchmark scripts is one-way (no cycles), and the layering
rules hold: ``calibration`` uses only compressor's base modules, and only ``compressor/cli.py`` imports
``exporters`` from inside ``compressor``. Every import counts, also the ones inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compressor", "exporters", "calibration")
#: compressor modules that calibration may import
CALIBRATION_MAY_USE = {"compressor", "compressor.core.errors", "compressor.core.assets", "compressor.core.io"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "benchmarks":  # scripts import each other as top-level modules (sys.path[0] is benchmarks/)
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> modules it imports (only modules of this repository)."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + list((ROOT / "benchmarks").glob("*.py"))
    names = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = here.split(".")
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # `from pkg import module` imports the module; `from pkg import name` imports pkg
                targets = [t for t in subs if t in names] or [base]
                targets += [base] if any(t not in names for t in subs) else []
            for t in targets:
                while t and t not in names:  # "a.b.c" -> the longest prefix that is one of our modules
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_package_init(graph: dict[str, set[str]], name: str) -> bool:
    return any(other.startswith(name + ".") for other in graph)


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of concerns; drop those edges.
    pruned = {m: {d for d in deps if not (_is_package_init(graph, m) and d.startswith(m + "."))}
              for m, deps in graph.items()}
    assert find_cycles(pruned) == []


def test_calibration_uses_only_base_modules():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("compressor") and d not in CALIBRATION_MAY_USE)
           for m, deps in graph.items() if m.startswith("calibration")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_only_the_cli_imports_exporters():
    graph = import_graph()
    bad = sorted(m for m, deps in graph.items()
                 if m.startswith("compressor") and m != "compressor.cli" and any(d.startswith("exporters") for d in deps))
    assert bad == []


#: the layers of the packages, lowest first: a module imports only its own layer and the ones below
#: (``exporters`` sits on the side: it may use the foundation, modeling and evaluation, never the algorithm or the job)
LAYERS = (
    ("compressor.core",),
    ("calibration",),
    ("compressor.modeling",),
    ("compressor.evaluation",),
    ("compressor.algorithm",),
    ("compressor.job",),
    ("compressor.commands", "compressor.cli"),
    ("compressor",),  # the package's __init__: the public names, imported lazily from every layer
)
EXPORTERS_MAY_USE = ("compressor.core", "calibration", "compressor.modeling", "compressor.evaluation", "compressor")


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def test_packages_import_one_way():
    """foundation <- calibration <- modeling <- evaluation <- algorithm <- job <- CLI: no module imports a layer
    above its own."""
    graph = import_graph()
    up = sorted(f"{m} -> {d}" for m, deps in graph.items() if _layer(m) is not None
                for d in deps if _layer(d) is not None and _layer(d) > _layer(m)  # type: ignore[operator]
                and not (m.startswith("compressor.cli") and d.startswith("exporters")))
    assert up == []
    # every compressor module belongs to a layer (a new top-level module has to pick one)
    assert sorted(m for m in graph if m.startswith("compressor.") and _layer(m) in (None, len(LAYERS) - 1)) == []


def test_exporters_use_only_the_lower_layers():
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith("exporters")
                 for d in deps if d.startswith(("compressor", "calibration"))
                 and _layer(d) not in {_layer(p) for p in EXPORTERS_MAY_USE})
    assert bad == []
