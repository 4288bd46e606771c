"""The project's layers, read from every file's imports (``ast``; nothing is imported or run).

From the ground up (docs/architecture.md): the ground (``GROUND``) imports no other project code;
``datasets/`` and ``backbone/`` import only the ground; ``models/`` the ground and ``backbone/``; the
trainer (``TRAINER``) those, and ``utils/args.py`` never the trainer's loop, the stacked engine or the
tools; ``utils/stacked/`` sits on the trainer and nothing in the ``utils/`` root imports it;
``longtail/`` uses the ground, the data and networks, and only the shared trainer pieces
(``LONGTAIL_SHARED``); ``utils/grid/`` and ``utils/summarize/`` are tools that nothing below imports;
entry points (``main.py``, ``main_lt.py``, ``benchmarks/``) may import anything.  Project imports sit at
the top of a module, and an import inside a function is only for an optional or heavy third-party
dependency (``LAZY_ALLOWED``).  No import circle anywhere.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Optional, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ("utils", "models", "backbone", "datasets", "longtail", "benchmarks", "main", "main_lt")
GROUND = {"errors", "registry", "seeding", "cli", "flags", "io", "buffer", "losses", "metrics", "amp", "guards",
          "runlock", "progress", "provenance", "devices", "seeds", "wandb_logger", "collapse"}
TRAINER = {"args", "best_args", "run_flags", "stream_args", "training", "stream_protocol", "callbacks", "cl_callbacks",
           "checkpoint", "entry"}
LONGTAIL_SHARED = {"entry", "callbacks", "checkpoint", "run_flags"}
# Imported inside functions on purpose: optional extras (plots, SLURM, wandb, sweep files), heavy readers that
# only some runs need (every module of a registry is imported when it is looked up), and a POSIX-only module.
LAZY_ALLOWED = {"matplotlib", "submitit", "wandb", "yaml", "sklearn", "torchvision", "PIL", "fcntl", "timm",
                "safetensors", "huggingface_hub"}
ALLOWED = {  # layer -> the layers it may import
    "ground": {"ground"},
    "datasets": {"ground", "datasets"},
    "backbone": {"ground", "backbone"},
    "models": {"ground", "backbone", "models"},
    "trainer": {"ground", "datasets", "backbone", "models", "trainer"},
    "stacked": {"ground", "datasets", "backbone", "models", "trainer", "stacked"},
    "longtail": {"ground", "datasets", "backbone", "longtail", "longtail-shared"},
    "tools": {"ground", "datasets", "backbone", "models", "trainer", "stacked", "tools"},
    "entry": {"ground", "datasets", "backbone", "models", "trainer", "stacked", "longtail", "longtail-shared",
              "tools", "entry"},
}


def project_sources(root: str = ROOT) -> Dict[str, str]:
    """module name -> source of every project file (tests excluded)."""
    sources = {}
    for top in PROJECT:
        if os.path.isfile(os.path.join(root, top + ".py")):
            sources[top] = open(os.path.join(root, top + ".py"), encoding="utf-8").read()
            continue
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), root)[:-3].replace(os.sep, ".")
                    module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                    sources[module] = open(os.path.join(folder, name), encoding="utf-8").read()
    return sources


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("main", "main_lt", "benchmarks"):
        return "entry"
    if parts[0] in ("datasets", "backbone", "models", "longtail"):
        return parts[0]
    if module == "utils":
        return "ground"  # the package itself: no code
    if len(parts) >= 2 and parts[1] in ("grid", "summarize"):
        return "tools"
    if len(parts) >= 2 and parts[1] == "stacked":
        return "stacked"
    if len(parts) == 2 and parts[1] in GROUND:
        return "ground"
    if len(parts) == 2 and parts[1] in TRAINER:
        return "trainer"
    return "unknown"  # a new file of the utils/ root must be given its layer here


def imports(source: str, modules: Set[str]) -> List[tuple]:
    """(imported name, line, at module level?) for every import in ``source``; a ``from P import N`` whose
    ``P.N`` is a project module names that module (``from utils.grid import claims`` -> ``utils.grid.claims``)."""
    tree = ast.parse(source)
    in_functions = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for sub in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, "the project uses absolute imports only"
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) not in in_functions) for name in dict.fromkeys(names)]
    return found


def resolve(name: str, modules: Set[str]) -> Optional[str]:
    """The project module an imported name lives in (``utils.io.atomic_writer`` -> ``utils.io``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def violations(sources: Dict[str, str]) -> List[str]:
    """Every broken rule, one line each (an empty list: the layers hold)."""
    modules = set(sources)
    problems = []
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for module, source in sources.items():
        mine = layer(module)
        if mine == "unknown":
            problems.append(f"{module}: not in any layer (add it to GROUND or TRAINER in tests/test_layers.py)")
            continue
        for name, line, at_top in imports(source, modules):
            if name.split(".")[0] not in PROJECT:
                if not at_top and name.split(".")[0] not in LAZY_ALLOWED:
                    problems.append(f"{module}:{line}: imports {name} inside a function (only optional "
                                    f"dependencies may: {', '.join(sorted(LAZY_ALLOWED))})")
                continue
            target = resolve(name, modules)
            if target is None:
                problems.append(f"{module}:{line}: imports {name}, which is not a project module")
                continue
            graph[module].add(target)
            if not at_top:
                problems.append(f"{module}:{line}: imports {target} inside a function (project imports sit at "
                                f"the top of a module)")
            theirs = layer(target)
            if mine == "longtail" and theirs == "trainer" and target.split(".")[-1] in LONGTAIL_SHARED:
                theirs = "longtail-shared"
            if theirs not in ALLOWED[mine]:
                problems.append(f"{module}:{line}: a {mine} module imports {target} ({theirs})")
            if module == "utils.args" and (target in ("utils.training", "utils.entry") or theirs in ("stacked", "tools")):
                problems.append(f"{module}:{line}: the parser imports {target}")
    problems += [f"import circle: {' -> '.join(cycle)}" for cycle in circles(graph)]
    return problems


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle for each strongly connected component with more than one module (or a self-import)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component) + [sorted(component)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph_sources: Dict[str, str], start: str) -> Set[str]:
    modules = set(graph_sources)
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name, _, _ in imports(graph_sources[module], modules):
            target = resolve(name, modules)
            if target is not None:
                todo.append(target)
    return seen


