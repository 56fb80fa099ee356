"""The README's first screen and service install, walked as written, so they
cannot rot again; and the README's checkable claims held to the code.

The commands come from the README itself: each walked block is the fenced
``sh`` block after a ``<!-- walked by tests/test_readme.py: NAME -->`` line.

What runs for real, in a copy of the checkout (its tracked and new files,
never its ``.venv`` or ``data/``) under a temporary folder:

- quick start: ``python3 -m venv .venv``, ``pip install --require-hashes -r
  requirements.lock`` and ``pip install --no-deps -e .`` exactly as written,
  then ``.venv/bin/hl7-alerts serve --config config.yaml`` as written; the
  first-alert block's ``mosquitto_sub`` and ``hl7-alerts send ...
  samples/*.hl7`` as written; the test waits until mosquitto_sub prints an
  alert.
- service install: every command with its absolute paths (``/opt``,
  ``/etc``, ``/var/lib``, ``/tmp``) moved under a test root, ``sudo`` and
  ``sudo -u hl7-alerts`` dropped (the test runs as one user) and the
  ``-o``/``-g hl7-alerts`` ownership options dropped: the wheel is built,
  the venv made, the lock and the wheel installed, README, config and unit
  installed, the ``sed`` applied and ``config check`` run. Then what systemd
  would run: the installed unit's ``ExecStartPre`` and ``ExecStart`` (paths
  moved the same way, its ``UMask``, its ``WorkingDirectory``), a sample
  sent with the installed ``hl7-alerts send``, the first alert seen on MQTT.
- the pager guide's ``mosquitto_sub`` receives the daemon's status on both
  stores.

What is checked textually, because CI cannot run it as written: ``apt-get
install`` (it must name the package of every program the walk uses;
``.ci/run`` installs the same ones), ``useradd`` (the unit's user, home in
the unit's writable path), ``systemctl`` (daemon-reload, enable --now), the
ownership options (the data folder the daemon user's, the config readable
by its group). Both walks differ from a person's in one way each: the
daemon's config gets port 0 for MLLP and metrics, the test broker's port and
JSON logs (a free port, not 2575 and 1883, and a log the test can read), and
``send`` and ``mosquitto_sub`` get those ports. The installs reach the
package index as ``.ci/run``'s own does (pip's cache makes them quick).
Timing the same walk as a person meets it, user and systemd included, is
``bench/first_day.sh``'s job, not a test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from hl7_alerts.config import Config
from hl7_alerts.daemon import RESTART_ONLY
from hl7_alerts.terminology import LOINC, Analyte
from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.daemon import CLI, config_data, log_lines, running
from tests.support.mqtt import recording
from tests.support.waiting import WAIT, eventually_sync

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALL = 300.0  # seconds: a venv and pip installs, with the package index's answers cached or not


def walked(name: str) -> str:
    """The fenced sh block right after the README's walk mark ``name``."""
    mark = f"<!-- walked by tests/test_readme.py: {name} -->"
    assert README.count(mark) == 1, f"the README lost (or doubled) its mark {mark!r}"
    after = README.split(mark, 1)[1].lstrip("\n")
    match = re.match(r"```sh\n(.*?)\n```", after, re.S)
    assert match, f"{mark} must be followed by a ```sh block"
    return match.group(1)


