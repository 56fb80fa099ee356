"""One logging setup: structlog, JSON when not on a terminal.

Per-message context (``peer``, ``control_id``, ``msg_type``) is bound with
``bound_contextvars`` by the frame handler (`frames.py`). A redacting
processor drops any key that could carry patient data or raw message text, so
a careless log call cannot leak it: patient identifiers and HL7 text never
reach a log line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
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
    }
)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in REDACTED_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


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
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")
