"""Architecture rules, checked on the source with ``ast`` (nothing is imported).

Imports flow pipelines → transforms → operators; ``schemas`` is importable from anywhere and
imports only itself. ``operators`` and ``schemas`` never import Apache Beam; the kernels are
private to ``operators``; a Beam job never imports another job (shared code lives in helper
modules); files stay short; our modules form no import cycle.
"""

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "operators", "transforms", "pipelines")
ALLOWED: Dict[str, Set[str]] = {
    "schemas": {"schemas"},
    "operators": {"schemas", "operators"},
    "transforms": {"schemas", "operators", "transforms"},
    "pipelines": {"schemas", "operators", "transforms", "pipelines"},
}
MAX_LINES = 500
SIZE_CHECKED = ("operators", "transforms", "pipelines")


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to a dotted module name.

    Attributes:
        target: ``a.b.c`` for ``import a.b.c``; for ``from a.b import c`` the submodule
            ``a.b.c`` when it is one of ours, else ``a.b``.
        line: Line number in the importing file (function-local imports included).
    """

    target: str
    line: int


@dataclass(frozen=True)
class Module:
    """A parsed source file of ours."""

    name: str
    path: Path
    lines: int
    imports: Tuple[Import, ...]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.AST, module: str, is_package: bool, known: Set[str]) -> List[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in known else base)
    return targets


@functools.lru_cache(maxsize=None)
def modules() -> Dict[str, Module]:
    """Every ``.py`` file under our four packages, parsed once."""
    paths = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    known = {_module_name(p) for p in paths}
    out = {}
    for path in paths:
        name = _module_name(path)
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        imports = tuple(
            dict.fromkeys(
                Import(target, node.lineno)
                for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for target in _resolve(node, name, path.name == "__init__.py", known)
            )
        )
        out[name] = Module(name, path, len(source.splitlines()), imports)
    return out


def _where(module: Module, imp: Import) -> str:
    return f"{module.path.relative_to(ROOT)}:{imp.line} imports {imp.target}"


def _ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def _job_modules() -> Set[str]:
    """The Beam job modules: ``pipelines/*.py`` named in ``pipelines/cli.py``'s ``JOBS`` table
    (tools under ``pipelines/tools`` are not jobs and may call jobs)."""
    tree = ast.parse((ROOT / "pipelines" / "cli.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "JOBS" for t in targets) and isinstance(node.value, ast.Dict):
            entries = [ast.literal_eval(v).split(":")[0] for v in node.value.values]
            return {m for m in entries if m.count(".") == 1 and m.startswith("pipelines.")}
    raise AssertionError("pipelines/cli.py has no JOBS dict literal")


def test_sources_were_found():
    found = modules()
    for pkg in PACKAGES:
        assert any(name.split(".")[0] == pkg for name in found), f"no source files under {pkg}/"
    assert len(_job_modules()) >= 5


def test_imports_flow_pipelines_transforms_operators():
    bad = [
        _where(m, imp)
        for m in modules().values()
        for imp in m.imports
        if _ours(imp.target) and imp.target.split(".")[0] not in ALLOWED[m.name.split(".")[0]]
    ]
    assert not bad, "imports against pipelines → transforms → operators (schemas imports only schemas):\n" + "\n".join(bad)


def test_no_beam_in_operators_or_schemas():
    bad = [
        _where(m, imp)
        for m in modules().values()
        if m.name.split(".")[0] in ("operators", "schemas")
        for imp in m.imports
        if imp.target.split(".")[0] == "apache_beam"
    ]
    assert not bad, "operators/ and schemas/ must stay free of Apache Beam:\n" + "\n".join(bad)


def test_kernels_are_private_to_operators():
    bad = [
        _where(m, imp)
        for m in modules().values()
        if m.name.split(".")[0] != "operators"
        for imp in m.imports
        if imp.target == "operators.kernels" or imp.target.startswith("operators.kernels.")
    ]
    assert not bad, "operators.kernels is imported only by operators/ (use the operator that wraps it):\n" + "\n".join(bad)


def test_jobs_do_not_import_jobs():
    jobs = _job_modules()
    found = modules()
    bad = [
        _where(found[job], imp)
        for job in sorted(jobs & set(found))
        for imp in found[job].imports
        if imp.target in jobs and imp.target != job
    ]
    assert not bad, "a job module imports another job (move the shared code to a helper module):\n" + "\n".join(bad)


def test_files_stay_short():
    bad = [
        f"{m.path.relative_to(ROOT)}: {m.lines} lines"
        for m in modules().values()
        if m.name.split(".")[0] in SIZE_CHECKED and m.lines > MAX_LINES
    ]
    assert not bad, f"files over {MAX_LINES} lines (split them by concept):\n" + "\n".join(bad)


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycles():
    """Function-local imports count too: deferring an import hides a cycle, it does not remove it."""
    found = modules()
    graph = {
        name: {imp.target for imp in m.imports if imp.target in found and imp.target != name}
        for name, m in found.items()
    }
    cycles = _cycles(graph)
    assert not cycles, "import cycles among our modules:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_resolver_handles_relative_and_submodule_imports():
    known = {"operators.video.continual.base", "operators.video.continual.state", "operators.video.x3d"}
    relative = ast.parse("from .state import State").body[0]
    assert _resolve(relative, "operators.video.continual.base", False, known) == ["operators.video.continual.state"]
    parent = ast.parse("from .. import x3d").body[0]
    assert _resolve(parent, "operators.video.continual", True, known) == ["operators.video.x3d"]
    name = ast.parse("from operators.video.x3d import Net").body[0]
    assert _resolve(name, "pipelines.job", False, known) == ["operators.video.x3d"]
