"""Each DVC stage's code, computed from the code itself: the import closure of its entry point, less
the recording layer.

A stage's entry point is the module its ``cmd`` runs (``python -m stages.<name>``). Its closure is
every project module that running it can import: the modules named by every ``import`` statement
anywhere in a module (functions' lazy imports included, since they run too), each package's
``__init__`` on the way, recursively, except the recording layer (`RECORDING`).

The recording layer is the one exclusion, and why: `pipeline.tracking` records how a result came about
(MLflow runs, tags, parents, process liveness, profile names). An entry point imports it only to build
the `Recorder` it hands its computing code (`pipeline.core.recording`), which tells the recorder what
happened and never reads anything back, and no computing module imports it (`tests/test_layers.py`).
So no output can depend on it: `tests/test_outputs.py` shows every stage's outputs byte-identical with
and without it. Leaving it (and what only it imports) out of the deps is what keeps an edit to MLflow
code from re-running training.

`tests/test_dvc_graph.py` holds ``dvc.yaml`` to these closures; run this module to print each stage's
closure as ``dvc.yaml`` code deps (a folder stands for its files when every one of them is in the
closure), or rewrite them in place:

    .venv/bin/python -m tests.dvc_graph            # print
    .venv/bin/python -m tests.dvc_graph --write    # replace each stage's pipeline/ and stages/ deps
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")  # the project's importable code; anything else is a dependency
RECORDING = "pipeline.tracking"  # the recording layer: never a stage's code dep (see the module docstring)


def is_recording(module: str) -> bool:
    return module == RECORDING or module.startswith(f"{RECORDING}.")


def module_file(module: str) -> Path | None:
    """The file of a project module (a package's `__init__.py`), None if it is not one."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """Project modules imported anywhere in the file at `path` (with their parent packages)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.update(_with_parents(target))
            # `from package import name`: name may be a submodule.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return frozenset(m for m in found if module_file(m) is not None)


def closure(entry: str, recording: bool = False) -> set[Path]:
    """Files of every project module that importing module `entry` can import, transitively; without
    the recording layer and what only it imports, unless `recording`."""
    todo, seen = list(_with_parents(entry)), set()
    while todo:
        module = todo.pop()
        path = module_file(module)
        if path is None or path in seen or (is_recording(module) and not recording):
            continue
        seen.add(path)
        todo.extend(direct_imports(path))
    return seen


def stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """The stage definitions of dvc.yaml (unexpanded: a foreach/matrix stage's template is `do`/itself)."""
    definitions = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in definitions.items()}


def entry_module(stage: dict) -> str:
    match = re.search(r"python -m (stages\.\w+)", " ".join(str(stage["cmd"]).split()))
    if not match:
        raise ValueError(f"cmd does not run a stages.<name> module: {stage['cmd']!r}")
    return match[1]


def code_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def expand(dep: str) -> set[Path]:
    """The code files a dvc.yaml dep stands for (a file, or every .py file under a folder)."""
    path = ROOT / dep
    return code_files(path) if path.is_dir() else {path}


def suggested_deps(files: set[Path]) -> list[str]:
    """`files` as dvc.yaml deps: the largest folders wholly inside `files`, then the other files."""
    folders = sorted(
        {p.parent for p in files for p in [p]} | {q for p in files for q in p.parents if ROOT in q.parents},
        key=lambda folder: len(folder.parts),
    )
    chosen: list[Path] = []
    for folder in folders:
        if any(parent in chosen for parent in folder.parents):
            continue
        if code_files(folder) <= files:
            chosen.append(folder)
    covered = set().union(*(code_files(folder) for folder in chosen)) if chosen else set()
    deps = [f.relative_to(ROOT).as_posix() for f in chosen] + [
        f.relative_to(ROOT).as_posix() for f in files - covered
    ]
    return sorted(deps)


def drift(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict[str, list[str]]]:
    """Per stage whose code deps differ from its closure: the modules it imports that no dep covers
    (`missing`, stale results go unnoticed) and the code deps it does not import (`extra`, needless
    reruns). {} when dvc.yaml follows the code."""
    problems = {}
    for name, stage in stages(dvc_yaml).items():
        needed = closure(entry_module(stage))
        listed = [str(dep) for dep in stage.get("deps") or [] if is_code(str(dep))]
        covered = set().union(*(expand(dep) for dep in listed)) if listed else set()
        extra = [dep for dep in listed if not expand(dep) <= needed]
        missing = needed - covered
        if missing or extra:
            problems[name] = {
                "missing": sorted(p.relative_to(ROOT).as_posix() for p in missing),
                "extra": sorted(extra),
            }
    return problems


def rewrite_code_deps(text: str, deps: dict[str, list[str]]) -> str:
    """dvc.yaml `text` with each stage's code deps (list items under `deps:` naming pipeline/ or
    stages/) replaced by `deps[stage]`, placed first; comments and everything else stay."""
    lines = text.splitlines()
    out: list[str] = []
    stage, indent, in_deps = None, 0, False
    for line in lines:
        stripped = line.strip()
        head = re.fullmatch(r"  (\w[\w-]*):\s*", line)
        if head:
            stage, in_deps = head[1], False
        if in_deps:
            item = re.fullmatch(r"(\s*)- (\S+)", line)
            if item and len(item[1]) == indent:
                if is_code(item[2]):
                    continue
            elif stripped and not stripped.startswith("#") and len(line) - len(line.lstrip()) < indent:
                in_deps = False
        out.append(line)
        if stripped == "deps:" and stage in deps:
            indent = len(line) - len(line.lstrip()) + 2
            in_deps = True
            out += [f"{' ' * indent}- {dep}" for dep in deps[stage]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = {name: suggested_deps(closure(entry_module(stage))) for name, stage in stages().items()}
    if argv == ["--write"]:
        path = ROOT / "dvc.yaml"
        path.write_text(rewrite_code_deps(path.read_text(), wanted))
        print(f"rewrote the code deps of {len(wanted)} stages in {path}")
        return 0
    for name, deps in wanted.items():
        print(f"{name}:")
        print("\n".join(f"  - {dep}" for dep in deps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
