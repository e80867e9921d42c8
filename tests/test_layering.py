"""Layering rules, read from the import statements themselves (ast), not from text search.

- ``redis`` is imported at run time only where Redis commands are issued or Redis URLs are
  read: ``store/``, ``connection.py`` and ``redis_url.py``; elsewhere only under
  ``if TYPE_CHECKING:`` (for annotations);
- ``supervisor`` (the generic prefork master) is imported only by ``server.py``, the one
  module wiring it to the job system (the CLI reaches it through ``server.run``), and
  ``supervisor/`` never imports ``prefork_work``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prefork_work"
REDIS_ALLOWED = {"store", "connection.py", "redis_url.py"}
SUPERVISOR_ALLOWED = {"server.py"}


def _type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(source: str) -> Iterator[str]:
    """Top-level package of every import run at some point (functions included), skipping
    ``if TYPE_CHECKING:`` blocks; relative imports are ours."""
    def visit(node: ast.AST) -> Iterator[str]:
        if _type_checking_block(node):
            assert isinstance(node, ast.If)
            for other in node.orelse:
                yield from visit(other)
            return
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        for child in ast.iter_child_nodes(node):
            yield from visit(child)
    yield from visit(ast.parse(source))


def modules(directory: Path) -> list[Path]:
    found = sorted(directory.rglob("*.py"))
    assert found, directory
    return found


def test_the_import_reader_sees_what_runs_and_skips_type_only_imports() -> None:
    source = (
        "import os.path\nfrom redis.cluster import X\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import supervisor\nelse:\n    import json\n"
        "def f():\n    import psutil\n    from . import sibling\n"
    )
    assert sorted(runtime_imports(source)) == ["json", "os", "psutil", "redis", "typing"]


def test_redis_is_imported_only_where_commands_are_issued() -> None:
    offenders = [
        str(path.relative_to(PACKAGE)) for path in modules(PACKAGE)
        if path.relative_to(PACKAGE).parts[0] not in REDIS_ALLOWED
        and "redis" in set(runtime_imports(path.read_text()))
    ]
    assert offenders == []


def test_supervisor_is_imported_only_by_the_server() -> None:
    offenders = [
        str(path.relative_to(PACKAGE)) for path in modules(PACKAGE)
        if str(path.relative_to(PACKAGE)) not in SUPERVISOR_ALLOWED
        and "supervisor" in set(runtime_imports(path.read_text()))
    ]
    assert offenders == []


@pytest.mark.parametrize("path", modules(ROOT / "supervisor"), ids=lambda p: p.name)
def test_supervisor_never_imports_the_job_system(path: Path) -> None:
    assert "prefork_work" not in set(runtime_imports(path.read_text()))