def commands(block: str) -> list[str]:
    """Each command of a block: comment lines dropped, continued lines
    (ending in a backslash) joined, ``&&`` chains split."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            out += [c.strip() for c in line.split("&&")]
    return out


def apt_packages(command: str) -> set[str]:
    words = shlex.split(command)
    assert words[:4] == ["sudo", "apt-get", "install", "-y"], command
    return set(words[4:])


# The Debian package of every program the walked blocks run.
PROVIDED_BY = {"python3": "python3-venv", "mosquitto_sub": "mosquitto-clients", "mosquitto_pub": "mosquitto-clients"}


# -- the first screen, and what CI runs ----------------------------------------


def test_the_first_screen_is_two_setup_commands_and_ci_runs_the_test_one_verbatim() -> None:
    quick = README.split("## Quick start (Debian, Python 3.11)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", quick, re.S)
    assert blocks == [walked("quick-start"), walked("test-command"), walked("first-alert")]
    setup, tests = walked("quick-start"), walked("test-command")
    assert "\n" not in setup  # one command line each
    assert "\n" not in tests
    assert setup.endswith(".venv/bin/hl7-alerts serve --config config.yaml")
    assert tests.endswith(".venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, ".ci/run must run the README's test command verbatim"
    # Both install from the lock files, by hash.
    assert "--require-hashes -r requirements.lock" in setup
    assert "--require-hashes -r requirements-dev.lock" in tests


def test_the_quick_start_installs_every_program_the_walk_uses() -> None:
    installed = apt_packages(commands(walked("quick-start"))[0])
    assert "mosquitto" in installed  # the broker the daemon's defaults point at
    used = [shlex.split(c)[0] for block in ("quick-start", "first-alert", "pager") for c in commands(walked(block))]
    needed = {PROVIDED_BY[program] for program in used if program in PROVIDED_BY}
    assert needed <= installed, f"the quick start uses programs from {needed - installed} but does not install them"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for package in needed - {"python3-venv"}:
        assert f"apt_install {package}" in ci


# -- claims the README makes about the code ---------------------------------------


def _config_rows() -> list[str]:
    table = README.split("| key | default | meaning |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    return [row.split(" | ")[0].removeprefix("| ") for row in table.splitlines()]


def _restart_only(key: list[str]) -> bool:
    keys = RESTART_ONLY.get(key[0], ())
    return keys is None or (len(key) > 1 and key[1] in keys)


def test_the_config_table_marks_exactly_the_keys_that_need_a_restart() -> None:
    wrong = []
    for cell in _config_rows():
        names, parent, keys = re.findall(r"`([^`]+)`", cell), [], []
        for name in names:
            parent = name.split(".")[:-1] if "." in name else parent
            keys.append(name.split(".") if "." in name else [*parent, name])
        needs = {_restart_only(k) for k in keys}
        assert len(needs) == 1, f"row {cell!r} mixes reloadable and restart-only keys"
        if needs.pop() != ("(restart)" in cell):
            wrong.append(cell)
    assert not wrong, f"(restart) marks disagree with daemon.RESTART_ONLY: {wrong}"


def test_every_key_the_config_table_and_the_help_texts_name_exists() -> None:
    def exists(dotted: str) -> bool:
        model: Any = Config
        for part in dotted.split("."):
            fields = getattr(model, "model_fields", None)
            if fields is None or part not in fields:
                return False
            annotation = fields[part].annotation
            # A section that may be unset (mqtt.tls) is "Model | None".
            model = next((a for a in (annotation, *get_args(annotation)) if hasattr(a, "model_fields")), annotation)
        return True

    in_table = [n for cell in _config_rows() for n in re.findall(r"`([a-z_]+\.[a-z_.]+)`", cell)]
    assert in_table
    assert [n for n in in_table if not exists(n)] == []
    sections = "|".join(Config.model_fields)
    helps = ""
    for group, command in [("alerts", "ack"), ("alerts", "list"), ("rejected", "resend"), ("codes", None),
                           ("send", None), ("orders", "import"), ("schedule", "list"), ("serve", None)]:
        args = [group, *([command] if command else []), "--help"]
        helps += subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT, check=True).stdout
    named = set(re.findall(rf"\b(?:{sections})\.[a-z_]+(?:\.[a-z_]+)*", helps))
    assert "terminology.lab_codes" in named
    assert sorted(n for n in named if not exists(n)) == [], "a --help text names a key config check rejects"


def test_the_terminology_section_lists_every_analyte_and_loinc_code() -> None:
    section = README.split("## Terminology\n", 1)[1].split("\n## ", 1)[0]
    names = section.split("Analyte names", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`([A-Za-z0-9_]+)`", names)) - {"terminology", "rules"} >= {a.value for a in Analyte}
    table = {row.split(" | ")[0].removeprefix("| "): row.split(" | ")[1].rstrip(" |").split(", ")
             for row in section.split("| analyte | LOINC |\n|---|---|\n", 1)[1].split("\n\n", 1)[0].splitlines()}
    from_code: dict[str, list[str]] = {}
    for code, analyte in LOINC.items():
        from_code.setdefault(analyte.value, []).append(code)
    assert table == from_code


def test_the_readme_points_only_at_files_the_repository_has() -> None:
    assert "shared/" not in README
    paths = set(re.findall(r"`((?:hl7_alerts|tests|bench|systemd|samples|\.ci)/[A-Za-z0-9_./-]+)`", README))
    assert "systemd/hl7-alerts.service" in paths
    written = ("bench/results/",)  # what the benchmark writes, never committed
    missing = sorted(p for p in paths if "*" not in p and not p.startswith(written) and not (ROOT / p).exists())
    assert missing == []


def test_the_service_install_and_the_unit_agree() -> None:
    install = commands(walked("service-install"))
    unit = (ROOT / "systemd" / "hl7-alerts.service").read_text(encoding="utf-8")
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    useradd = next(c for c in install if "useradd" in c)
    assert shlex.split(useradd)[-1] == settings["User"] == "hl7-alerts"
    assert "--home-dir /var/lib/hl7-alerts" in useradd
    assert settings["ReadWritePaths"] == "/var/lib/hl7-alerts"
    assert settings["StateDirectoryMode"] == "0700"
    assert "sudo install -d -m 0700 -o hl7-alerts -g hl7-alerts /var/lib/hl7-alerts" in install
    assert "sudo install -m 0640 -g hl7-alerts config.yaml /etc/hl7-alerts/config.yaml" in install
    assert settings["ExecStart"].startswith("/opt/hl7-alerts/venv/bin/hl7-alerts serve --config /etc/hl7-alerts/config.yaml")
    assert settings["Documentation"] == "file:///opt/hl7-alerts/README.md"
    assert "sudo systemctl daemon-reload" in install
    assert "sudo systemctl enable --now hl7-alerts" in install
    assert apt_packages(next(c for c in install if "apt-get" in c)) >= {"python3-venv", "mosquitto"}
    assert not any(".venv" in c or "cp -r" in c for c in install)  # nothing of the checkout's own venv


# -- the walks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a fresh clone has: the tracked files and new ones not ignored
    (no .venv, data/, caches)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    clone = tmp_path_factory.mktemp("clone")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    return clone


def run(command: str, cwd: Path, timeout: float = INSTALL) -> None:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def for_the_test(config: Path, broker: Broker) -> None:
    """The one change the walks make to a config: ports the test can use and logs it can read."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["mllp"]["port"] = 0
    data["metrics"]["port"] = 0
    data["mqtt"]["port"] = broker.port
    data["logging"]["format"] = "json"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@contextlib.contextmanager
