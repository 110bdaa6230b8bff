"""The packages of `pipeline` form layers, each importing only from itself and the layers below it, and
no module imports itself back through others.

    core -> data -> cyclegan -> judge -> scoring -> report -> tracking -> orchestration

`core` holds the foundations every stage shares; `data` the dataset; `cyclegan` and `judge` the two
trained models (the judge never needs a generator); `scoring` scores translations with the judge;
`report` turns scores into tables. `tracking` records all of it in MLflow (the recording layer, which
no computing code imports: that is what keeps it out of every stage's DVC code deps) and
`orchestration` runs it (Prefect, DVC commands). Entry points (`stages/`) sit on top of everything.
Imports are read from the code (`tests.dvc_graph.direct_imports`, lazy ones included).
"""

from __future__ import annotations

from pathlib import Path

from tests.dvc_graph import ROOT, _module_name, code_files, direct_imports

LAYERS = ("core", "data", "cyclegan", "judge", "scoring", "report", "tracking", "orchestration")


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pipeline" else None


def modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(code_files(ROOT / "pipeline"))}


def test_every_package_is_a_layer():
    assert {_layer(name) for name in modules()} - {None} == set(LAYERS)


def test_packages_import_only_their_own_layer_and_those_below():
    upward = []
    for name, path in modules().items():
        own = _layer(name)
        if own is None:
            continue
        for target in direct_imports(path):
            theirs = _layer(target)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(own):
                upward.append(f"{name} imports {target} ({own} -> {theirs})")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_back():
    graph = {
        name: {t for t in direct_imports(path) if t in modules() and not t.endswith("__init__")} - {name}
        for name, path in modules().items()
    }
    # Package __init__ modules are parents, not dependencies: leave them out of the edges.
    graph = {
        name: {t for t in targets if not (ROOT / t.replace(".", "/")).is_dir()}
        for name, targets in graph.items()
    }
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
