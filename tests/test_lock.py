"""The lock files say what pyproject.toml says, so a hospital installs exactly
what was tested and the lock cannot go stale silently.

`requirements.lock` (the runtime set, what the deployment guide installs
with ``--require-hashes``) and `requirements-dev.lock` (the same pins plus
what the tests need, what `.ci/run` installs) are made by `.ci/lock`. These
tests fail when someone changes the dependencies in pyproject.toml without
running it: a requirement added, removed or re-specified, or the two files
pinning different versions.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "pyproject.toml and the lock files disagree: run .ci/lock and commit requirements*.lock"

_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]*?))?\s*\\?$")


@dataclass
class Pin:
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)

    @property
    def direct(self) -> bool:
        """Asked for by pyproject.toml itself (not only by another package)."""
        return any(v.startswith("hl7-alerts") for v in self.via)


def read_lock(path: Path) -> dict[str, Pin]:
    """A uv/pip-compile requirements file with hashes and "# via" notes."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if match := _ENTRY.match(line):
            current = pins[canonicalize_name(match["name"])] = Pin(version=match["version"])
        elif current is not None and stripped.startswith("--hash="):
            current.hashes.append(stripped.removeprefix("--hash=").rstrip(" \\"))
        elif current is not None and stripped.startswith("#"):
            note = stripped.lstrip("#").strip()
            note = note.removeprefix("via").strip()
            if note:
                current.via.append(note)
        elif stripped and not stripped.startswith("#"):
            raise AssertionError(f"{path.name}: a line the lock format does not have: {line!r}")
    return pins


def requirements(*groups: str) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for group in groups:
        found += [Requirement(r) for r in project["optional-dependencies"][group]]
    return {canonicalize_name(r.name): r for r in found}


RUNTIME = ROOT / "requirements.lock"
DEV = ROOT / "requirements-dev.lock"


@pytest.mark.parametrize(("lock", "groups"), [(RUNTIME, ()), (DEV, ("dev",))], ids=["runtime", "dev"])
def test_every_requirement_is_pinned_by_the_lock_within_its_range(lock: Path, groups: tuple[str, ...]) -> None:
    pins, wanted = read_lock(lock), requirements(*groups)
    missing = sorted(set(wanted) - set(pins))
    assert not missing, f"{lock.name} has no pin for {missing}: {REGENERATE}"
    outside = {name: (pins[name].version, str(req.specifier)) for name, req in wanted.items()
               if not req.specifier.contains(Version(pins[name].version), prereleases=True)}
    assert not outside, f"{lock.name} pins outside pyproject.toml's ranges {outside}: {REGENERATE}"


@pytest.mark.parametrize(("lock", "groups"), [(RUNTIME, ()), (DEV, ("dev",))], ids=["runtime", "dev"])
def test_the_lock_asks_for_nothing_pyproject_no_longer_does(lock: Path, groups: tuple[str, ...]) -> None:
    pins, wanted = read_lock(lock), requirements(*groups)
    stale = sorted(name for name, pin in pins.items() if pin.direct and name not in wanted)
    assert not stale, f"{lock.name} still pins {stale} for hl7-alerts: {REGENERATE}"


@pytest.mark.parametrize("lock", [RUNTIME, DEV], ids=["runtime", "dev"])
def test_every_pin_has_hashes(lock: Path) -> None:
    pins = read_lock(lock)
    assert pins
    unhashed = sorted(name for name, pin in pins.items() if not pin.hashes)
    assert not unhashed, f"{lock.name}: no --hash for {unhashed}: {REGENERATE}"
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for pin in pins.values() for h in pin.hashes)


def test_ci_tests_the_versions_a_hospital_installs() -> None:
    runtime, dev = read_lock(RUNTIME), read_lock(DEV)
    differ = {name: (pin.version, dev[name].version if name in dev else None)
              for name, pin in runtime.items() if name not in dev or dev[name].version != pin.version}
    assert not differ, f"requirements-dev.lock differs from requirements.lock on {differ}: {REGENERATE}"
    assert all(dev[name].hashes == pin.hashes for name, pin in runtime.items())


def test_a_stale_lock_is_caught(tmp_path: Path) -> None:
    """The checks above on a lock that lacks a new requirement and keeps a
    removed one: what a branch adding a dependency without .ci/lock leaves."""
    text = RUNTIME.read_text(encoding="utf-8")
    stale = tmp_path / "requirements.lock"
    stale.write_text(
        re.sub(r"^structlog==.*?(?=^\S)", "", text, flags=re.S | re.M)
        + "oldlib==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via hl7-alerts (pyproject.toml)\n"
    )
    pins, wanted = read_lock(stale), requirements()
    assert "structlog" in set(wanted) - set(pins)
    assert [n for n, p in pins.items() if p.direct and n not in wanted] == ["oldlib"]
