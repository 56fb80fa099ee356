"""Pure modules do no I/O: checked by what importing them loads, and by what they say.

Each pure module is imported alone in a fresh interpreter, which must not
end up with asyncio, sqlite3, socket, ssl, psycopg or aiomqtt loaded, whether
the module imports them itself or through anything it imports (structlog,
for one, loads asyncio). Their source is also read: no direct import of I/O,
threads, time or randomness, and no call that reads the clock.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hl7_alerts"
PURE = [
    "framer.py",
    "segments.py",
    "messages.py",
    "terminology.py",
    "ack.py",
    "batches.py",
    "alerts.py",
    "orders.py",
    "dispenses.py",
    "model.py",
    "settings.py",
    "timeutil.py",
    "strictjson.py",
    *sorted(f"rules/{p.name}" for p in (PACKAGE / "rules").glob("*.py")),
]
NEVER_LOADED = ("asyncio", "sqlite3", "socket", "ssl", "psycopg", "aiomqtt")
FORBIDDEN_MODULES = {"asyncio", "sqlite3", "aiomqtt", "socket", "threading", "time", "random", "paho"}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "monotonic"}

# argv: the names to look for (JSON), then the modules to import.
_LOADED = """
import importlib, json, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))))
"""


def module_name(path: str) -> str:
    dotted = "hl7_alerts." + path.removesuffix(".py").replace("/", ".")
    return dotted.removesuffix(".__init__")


def loaded_by(*modules: str) -> list[str]:
    """Which of NEVER_LOADED a fresh interpreter has loaded after importing ``modules``."""
    result = subprocess.run(
        [sys.executable, "-c", _LOADED, json.dumps(NEVER_LOADED), *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_a_fresh_interpreter_loads_none_of_them() -> None:
    # Otherwise the check below would blame the module for the interpreter.
    assert loaded_by() == []


@pytest.mark.parametrize("name", PURE)
def test_pure_module_loads_no_io_even_indirectly(name: str) -> None:
    module = module_name(name)
    loaded = loaded_by(module)
    assert not loaded, f"importing {module} loads {', '.join(loaded)}"


def test_the_check_sees_what_an_impure_module_loads() -> None:
    assert "sqlite3" in loaded_by("hl7_alerts.store")


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
