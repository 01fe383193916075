"""No function in dicomnode/ or pipeline/ longer than MAX_LINES (issue 14).

A long function is several steps without names; split it into named steps. Prints each
function over the limit (path:line name length) and exits 1 if there is one.

    .venv/bin/python scripts/check_function_length.py [--max 80] [PATH ...]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MAX_LINES = 80
ROOTS = ("dicomnode", "pipeline")


def long_functions(path: Path, max_lines: int) -> list[tuple[int, str, int]]:
    """(line, qualified name, length) of each function in ``path`` over ``max_lines``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > max_lines:
                    found.append((child.lineno, name, length))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=MAX_LINES, help=f"longest allowed (default {MAX_LINES})")
    parser.add_argument("paths", nargs="*", help=f"files or folders (default {' '.join(ROOTS)})")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    targets = [Path(p) for p in args.paths] or [root / r for r in ROOTS]
    bad = 0
    for target in targets:
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            rel = path.resolve().relative_to(root).as_posix()
            for line, name, length in long_functions(path, args.max):
                print(f"{rel}:{line}: {name} has {length} lines (at most {args.max}): split it into named steps")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
