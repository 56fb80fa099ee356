"""No value taken from a message reaches a log line or a NAK (issue 18 item 7).

A sentinel that stands for patient data, ``SECRETFAMILY PHIID9999``, is sent
over MLLP to a real ``hl7-alerts serve`` (logging at debug, so every line is
written) in every field a reject path reads: the NAK names the field and the
HL7 table, and neither the log nor any ACK carries the sentinel. What makes
that hold is checked where it is made: every `MessageError` reason is a
literal (or built from config only), the log processor passes plain values
and withholds exception messages that could quote anything, and database
errors never quote rows.
"""

from __future__ import annotations

import ast
import io
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from hl7_alerts import logs
from hl7_alerts.model import Header
from hl7_alerts.store import StoreError, describe_db_error
from tests.support.broker import Broker
from tests.support.daemon import make_config, running, serve, write_config
from tests.support.mllp import AsyncMllpClient, ack_fields

PACKAGE = Path(__file__).resolve().parent.parent / "hl7_alerts"
SECRET = "SECRETFAMILY PHIID9999"
PIECES = ("SECRETFAMILY", "PHIID9999")


def leaked(text: str) -> list[str]:
    upper = text.upper()
    return [p for p in PIECES if p in upper]


# -- every MessageError reason is made without message values ------------------