def test_the_layers_hold():
    problems = violations(project_sources())
    assert problems == [], "\n".join(problems)


def test_the_utils_root_holds_only_what_a_run_imports():
    """A file stays in the utils/ root only if ``python main.py`` imports it; tooling lives in packages.
    (The registries' modules are imported on lookup, and the stacked engine by main.py itself.)"""
    sources = project_sources()
    run = reachable(sources, "main")
    root_files = {m for m in sources if m.startswith("utils.") and m.count(".") == 1
                  and os.path.isfile(os.path.join(ROOT, *m.split(".")) + ".py")}
    assert root_files - run == set()


def with_file(module: str, source: str) -> Dict[str, str]:
    return {**project_sources(), module: source}


def test_an_upward_import_is_caught():
    """The checker itself: a method importing the trainer, a dataset importing a method, the ground importing
    the trainer, the utils/ root importing the stacked engine and an import circle are each reported."""
    assert any("models.bad" in p and "utils.training" in p
               for p in violations(with_file("models.bad", "from utils.training import build_run\n")))
    assert any("datasets.bad" in p for p in violations(with_file("datasets.bad", "import models.er\n")))
    assert any("utils.errors" in p for p in violations(with_file("utils.errors", "from utils import training\n")))
    assert any("utils.training" in p and "stacked" in p
               for p in violations(with_file("utils.training", project_sources()["utils.training"]
                                             + "from utils.stacked.trainer import run_seeds\n")))
    lazy = "def f():\n    from utils.errors import UserError\n"
    assert any("inside a function" in p for p in violations(with_file("models.lazy", lazy)))
    circle = with_file("utils.io", project_sources()["utils.io"] + "from utils.buffer import reservoir_slots\n")
    circle = {**circle, "utils.buffer": circle["utils.buffer"] + "from utils.io import atomic_writer\n"}
    assert any(p.startswith("import circle") for p in violations(circle))
