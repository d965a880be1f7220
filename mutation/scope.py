"""Narrow a new cosmic-ray session to the mutants that `[cosmic-ray.filters.scope]` of its config keeps.

    python mutation/scope.py SESSION CONFIG [MODULE ...]

With MODULEs (paths as in the config's module-path), only their mutants are kept. Always dropped, since they
cannot change behaviour: mutants inside annotations (never evaluated: every module has `from __future__ import
annotations`) and of a signature's bare `*` (turned into `/`, the parameters before it become positional-only,
and every call passes them so). Definitions are named by file and qualified name
(`server/service_leases.py:Leasing.acquire`), so the scope follows the code when its lines move.

Dropped mutants are removed from the session, not marked skipped: cosmic-ray counts a skipped mutant as killed,
which would flatter the score.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import parso
from cosmic_ray.config import load_config
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkItem

Span = tuple[int, int]


def definition_spans(path: Path) -> dict[str, Span]:
    """Every function and class of a module by qualified name, with its first and last line."""
    spans: dict[str, Span] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                spans[name] = (first, child.end_lineno or child.lineno)
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return spans


def excluded_lines(definitions: list[str]) -> dict[str, list[Span]]:
    """The line spans of the excluded definitions, by module path."""
    lines: dict[str, list[Span]] = {}
    for spec in definitions:
        path, _, name = spec.partition(":")
        spans = definition_spans(Path(path))
        if name not in spans:
            raise SystemExit(f"scope: {path} has no definition {name!r}; fix exclude-definitions in the config")
        lines.setdefault(path, []).append(spans[name])
    return lines


@cache
def _parsed(path: str) -> tuple[Any, frozenset[int]]:
    """A module's parso tree (cosmic-ray's positions are parso's) and the ids of its annotation nodes."""
    module = parso.parse(Path(path).read_text())
    annotations: set[int] = set()
    todo = [module]
    while todo:
        node = todo.pop()
        if node.type in ("param", "funcdef") and node.annotation is not None:
            annotations.add(id(node.annotation))
        elif node.type == "annassign":
            annotations.add(id(node.children[1]))
        todo.extend(getattr(node, "children", ()))
    return module, frozenset(annotations)


def inert(path: str, position: tuple[int, int]) -> bool:
    """Whether the mutant at `position` is inside an annotation or is a signature's bare `*`."""
    module, annotations = _parsed(path)
    node = module.get_leaf_for_position(tuple(position))
    if node is not None and node.value == "*" and node.parent.type == "parameters":
        return True
    while node is not None:
        if id(node) in annotations:
            return True
        node = node.parent
    return False


def in_scope(
    item: WorkItem, modules: list[str], operators: re.Pattern[str] | None, lines: dict[str, list[Span]]
) -> bool:
    for mutation in item.mutations:
        path = str(mutation.module_path)
        if modules and path not in modules:
            return False
        if operators is not None and operators.match(mutation.operator_name):
            return False
        if inert(path, mutation.start_pos):
            return False
        line = mutation.start_pos[0]
        if any(first <= line <= last for first, last in lines.get(path, ())):
            return False
    return True


def main(session: str, config_path: str, modules: list[str]) -> None:
    config = load_config(config_path)
    unknown = set(modules) - set(config["module-path"])
    if unknown:
        raise SystemExit(f"scope: not in the config's module-path: {', '.join(sorted(unknown))}")
    scope = config.sub("filters", "scope")
    patterns = scope.get("exclude-operators", [])
    operators = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    lines = excluded_lines(scope.get("exclude-definitions", []))
    with use_db(session, WorkDB.Mode.open) as db:
        if db.num_results:
            raise SystemExit("scope: the session already has results; narrow it right after `cosmic-ray init`")
        items = list(db.work_items)
        kept = [item for item in items if in_scope(item, modules, operators, lines)]
        db.clear()
        db.add_work_items(kept)
    print(f"scope: {len(kept)} of {len(items)} mutants kept")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