_ERROR_MAKERS = {"MessageError", "_content_error", "_header_rejection", "_delimiter_error"}
# Names an f-string reason may interpolate: they come from config.yaml, never
# from the message (PID-3 "has no patient identifier of type MR").
_CONFIG_ROOTS = {"options", "wanted"}


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _reason_problems(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return []
    if isinstance(node, ast.IfExp):
        return _reason_problems(node.body) + _reason_problems(node.orelse)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _reason_problems(node.left) + _reason_problems(node.right)
    if isinstance(node, ast.JoinedStr):
        return [
            ast.unparse(v.value)
            for v in node.values
            if isinstance(v, ast.FormattedValue) and _root(v.value) not in _CONFIG_ROOTS
        ]
    return [ast.unparse(node)]


def _reason_argument(call: ast.Call, maker: str) -> ast.expr | None:
    if maker == "MessageError" and not call.args:
        return next((k.value for k in call.keywords if k.arg == "reason"), None)
    return call.args[0] if call.args else None


def _calls(tree: ast.AST) -> list[tuple[ast.Call, str | None]]:
    """Every call, with the function it is written in (None: module level)."""
    found: list[tuple[ast.Call, str | None]] = []

    def visit(node: ast.AST, within: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
            else:
                if isinstance(child, ast.Call):
                    found.append((child, within))
                visit(child, within)

    visit(tree, None)
    return found


def test_every_message_error_reason_is_a_literal_or_config() -> None:
    problems, makers_seen = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for node, within in _calls(ast.parse(path.read_text(), str(path))):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name not in _ERROR_MAKERS:
                continue
            makers_seen += 1
            reason = _reason_argument(node, name)
            if reason is None:
                continue
            if within in _ERROR_MAKERS and isinstance(reason, ast.Name) and reason.id == "reason":
                continue  # a maker passing its own argument on: its callers are checked
            for bad in _reason_problems(reason):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}(... {bad} ...)")
    assert makers_seen > 15  # the check looked at the reject paths
    assert not problems, "reasons that could quote the message:\n" + "\n".join(problems)


# -- the log processor ----------------------------------------------------------


def render(level: str = "debug", **kw: Any) -> dict[str, Any]:
    """One event through the production processors, as JSON."""
    out = io.StringIO()
    logs.configure(level, "json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=out))
    structlog.get_logger("test").error("probe", **kw)
    return json.loads(out.getvalue())


def test_logs_pass_plain_values_and_redact_what_could_hold_a_message() -> None:
    header = Header(  # a domain value, logged by mistake
        field_separator="|", encoding_characters="^~\\&", sending_application=SECRET, sending_facility="",
        receiving_application="", receiving_facility="", message_time=None, message_type="ORU",
        trigger_event="R01", control_id="C1", processing_id="P", version="2.5.1",
    )
    line = render(
        count=3, ack="AE", ratio=1.5, keys=["mqtt.host"], ok=True, frame_bytes=SECRET.encode(),
        header=header, value=SECRET, patient_id=SECRET, nested={"name": SECRET, "n": 1},
        long="x" * 5000,
    )
    assert (line["count"], line["ack"], line["ratio"], line["keys"], line["ok"]) == (3, "AE", 1.5, ["mqtt.host"], True)
    assert line["frame_bytes"] == "[22 bytes redacted]"
    assert line["header"] == "[redacted Header]"
    assert line["value"] == line["patient_id"] == line["nested"]["name"] == "[redacted]"
    assert line["long"].startswith("x" * 300)
    assert line["long"].endswith("(5000 chars)")
    assert not leaked(json.dumps(line))


def test_exception_messages_are_withheld_unless_they_are_ours_or_the_systems() -> None:
    def failing(exc: BaseException) -> dict[str, Any]:
        try:
            raise exc
        except BaseException:
            return render(exc_info=True)

    defect = failing(ValueError(f"could not convert {SECRET!r}"))
    assert "ValueError: (message withheld" in defect["exception"]
    assert "in failing" in defect["exception"]  # where it happened is kept
    assert not leaked(json.dumps(defect))
    chained = failing(RuntimeError("wrapper"))
    assert "RuntimeError: (message withheld" in chained["exception"]
    for safe in (StoreError("database is locked"), FileNotFoundError(2, "No such file", "/var/lib/x")):
        assert str(safe) in failing(safe)["exception"]
    try:
        try:
            raise KeyError(SECRET)
        except KeyError as inner:
            raise StoreError("database is locked") from inner
    except StoreError:
        line = render(exc_info=True)
    assert "KeyError: (message withheld" in line["exception"]
    assert "database is locked" in line["exception"]
    assert not leaked(json.dumps(line))
    grouped = failing(ExceptionGroup("tasks", [ValueError(SECRET), OSError("disk full")]))
    assert "disk full" in grouped["exception"]
    assert not leaked(json.dumps(grouped))


def test_stdlib_logging_withholds_exception_messages_too(capfd: pytest.CaptureFixture[str]) -> None:
    import logging  # noqa: PLC0415

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        logs.configure("info", "json")
        try:
            raise ValueError(SECRET)
        except ValueError:
            logging.getLogger("asyncio").exception("Task exception was never retrieved")
        err = capfd.readouterr().err
    finally:
        root.handlers[:] = saved
    assert "Task exception was never retrieved" in err
    assert "ValueError: (message withheld" in err
    assert not leaked(err)


# -- database errors ---------------------------------------------------------------


def test_database_errors_name_where_not_what(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id text PRIMARY KEY, n double precision)")
        conn.execute("INSERT INTO t VALUES (%s, 1)", (SECRET,))
        with pytest.raises(psycopg.errors.UniqueViolation) as duplicate:
            conn.execute("INSERT INTO t VALUES (%s, 2)", (SECRET,))
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as data:
            conn.execute("SELECT %s::text::double precision", (SECRET,))
    assert leaked(str(duplicate.value))
    assert leaked(str(data.value))
    unique = describe_db_error(duplicate.value)
    assert unique.startswith("UniqueViolation (SQLSTATE 23505): duplicate key value violates unique constraint")
    assert "table t" in unique
    assert describe_db_error(data.value) == "InvalidTextRepresentation (SQLSTATE 22P02)"
    assert not leaked(unique + describe_db_error(data.value))
    db = sqlite3.connect(tmp_path / "x.sqlite3")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (?)", (SECRET,))
    with pytest.raises(sqlite3.IntegrityError) as lite:
        db.execute("INSERT INTO t VALUES (?)", (SECRET,))
    assert describe_db_error(lite.value) == "UNIQUE constraint failed: t.id"
    assert describe_db_error(ValueError(SECRET)) == "ValueError (message withheld)"


# -- the sentinel through MLLP, into every reject path ----------------------------

MSH = "MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|{when}||{type}|{control}|{pid}|{version}"
PID = f"PID|1||H0990001^^^GENHOSP^MR||{SECRET}^ECHO||19700101|F"
OBR = "OBR|1|O1|SPC1|24325-3^Hepatic function panel^LN|||20261020080000"


def _oru(control: str, *, type_: str = "ORU^R01^ORU_R01", processing: str = "P", version: str = "2.5.1",
         when: str = "20261020093000", pid: str = PID, obr: str = OBR, obx11: str = "F",
         value: str = SECRET) -> bytes:
    return "\r".join([
        MSH.format(when=when, type=type_, control=control, pid=processing, version=version),
        pid,
        obr,
        f"OBX|1|ST|NOTE^note^L||{value}||||||{obx11}",
        "OBX|2|NM|1742-6^ALT^LN||190|U/L|7-56|H|||F",
    ]).encode() + b"\r"


def _rde(control: str, orc1: str, order_id: str = "RX1") -> bytes:
    return "\r".join([
        MSH.format(when="20260901090000", type="RDE^O11^RDE_O11", control=control, pid="P", version="2.5.1"),
        PID,
        f"ORC|{orc1}|{order_id}|||||||20260901090000",
        f"RXE|^^^20260901090000|1256^{SECRET}^RXNORM|150||mg|TAB",
    ]).encode() + b"\r"


def _a40(control: str, mrg: str | None) -> bytes:
    lines = [MSH.format(when="20261020093000", type="ADT^A40^ADT_A39", control=control, pid="P", version="2.5.1"),
             "EVN|A40|20261020093000", PID]
    if mrg is not None:
        lines.append(f"MRG|{mrg}")
    return "\r".join(lines).encode() + b"\r"


# (frame, the ACK code, the ERR location and condition it must name)
REJECTS: dict[str, tuple[bytes, str, str]] = {
    "no-msh": (f"{SECRET}|x\r{PID}\r".encode(), "AE", "ERR||MSH^1|100^"),
    "msh2-delimiters": (_oru("R02").replace(b"^~\\&", b"^&&^", 1), "AE", "ERR||MSH^1^2|102^"),
    "msh9-type": (_oru("R03", type_=SECRET), "AR", "ERR||MSH^1^9|200^"),
    "msh9-trigger": (_oru("R04", type_=f"ORU^{SECRET}"), "AR", "ERR||MSH^1^9|201^"),
    "msh10-empty": (_oru(""), "AE", "ERR||MSH^1^10|101^"),
    "msh11-processing-id": (_oru("R06", processing=SECRET), "AR", "ERR||MSH^1^11|202^"),
    "msh12-version": (_oru("R07", version=SECRET), "AR", "ERR||MSH^1^12|203^"),
    "no-pid": (_oru("R08").replace(PID.encode() + b"\r", b""), "AE", "ERR||PID^1|100^"),
    "pid3-other-type": (_oru("R09", pid=f"PID|1||{SECRET}^^^GENHOSP^PI||{SECRET}^ECHO"), "AE", "ERR||PID^1^3|101^"),
    "obx11": (_oru("R10", obx11=SECRET), "AE", "ERR||OBX^1^11|103^"),
    "no-observation-time": (_oru("R11", when="", obr="OBR|1|O1|SPC1|24325-3^Hepatic function panel^LN"),
                            "AE", "ERR||OBX^1^14|101^"),
    "orc1": (_rde("R12", SECRET), "AE", "ERR||ORC^1^1|103^"),
    "orc2-empty": (_rde("R13", "NW", order_id=""), "AE", "ERR||ORC^1^2|101^"),
    "a40-no-mrg": (_a40("R14", None), "AE", "ERR||MRG^1|100^"),
    "mrg1-other-type": (_a40("R15", f"{SECRET}^^^GENHOSP^PI"), "AE", "ERR||MRG^1^1|101^"),
}


async def test_the_sentinel_reaches_neither_the_log_nor_an_ack(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    config = write_config(tmp_path / "config.yaml", broker.port, prefix,
                          logging={"level": "debug", "format": "json"}, mllp={"max_message_bytes": 2048})
    acks: dict[str, bytes] = {}
    async with serve(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        try:
            for name, (frame, _, _) in REJECTS.items():
                acks[name] = await client.send(frame)
            # Accepted too: at debug every line of the message's path is written.
            acks["accepted"] = await client.send(_oru("R20"))
            acks["oversize"] = await client.send(_oru("R21", value=SECRET * 200))
            # The store fails under a message: another process holds the write
            # lock past the daemon's busy timeout.
            locker = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                acks["store-unavailable"] = await client.send(_oru("R22"), timeout=30)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
        finally:
            await client.close()
        log = daemon.log_text()
        rejected = daemon.events("message_rejected")
    fields = {name: ack_fields(ack) for name, ack in acks.items()}
    for name, (_, code, err) in REJECTS.items():
        assert (name, fields[name]["code"]) == (name, code)
        assert fields[name]["ERR"].startswith(err), (name, fields[name]["ERR"])
    assert fields["accepted"]["code"] == "AA"
    assert (fields["oversize"]["code"], fields["store-unavailable"]["code"]) == ("AR", "AR")
    assert fields["store-unavailable"]["text"] == "store unavailable, resend later"
    assert fields["obx11"]["ERR"].endswith("|OBX-11 not in HL7 table 0085")
    assert len(rejected) == len(REJECTS)
    assert "store_unavailable" in log
    assert "database is locked" in log
    assert not leaked(log), [line for line in log.splitlines() if leaked(line)][:3]
    for name, ack in acks.items():
        assert not leaked(ack.decode("utf-8", "replace")), (name, ack)


async def test_defects_of_ours_do_not_quote_the_message_either(
    tmp_path: Path, broker: Broker, prefix: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parser or pipeline that crashes with the message's value in its
    exception: the traceback says where, not what."""
    import hl7_alerts.frames as frames  # noqa: PLC0415

    def crash(*_: object, **__: object) -> None:
        raise ValueError(f"could not read {SECRET!r}")

    config = make_config(tmp_path, broker.port, prefix)
    logs.configure("debug", "json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        monkeypatch.setattr(frames, "parse_message", crash)
        parse_crash = await client.send(_oru("D1"))
        monkeypatch.undo()
        monkeypatch.setattr(frames, "process", crash)
        pipeline_crash = await client.send(_oru("D2"))
        await client.close()
    err = capfd.readouterr().err
    assert "parse_crashed" in err
    assert "pipeline_failed" in err
    assert "ValueError: (message withheld" in err
    assert not leaked(err)
    assert not leaked(parse_crash.decode() + pipeline_crash.decode())
