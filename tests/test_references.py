"""Every reference the code's own words make to the code resolves: a docstring or comment that names a
dotted ``pipeline`` module or name, a ``Class.attribute``, ``module.name`` or a ``.py`` file path
names something that exists.

Moved and renamed modules leave such references behind (a docstring pointing at a module that is
gone is a reader's dead end), and nothing else would catch them: they are words, not imports.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.dvc_graph import ROOT, _module_name, code_files

SCANNED = ("pipeline", "stages", "benchmarks", "tests")
DOTTED = re.compile(r"\b((?:pipeline|stages|benchmarks)(?:\.[A-Za-z_]\w*)+)")
# `Name.attr` or `module.name` inside backticks (RST or markdown): checked when Name is the project's.
QUALIFIED = re.compile(r"`+([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\(\))?`+")
PATH = re.compile(r"\b((?:pipeline|stages|benchmarks|tests)/[\w/-]*\.py)\b")
FILE_SUFFIXES = {"csv", "json", "yaml", "yml", "py", "png", "md", "npz", "pt", "lock", "db", "txt", "sh"}


def _texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring and comment of a Python file."""
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((node.body[0].lineno, doc))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.string))
    return found


@cache
def _project_modules() -> dict[str, Path]:
    files = set().union(*(code_files(ROOT / folder) for folder in SCANNED))
    return {_module_name(path): path for path in files}


@cache
def _top_level_names() -> dict[str, list[tuple[str, ast.AST]]]:
    """Name -> (module, node) for every class and function defined at a module's top level."""
    names: dict[str, list[tuple[str, ast.AST]]] = {}
    for module, path in _project_modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.setdefault(node.name, []).append((module, node))
    return names


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if module in _project_modules():
            target = importlib.import_module(module)
            for attribute in parts[cut:]:
                if not hasattr(target, attribute):
                    return False
                target = getattr(target, attribute)
            return True
    return False


def _class_has(node: ast.ClassDef, attribute: str, module: str) -> bool:
    cls = getattr(importlib.import_module(module), node.name, None)
    return cls is not None and (
        hasattr(cls, attribute) or attribute in getattr(cls, "__dataclass_fields__", {})
    )


@cache
def _params_keys() -> set[str]:
    """``section.key`` of params.yaml: words like `train.device` name params, not code."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {f"{s}.{k}" for s, section in params.items() if isinstance(section, dict) for k in section}


def _qualified_resolves(owner: str, attribute: str) -> bool | None:
    """None when `owner` is neither a project class nor a project module (not a package) by its last
    name, or when the pair is a params key or a file name."""
    if f"{owner}.{attribute}" in _params_keys() or attribute in FILE_SUFFIXES:
        return None
    modules = [
        m
        for m in _project_modules()
        if m.rsplit(".", 1)[-1] == owner
        and m.startswith("pipeline")
        and _project_modules()[m].name != "__init__.py"
    ]
    classes = [(m, n) for m, n in _top_level_names().get(owner, []) if isinstance(n, ast.ClassDef)]
    if not modules and not classes:
        return None
    if any(_class_has(node, attribute, module) for module, node in classes):
        return True
    return any(
        hasattr(importlib.import_module(m), attribute) or f"{m}.{attribute}" in _project_modules()
        for m in modules
    )


def _files() -> list[Path]:
    return sorted(set().union(*(code_files(ROOT / folder) for folder in SCANNED)))


def dead_references(files: list[Path] | None = None) -> list[str]:
    """Dead references in `files` (default: every file of the project), resolved against the project."""
    dead = []
    for path in _files() if files is None else files:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for line, text in _texts(path):
            for dotted in DOTTED.findall(text):
                if not _resolves(dotted.rstrip(".")):
                    dead.append(f"{where}:{line}: {dotted}")
            for owner, attribute in QUALIFIED.findall(text):
                if _qualified_resolves(owner, attribute) is False:
                    dead.append(f"{where}:{line}: {owner}.{attribute}")
            for relative in PATH.findall(text):
                if not (ROOT / relative).exists():
                    dead.append(f"{where}:{line}: {relative}")
    return dead


def test_every_reference_in_docstrings_and_comments_exists():
    dead = dead_references()
    assert not dead, "references to code that does not exist:\n" + "\n".join(dead)


@pytest.mark.parametrize(
    "text",
    [
        "see `pipeline.fast.FastSteps`",
        "decoded by `pipeline.labels.decode_label_map`",
        "copied into a device buffer (`train.LossLog`)",
        "`Trainer.no_such_method` does it",
        "written by pipeline/cyclegan/identity.py",
    ],
)
def test_a_dead_reference_is_caught(tmp_path, text):
    module = tmp_path / "probe.py"  # outside the project: the test above never sees it
    module.write_text(f'"""{text}"""\n')
    assert dead_references([module]), f"not caught: {text}"


def test_the_readme_layout_table_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") :]
    listed = set(re.findall(r"^\| `((?:pipeline|benchmarks)/[\w/]+\.py)`", table, re.MULTILINE))
    modules = {
        p.relative_to(ROOT).as_posix() for p in code_files(ROOT / "pipeline") if p.name != "__init__.py"
    }
    assert not {path for path in listed if not (ROOT / path).is_file()}, "listed but gone"
    assert modules - listed == set(), "modules missing from README's layout table"
