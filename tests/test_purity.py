"""Pure modules import no asyncio, sqlite3, aiomqtt, sockets or wall clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hl7_alerts"
PURE = ["framer.py", "segments.py", "messages.py", "terminology.py", "ack.py", "alerts.py", "orders.py", "model.py", "timeutil.py",
        *[f"rules/{p.name}" for p in (PACKAGE / "rules").glob("*.py")]]
FORBIDDEN_MODULES = {"asyncio", "sqlite3", "aiomqtt", "socket", "threading", "time", "random", "paho"}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "monotonic"}


@pytest.mark.parametrize("name", PURE)
def test_pure_module_has_no_io(name: str) -> None:
    tree = ast.parse((PACKAGE / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in FORBIDDEN_MODULES, f"{name} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.module.split(".")[0] not in FORBIDDEN_MODULES, f"{name} imports from {node.module}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in FORBIDDEN_CALLS, f"{name} reads the clock ({node.func.attr})"


def test_only_publisher_imports_aiomqtt() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name != "publisher.py":
            assert "aiomqtt" not in path.read_text(), f"{path.name} mentions aiomqtt"