def daemon(argv: list[str], cwd: Path, log: Path, *, umask: int | None = None) -> Iterator[int]:
    """A daemon started by ``argv`` (as written in the README or the unit);
    yields its MLLP port, read from its ``daemon_ready`` log line."""
    with log.open("ab") as out:
        process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=out,
                                   preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)  # noqa: PLW1509
    try:
        def ready() -> dict[str, Any] | None:
            if process.poll() is not None:
                raise AssertionError(f"{argv} exited {process.returncode}:\n{log.read_text()[-3000:]}")
            return next((e for e in log_lines(log.read_text()) if e.get("event") == "daemon_ready"), None)

        yield eventually_sync(ready, WAIT * 3, what=f"{argv[0]} to be ready", detail=lambda: log.read_text()[-3000:])[
            "mllp_port"]
    finally:
        process.terminate()
        process.wait(WAIT)


def test_quick_start_as_written_to_a_first_alert(checkout: Path, own_broker: Broker) -> None:
    setup, first_alert = commands(walked("quick-start")), commands(walked("first-alert"))
    apt, *installs, serve = setup
    assert apt.startswith("sudo apt-get install")  # checked above; CI has the packages
    for command in installs:
        run(command, checkout)
    for_the_test(checkout / "config.yaml", own_broker)
    subscribe, send = first_alert
    assert subscribe.endswith(" &")
    assert send.startswith(".venv/bin/hl7-alerts send --port 2575 ")
    with daemon(shlex.split(serve), checkout, checkout / "daemon.log") as port:
        seen = checkout / "mosquitto_sub.out"
        with seen.open("wb") as out:
            watcher = subprocess.Popen([*shlex.split(subscribe.removesuffix(" &")), "-p", str(own_broker.port)],
                                       cwd=checkout, stdout=out, stderr=subprocess.STDOUT)
        try:
            # The daemon's retained status arrives first: the subscription is in place.
            eventually_sync(lambda: "hl7alerts/status " in seen.read_text(), what="mosquitto_sub to subscribe")
            sent = subprocess.run(["bash", "-c", send.replace("--port 2575", f"--port {port}")], cwd=checkout,
                                  capture_output=True, text=True, timeout=WAIT * 6, check=False)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            eventually_sync(lambda: "hl7alerts/alerts/critical/aza.hepatotoxicity.stop " in seen.read_text(),
                            what="the first critical alert in mosquitto_sub's output", detail=seen.read_text)
        finally:
            watcher.terminate()
            watcher.wait(WAIT)


