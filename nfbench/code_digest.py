"""The code a result depends on, as one digest: import-following over the nfbench package.

Run identity (:mod:`nfbench.pipeline.identity`) and the trained-stage cache
(:class:`nfbench.methods.cnf.stage.StageCache`) both key on :func:`code_digest`: starting from
some modules (a method's package and the experiment driver; a stage's own module), every
``nfbench.*`` import (absolute or relative, at module level or inside a function) is followed
transitively, parent packages' ``__init__`` included, since importing a module runs them
(a module-level ``__getattr__``'s lazy imports excepted: they run on attribute access). So
an edit in any module that code reaches (``methods/base.py``, ``cnf/encoder.py``,
``backbones.py``, ...) changes the digest without a hand-written file list to keep up to date,
and a module nothing imports does not.

Each module is hashed as its normalised syntax tree (``ast.dump`` without line numbers, with
docstrings removed), so docstring and comment edits and reformatting keep the digest, while
any change of what runs changes it. Imports by name in a string (``importlib.import_module``,
the method registry's built-in list) are not followed: the registry loads every method, but
a run executes only its own.

Per-category data shipped beside a module (``*.yaml``, :mod:`nfbench.methods.package_data`, e.g.
CLS-CNFs' original ``w`` per category) is part of the code: the parsed content of every such
file in the folder of a module in the closure is hashed too (comments do not count).

Modules whose effect on a result is already part of the identity, or that do not compute
results, are not followed (:data:`NOT_FOLLOWED`): the spec, params, settings and plan code
(a run's identity holds the resolved config they produce), the record's writer, the
execution, runner and identity code itself, the CLI and the reports.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

import yaml

import nfbench

PACKAGE = Path(nfbench.__file__).resolve().parent

#: Modules (and packages, with everything under them) whose edits never change a result:
#: they resolve settings into the config (hashed as such), run, record or report runs.
NOT_FOLLOWED = ("nfbench.pipeline.plan", "nfbench.pipeline.spec",
                "nfbench.pipeline.spec_validation", "nfbench.pipeline.spec_types",
                "nfbench.pipeline.params", "nfbench.pipeline.params_validation",
                "nfbench.pipeline.settings", "nfbench.pipeline.record",
                "nfbench.pipeline.execution", "nfbench.pipeline.identity",
                "nfbench.pipeline.runner", "nfbench.pipeline.ray_executor",
                "nfbench.pipeline.tables", "nfbench.pipeline.check", "nfbench.pipeline.results",
                "nfbench.pipeline.cost", "nfbench.pipeline.decision",
                "nfbench.code_digest", "nfbench.cli", "nfbench.report", "nfbench.peers",
                "nfbench.progress")


def _read_source(path: Path) -> str:
    """The text of a source file (a seam for tests)."""
    return path.read_text(encoding="utf-8")


def module_path(name: str) -> Path | None:
    """The file of module ``nfbench...`` ``name`` (a package: its ``__init__.py``), or None."""
    parts = name.split(".")
    if parts[0] != "nfbench":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _followed(name: str) -> bool:
    return not any(name == skip or name.startswith(skip + ".") for skip in NOT_FOLLOWED)


def _imports(name: str, tree: ast.AST) -> set[str]:
    """The nfbench module names that module ``name`` imports (and their parent packages)."""
    is_package = module_path(name) is not None and module_path(name).name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk_not_lazy(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    modules = set()
    for full in found:
        parts = full.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            candidate = ".".join(parts[:i])
            if module_path(candidate) is not None:
                modules.add(candidate)
    return modules


#: Module-level functions whose imports are lazy attributes of the module (PEP 562): they run
#: when someone reads such an attribute (``nfbench.load_detector``), not when the module is
#: imported, and code that reads one imports the module behind it itself
#: (``from nfbench.artifacts import ...``), which is followed there.
LAZY_HOOKS = ("__getattr__", "__dir__")


def _walk_not_lazy(tree: ast.AST):
    """``ast.walk`` of ``tree`` without the bodies of its module-level :data:`LAZY_HOOKS`:
    a package ``__init__`` that every module of the package runs does not drag the modules
    of its lazy attributes into every closure."""
    body = tree.body if isinstance(tree, ast.Module) else [tree]
    for top in body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) and top.name in LAZY_HOOKS:
            continue
        yield from ast.walk(top)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]
    return tree


def _normalised(tree: ast.AST) -> str:
    """A syntax tree as text without positions and docstrings: what a digest hashes."""
    return ast.dump(_strip_docstrings(tree), annotate_fields=False, include_attributes=False)


@functools.lru_cache(maxsize=None)
def _summary(name: str, text: str) -> tuple[frozenset, str]:
    """The nfbench modules that module ``name`` (source ``text``) imports, and its normalised
    syntax tree (``ast.dump`` without positions and docstrings)."""
    tree = ast.parse(text, filename=name)
    return frozenset(_imports(name, tree)), _normalised(tree)


def _module(name: str) -> tuple[frozenset, str]:
    return _summary(name, _read_source(module_path(name)))


def module_closure(*starts: str) -> tuple[str, ...]:
    """The nfbench modules ``starts`` reach by imports (sorted), :data:`NOT_FOLLOWED` left out.
    A start that is a package contributes every module under it."""
    todo: list[str] = []
    for start in starts:
        path = module_path(start)
        if path is None:
            raise ValueError(f"no nfbench module {start!r}")
        todo.append(start)
        if path.name == "__init__.py":
            todo += [start + "." + ".".join(p.relative_to(path.parent).with_suffix("").parts)
                     for p in sorted(path.parent.rglob("*.py")) if p.name != "__init__.py"]
            todo += [start + "." + ".".join(p.parent.relative_to(path.parent).parts)
                     for p in sorted(path.parent.rglob("*/__init__.py"))]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or not _followed(name) or module_path(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        todo += sorted(_module(name)[0])
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def code_digest(*starts: str) -> str:
    """sha1 (16 hex digits) over the normalised syntax trees of :func:`module_closure`
    (``starts``): docstrings, comments and layout do not count, code does. Cached per
    process (the code does not change under a running process)."""
    digest = hashlib.sha1()
    closure = module_closure(*starts)
    for name in closure:
        digest.update(name.encode() + b"\0")
        digest.update(_module(name)[1].encode() + b"\0")
    for path in _data_files(closure):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        digest.update(_data_summary(path, _read_source(path)).encode() + b"\0")
    return digest.hexdigest()[:16]


def _data_files(closure: tuple[str, ...]) -> list[Path]:
    """The package data files (``*.yaml``) in the folders of the closure's modules."""
    folders = {module_path(name).parent for name in closure}
    return sorted(p for folder in folders for p in folder.glob("*.yaml") if p.is_file())


@functools.lru_cache(maxsize=None)
def _data_summary(path: Path, text: str) -> str:
    """A data file's parsed content (comments and layout do not count)."""
    return json.dumps(yaml.safe_load(text), sort_keys=True)


def package_digests() -> dict[str, str]:
    """A digest per file of the nfbench package, as :func:`code_digest` hashes it (a module's
    syntax tree without docstrings, YAML data by its parsed content), other files by their
    bytes: what the pipeline's stages depend on (:mod:`nfbench.pipeline.stage_code`)."""
    digests = {}
    for path in sorted(PACKAGE.rglob("*")):
        # defaults/ links the repository's params.yaml and specs (stage params and deps)
        if not path.is_file() or path.is_symlink() or {"__pycache__", "defaults"} & set(
                path.relative_to(PACKAGE).parts):
            continue
        if path.suffix == ".py":
            content = _normalised(ast.parse(_read_source(path), filename=str(path))).encode()
        elif path.suffix == ".yaml":
            content = _data_summary(path, path.read_text(encoding="utf-8")).encode()
        else:
            content = path.read_bytes()
        digests[path.relative_to(PACKAGE).as_posix()] = hashlib.sha1(content).hexdigest()[:16]
    return digests

