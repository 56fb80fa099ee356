"""One logging setup: structlog, JSON when not on a terminal.

Per-message context (``peer``, ``control_id``, ``msg_type``) is bound with
``bound_contextvars`` by the frame handler (`frames.py`). The rule it keeps:
no value taken from a message reaches a log line. That holds by how values
are made, not by which key a caller happens to use:

- what the daemon says about a message names the field and the HL7 table
  (`segments.MessageError`), and store errors never quote the data
  (`store.describe_db_error`);
- the `redact` processor passes only plain scalars, enums, times and
  containers of them. Bytes (a frame), domain values (an `Observation`, a
  `Header`, a segment) and any other object are replaced by their type name,
  so logging one by mistake shows that it happened, not what it held; keys
  that name patient data or raw text are redacted whatever their value;
- an exception's message (``ValueError: could not convert 'SMITH'``) is
  kept only for types whose messages are ours or the system's (OSError,
  the store's, TLS, the publisher's, config); for the rest the traceback shows where,
  with the type, and withholds what. The same for stdlib ``logging``.

The MSH-10 control ID is logged: it is the message's address, which the
interface engine's operators search by, and carries no clinical content.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import sys
import traceback
from collections.abc import MutableMapping
from pathlib import PurePath
from types import TracebackType
from typing import Any

import structlog

# Keys that must never be logged, whatever a caller passes.
REDACTED_KEYS = frozenset(
    {
        "patient",
        "patient_id",
        "mrn",
        "name",
        "birth_date",
        "dob",
        "raw",
        "message",
        "payload",
        "frame",
        "text",
        "value",
        "value_text",
    }
)

# A string longer than this is cut: a sender chooses MSH-10's length, and one
# log line must not become a megabyte.
MAX_STRING = 300
_UNCUT = frozenset({"event", "exception"})

# Exceptions whose message is kept: their text is the operating system's, the
# store's (built by `store.describe_db_error`), the TLS library's, the
# publisher's (which translates the MQTT client's errors) or the config
# loader's, never a message's content.
_SAFE_MESSAGE_MODULES = (
    "hl7_alerts.store", "hl7_alerts.config", "hl7_alerts.segments", "hl7_alerts.publisher",
    "sqlite3", "ssl", "click",
)
WITHHELD = "(message withheld: it may quote message content)"

_SCALARS = (str, int, float, bool, type(None), enum.Enum, dt.datetime, dt.date, dt.time, dt.timedelta,
            PurePath)


def _safe_message(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError):
        return True
    module = type(exc).__module__
    return any(module == m or module.startswith(m + ".") for m in _SAFE_MESSAGE_MODULES)


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    if not _safe_message(exc):
        return f"{name}: {WITHHELD}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def render_exception(exc: BaseException) -> str:
    """A traceback as Python prints it (causes first), with each exception's
    message only when `_safe_message` allows it; notes are never shown."""
    out: list[str] = []
    seen: set[int] = set()

    def walk(e: BaseException) -> None:
        if id(e) in seen:
            return
        seen.add(id(e))
        if e.__cause__ is not None:
            walk(e.__cause__)
            out.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif e.__context__ is not None and not e.__suppress_context__:
            walk(e.__context__)
            out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
        if e.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            out.extend(traceback.format_tb(e.__traceback__))
        out.append(_describe(e) + "\n")
        if isinstance(e, BaseExceptionGroup):
            for index, sub in enumerate(e.exceptions, start=1):
                out.append(f"\n+---- sub-exception {index} of {len(e.exceptions)} ----\n")
                walk(sub)

    walk(exc)
    return "".join(out).rstrip("\n")


def _exc_info(value: Any) -> BaseException | None:
    if isinstance(value, BaseException):
        return value
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[1]
    if value is True:
        return sys.exc_info()[1]
    return None


def format_exc_info(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's ``format_exc_info``, rendering with `render_exception`."""
    info = event_dict.pop("exc_info", None)
    exc = _exc_info(info)
    if exc is not None:
        event_dict["exception"] = render_exception(exc)
    return event_dict


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else f"{value[:MAX_STRING]}…({len(value)} chars)"
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"[{len(value)} bytes redacted]"
    if isinstance(value, BaseException):
        return _describe(value)
    if depth < 3 and isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, depth + 1) for v in value]
    if depth < 3 and isinstance(value, dict):
        return {
            str(k): "[redacted]" if k in REDACTED_KEYS else _clean(v, depth + 1) for k, v in value.items()
        }
    return f"[redacted {type(value).__name__}]"


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Pass plain values only (see the module's docstring)."""
    for key, value in event_dict.items():
        if key in REDACTED_KEYS:
            event_dict[key] = "[redacted]"
        elif key in _UNCUT and isinstance(value, str):
            continue
        else:
            event_dict[key] = _clean(value)
    return event_dict


class _Formatter(logging.Formatter):
    """stdlib logging (asyncio, libraries) with the same exception rule."""

    def formatException(
        self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
    ) -> str:
        return render_exception(ei[1]) if ei[1] is not None else ""


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and stdlib logging once, at start-up."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(name)s %(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler])