def on_test_root(command: str, root: Path) -> str | None:
    """A service-install command as this test runs it, or None for those it
    only checks (apt-get, useradd, systemctl): absolute paths moved under
    ``root``, sudo and the hl7-alerts ownership options dropped."""
    if re.match(r"sudo (apt-get|useradd|systemctl) ", command):
        return None
    for path in ("/opt/hl7-alerts", "/etc/hl7-alerts", "/var/lib/hl7-alerts", "/etc/systemd/system",
                 "/tmp/hl7-alerts-build"):
        command = command.replace(path, f"{root}{path}")
    command = re.sub(r"^sudo (-u hl7-alerts )?", "", command)
    command = re.sub(r" -[og] hl7-alerts\b", "", command)
    assert not re.search(r"(?<![\w.-])/(opt|etc|var|tmp)/", command.replace(str(root), "ROOT")), command
    return command


async def test_service_install_as_written_to_a_first_alert(checkout: Path, own_broker: Broker,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "server"
    (root / "etc/systemd/system").mkdir(parents=True)  # a server has it
    for command in commands(walked("service-install")):
        mapped = on_test_root(command, root)
        if mapped is not None:
            run(mapped, checkout)
    venv = root / "opt/hl7-alerts/venv"
    # The installed code is the wheel's, in the service's own venv, not the checkout.
    where = (await asyncio.to_thread(
        subprocess.run, [str(venv / "bin/python"), "-c", "import hl7_alerts; print(hl7_alerts.__file__)"],
        cwd=root, capture_output=True, text=True, check=True)).stdout.strip()
    assert where.startswith(str(venv / "lib")), where
    # The daemon's user must be able to run the interpreter the venv links to:
    # every folder on its way open to others, the file executable by them.
    interpreter = (venv / "bin/python").resolve()
    closed = [str(p) for p in (interpreter, *interpreter.parents) if not p.stat().st_mode & 0o001]
    assert closed == [], f"the venv's interpreter {interpreter} is out of another user's reach: {closed}"
    assert oct((root / "var/lib/hl7-alerts").stat().st_mode & 0o777) == "0o700"
    config = root / "etc/hl7-alerts/config.yaml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert yaml.safe_load(config.read_text())["store"]["path"] == f"{root}/var/lib/hl7-alerts/hl7-alerts.sqlite3"

    # What systemd does with the installed unit.
    unit = (root / "etc/systemd/system/hl7-alerts.service").read_text(encoding="utf-8")
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))

    def moved(text: str) -> str:
        return text.replace("/opt/", f"{root}/opt/").replace("/etc/hl7-alerts", f"{root}/etc/hl7-alerts").replace(
            "/var/lib/", f"{root}/var/lib/")

    for_the_test(config, own_broker)
    run(moved(settings["ExecStartPre"]), root)
    async with recording(own_broker, "hl7alerts") as mqtt:
        with daemon(shlex.split(moved(settings["ExecStart"])), Path(moved(settings["WorkingDirectory"])),
                    tmp_path / "service.log", umask=int(settings["UMask"], 8)) as port:
            sample = str(checkout / "samples")
            sent = await asyncio.to_thread(
                subprocess.run,
                [str(venv / "bin/hl7-alerts"), "send", "--port", str(port),
                 f"{sample}/01_seed_order_azathioprine.hl7", f"{sample}/02_seed_liver_panel_above_3xuln.hl7"],
                capture_output=True, text=True, timeout=WAIT * 3, check=False)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            alerts = await mqtt.wait_alerts(2)
    assert {a["rule"] for a in alerts} == {"aza.pgx.missing", "aza.hepatotoxicity.stop"}
    store = root / "var/lib/hl7-alerts/hl7-alerts.sqlite3"
    assert oct(store.stat().st_mode & 0o777) == "0o600"  # under the unit's UMask


async def test_the_pager_guides_subscription_gets_the_status_on_both_stores(
    tmp_path: Path, own_broker: Broker, backend: Backend
) -> None:
    """One daemon on SQLite says its status on <prefix>/status, daemons on
    PostgreSQL each on <prefix>/status/<client_id>: the guide's one
    subscription gets either."""
    subscribe = next(c for c in commands(walked("pager")) if c.startswith("mosquitto_sub"))
    argv = [*shlex.split(subscribe), "-p", str(own_broker.port), "-C", "1", "-W", str(int(WAIT))]
    data = config_data(tmp_path, own_broker.port, "hl7alerts", store=backend.store_section())
    data["mqtt"]["client_id"] = "hl7-alerts-app1"
    async with running(Config.model_validate(data)):
        watcher = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await watcher.communicate()
    topic, payload = out.decode().strip().split(" ", 1)
    assert topic == ("hl7alerts/status" if backend.dsn is None else "hl7alerts/status/hl7-alerts-app1")
    assert json.loads(payload)["state"] == "online"
