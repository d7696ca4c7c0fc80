"""Where a GRPO reward function (``module:function``) lives, found without running it.

The module is searched beside the spec file that names it, then on Python's path. Its own
file (a single module, or a package's ``__init__``) is recorded in the spec, so that the
planner keys the stage on that file's content and checks the function is defined there
(read with ``ast``: validate and plan never run user code, which may import torch), and
the ranks, whatever their working directory, import the very file that was keyed.
Torch-free: the planner imports it."""

from __future__ import annotations

import ast
import importlib
import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from types import ModuleType
from typing import Any

from llmbuild.errors import did_you_mean


def find_module_file(module: str, folder: str) -> str | None:
    """The file of ``module`` found in ``folder``, then on ``sys.path``; None when there is
    none (a namespace package or a built-in module has no file of its own). Packages on
    the way are searched, never imported (``importlib.util.find_spec`` would run their
    ``__init__``)."""
    importlib.invalidate_caches()  # a file written since this process last looked
    search: list[str] = [folder, *sys.path]
    parts = module.split(".")
    spec = None
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    return spec.origin if spec is not None and spec.has_location else None


def is_file_of(path: str, module: str) -> bool:
    """Whether ``path`` is where ``module`` is found (``a/b.py`` or ``a/b/__init__.py``
    for ``a.b``): a recorded file that an override of ``function`` left behind is not."""
    p = Path(path)
    named = p.parent if p.name.startswith("__init__.") else p.with_name(p.name.split(".")[0])
    parts = tuple(module.split("."))
    return named.parts[-len(parts) :] == parts


def module_root(path: str, module: str) -> str:
    """The folder that ``module`` is imported from when it is ``path``."""
    p = Path(path)
    return str(p.parents[len(module.split(".")) - 1 + p.name.startswith("__init__.")])


def record_module_files(raw: dict[str, Any], folder: str) -> None:
    """In a raw GRPO item as one spec file writes it, set each function reward's
    ``module_file`` to its module's file, searched from ``folder`` (that file's); a
    reward whose module is not found is left without one, for the check to report."""
    rewards = raw.get("rewards")
    for reward in rewards if isinstance(rewards, list) else []:
        function = reward.get("function") if isinstance(reward, dict) else None
        if not isinstance(function, str) or reward.get("kind") != "function":
            continue
        module = function.partition(":")[0]
        if not all(part.isidentifier() for part in module.split(".")):
            continue  # field validation reports it
        known = reward.get("module_file")
        if isinstance(known, str) and is_file_of(known, module):
            reward["module_file"] = os.path.join(folder, known)  # an absolute one stays
            continue
        found = find_module_file(module, folder)
        if found is None:
            reward.pop("module_file", None)
        else:
            reward["module_file"] = found


def function_problem(function: str, path: str | None) -> str | None:
    """Why ``function`` cannot be imported from the file recorded for it, or None. Only
    what can be told without running the module: its file exists, and a top-level
    statement binds the name (unless a ``*`` import or a module ``__getattr__`` might)."""
    module, _, name = function.partition(":")
    if path is None and module.endswith(".py"):
        return (
            f"reward function {function!r}: name the module, not its file: "
            f"function = {module[:-3] + ':' + name!r}"
        )
    if path is None:
        file = module.replace(".", "/") + ".py"
        return (
            f"reward function {function!r}: no module {module!r} beside the spec file or on "
            f"Python's path (put {file} beside the spec file, or install its package)"
        )
    if not path.endswith(".py"):
        return None  # a compiled module: nothing to read
    try:
        tree = ast.parse(Path(path).read_bytes(), path)
    except SyntaxError as e:
        return f"reward function {function!r}: {path}:{e.lineno}: {e.msg}"
    except OSError as e:
        return f"reward function {function!r}: cannot read {path}: {e.strerror}"
    bound = _top_level_names(tree)
    if name in bound or "*" in bound or "__getattr__" in bound:
        return None
    return f"reward function {function!r}: {path} defines no {name!r}{did_you_mean(name, bound)}"


def _top_level_names(tree: ast.Module) -> set[str]:
    """The names a module binds outside its functions and classes (imports included,
    ``*`` for a star import), under ``if`` and ``try`` too."""
    names: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif not isinstance(node, ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return names


def import_module_file(module: str, path: str | None) -> ModuleType:
    """``module``, imported from the folder its recorded file is in (a rank's working
    directory and path are not the spec's). The folder goes last on the path, so that its
    other files shadow nothing the rank imports later; a module of that name found
    elsewhere first is an error, never a silent stand-in for the keyed one."""
    if path is None:  # a spec recorded before module files were
        return importlib.import_module(module)
    root = module_root(path, module)
    if root not in sys.path:
        sys.path.append(root)
    got = importlib.import_module(module)
    origin = getattr(got, "__file__", None)
    if origin is None or os.path.realpath(origin) != os.path.realpath(path):
        raise ImportError(f"{module!r} is imported from {origin}, not {path}")
    return got
