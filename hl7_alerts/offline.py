"""Work without a broker or an interface engine: try messages, import orders.

`check` runs HL7 files through the daemon's own frame handler
(`frames.FrameHandler`: parse, `pipeline.process`, the answer) against a
throwaway SQLite store, and returns every alert event it would publish, so a
clinician can try a scenario at a desk. `import_orders` feeds
a pharmacy CSV (sites without a pharmacy feed) through the same pipeline as
an NW order message per row, so order rules run and a second import of the
same file is a resend that changes nothing. `list_orders` reads a patient's
orders back. The command line (`cli.py`) only parses arguments and prints.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hl7_alerts.alerts import payload
from hl7_alerts.config import Config
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.metrics import Metrics
from hl7_alerts.model import (
    Header,
    MedicationOrder,
    OrderControl,
    OrderMessage,
    OrderState,
    PatientDemographics,
    PatientKey,
)
from hl7_alerts.pipeline import Outcome, process
from hl7_alerts.rules.monitoring import ScheduleState
from hl7_alerts.segments import split_file
from hl7_alerts.store import ScheduleRow, SqliteStore, Store, Transaction
from hl7_alerts.timeutil import parse_dtm, to_iso


async def check(paths: Sequence[Path], config: Config, *, now: datetime) -> list[dict[str, Any]]:
    """Every alert event (and every rejected message) the files cause, in
    order, as JSON-ready dicts. Nothing is published; the store is deleted.

    Each message goes through the daemon's own `frames.FrameHandler`, as if
    it had arrived at its MSH-7 (else at ``now``)."""
    current = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hl7-alerts-check-") as folder:
        store = await SqliteStore.open(Path(folder) / "check.sqlite3")
        try:
            frames = FrameHandler(
                store,
                lambda: current,
                Metrics(),
                lambda: now,
                max_message_bytes=config.mllp.max_message_bytes,
                replay=True,
            )
            for path in paths:
                for raw in split_file(path.read_bytes()):
                    answer = await frames.answer(raw, peer=str(path))
                    if answer.outcome is None:
                        # Rejected, or not processed at all (the throwaway
                        # store failed, or we did): what the sender would read.
                        header, rejection = answer.header, answer.rejection
                        out.append(
                            {
                                "file": str(path),
                                "control_id": header.control_id if header else None,
                                "ack": str(rejection.ack_code if rejection else answer.code),
                                "error": rejection.reason if rejection else answer.text,
                            }
                        )
                        continue
                    demographics = getattr(answer.message, "demographics", None)
                    phi = current.pipeline.phi
                    out.extend(payload(c, demographics=demographics, phi=phi) for c in answer.outcome.changes)
        finally:
            await store.close()
    return out


# ---------------------------------------------------------------------------
# Orders CSV

CSV_COLUMNS = (
    "patient_id",
    "id_type",
    "authority",
    "order_id",
    "drug",
    "drug_code",
    "drug_system",
    "dose",
    "start",
    "stop",
)
REQUIRED_COLUMNS = ("patient_id", "order_id", "drug", "start")


class OrdersCsvError(Exception):
    """A CSV row we will not import; the message names file, row and column."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    imported: int
    unchanged: int
    alert_events: int


def _when(text: str, tz: tzinfo) -> datetime | None:
    """ISO 8601 (``2026-09-01``, ``2026-09-01T09:00``) or HL7 (``20260901090000``)."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return parse_dtm(text, tz) if text.isdigit() or text[:8].isdigit() else None
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def decode_csv(data: bytes, source: str = "orders.csv") -> str:
    """A CSV file's text: UTF-8 (with or without the BOM Excel writes), or
    UTF-16 when its BOM says so (Excel's "Unicode" export). Anything else is
    an `OrdersCsvError` naming the line, not a guess: a name read in the
    wrong charset would be a wrong name."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise OrdersCsvError(f"{source}: has a UTF-16 byte order mark but is not UTF-16") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise OrdersCsvError(
            f"{source}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8 "
            "(Excel: \"CSV UTF-8\"; iconv -f latin1 -t utf-8) and import it again"
        ) from None


def read_orders_csv(
    data: str, config: Config, source: str = "orders.csv"
) -> list[tuple[PatientKey, MedicationOrder, str]]:
    """Rows to (patient, NW order, row text), or `OrdersCsvError` naming every bad row."""
    tz = ZoneInfo(config.hl7.timezone)
    terminology = config.terminology_tables()
    reader = csv.DictReader(io.StringIO(data))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise OrdersCsvError(
            f"{source}:1: missing column(s) {', '.join(missing)} (columns: {', '.join(CSV_COLUMNS)})"
        )
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise OrdersCsvError(
            f"{source}:1: unknown column(s) {', '.join(unknown)} (columns: {', '.join(CSV_COLUMNS)})"
        )
    problems: list[str] = []
    rows: list[tuple[PatientKey, MedicationOrder, str]] = []
    for number, row in enumerate(reader, start=2):
        cells = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"{source}:{number}"
        bad = [f"{where}: {c}: required" for c in REQUIRED_COLUMNS if not cells.get(c)]
        start, stop = _when(cells.get("start", ""), tz), _when(cells.get("stop", ""), tz)
        if cells.get("start") and start is None:
            bad.append(
                f"{where}: start: {cells['start']!r} is not a date (use 2026-09-01 or 2026-09-01T09:00)"
            )
        if cells.get("stop") and stop is None:
            bad.append(f"{where}: stop: {cells['stop']!r} is not a date (use 2026-09-01 or 2026-09-01T09:00)")
        if start is not None and stop is not None and stop < start:
            bad.append(f"{where}: stop: before start")
        authority = cells.get("authority", "")
        if config.patient.authority is not None and authority != config.patient.authority:
            bad.append(
                f"{where}: authority: must be {config.patient.authority} (patient.authority in config)"
            )
        ingredient = terminology.ingredient(
            cells.get("drug_code", ""), cells.get("drug_system", ""), cells.get("drug", "")
        )
        if cells.get("drug") and ingredient is None:
            bad.append(
                f"{where}: drug: {cells['drug']!r} is not a drug this site maps (name, RxNorm, or "
                "terminology.drug_codes)"
            )
        if bad:
            problems += bad
            continue
        patient = PatientKey(
            id=cells["patient_id"],
            id_type=cells.get("id_type") or config.patient.id_types[0],
            authority=authority,
        )
        order = MedicationOrder(
            order_id=cells["order_id"],
            control=OrderControl.NEW,
            drug_code=cells.get("drug_code", ""),
            drug_system=cells.get("drug_system", ""),
            drug_text=cells["drug"],
            ingredient=ingredient,
            dose=cells.get("dose", ""),
            start=start,
            stop=stop,
            transaction_time=start,
        )
        rows.append((patient, order, ",".join(f"{k}={cells.get(k, '')}" for k in CSV_COLUMNS)))
    if problems:
        raise OrdersCsvError("\n".join(problems))
    return rows


def _header(patient: PatientKey, order: MedicationOrder) -> Header:
    # An opaque control ID per (patient, order): a re-import is a resend.
    control = hashlib.blake2b(f"{patient.key}\x00{order.order_id}".encode(), digest_size=10).hexdigest()
    return Header(
        field_separator="|",
        encoding_characters="^~\\&",
        sending_application="ORDERS-CSV",
        sending_facility=patient.authority,
        receiving_application="HL7ALERTS",
        receiving_facility="",
        message_time=order.start,
        message_type="CSV",
        trigger_event="NW",
        control_id=f"csv-{control}",
        processing_id="P",
        version="",
    )


async def import_orders(
    store: Store, data: str, config: Config, *, source: str, now: datetime
) -> ImportResult:
    """Import every row (all or none: a bad row stops the import before any is stored)."""
    rows = read_orders_csv(data, config, source)
    settings = config.pipeline_settings()
    imported = unchanged = events = 0
    for patient, order, text in rows:
        message = OrderMessage(
            header=_header(patient, order),
            patient=patient,
            demographics=PatientDemographics(),
            orders=(order,),
        )

        def unit(tx: Transaction, m: OrderMessage = message, raw: bytes = text.encode()) -> Outcome:
            return process(tx, m, raw, received_at=now, settings=settings)

        outcome = await store.transact(unit)
        unchanged += outcome.duplicate
        imported += not outcome.duplicate
        events += len(outcome.changes)
    return ImportResult(imported=imported, unchanged=unchanged, alert_events=events)


async def list_orders(
    store: Store, patient_id: str, id_type: str, authority: str | None
) -> list[tuple[PatientKey, OrderState]]:
    """A patient's orders (every authority that has the identifier, unless one is given)."""

    def unit(tx: Transaction) -> list[tuple[PatientKey, OrderState]]:
        keys = tx.find_patients(patient_id, id_type)
        out = []
        for key in keys:
            if authority is None or key.authority == authority:
                out += [(key, o) for o in tx.patient_orders(key)]
        return out

    return await store.read(unit)


def order_rows(orders: Iterable[tuple[PatientKey, OrderState]], now: datetime) -> list[list[str]]:
    """A table for people: header row, then one row per order."""
    rows = [["authority", "order_id", "drug", "dose", "start", "stop", "status", "holds"]]
    for key, o in orders:
        holds = ";".join(f"{to_iso(h.start)}..{to_iso(h.end) or ''}" for h in o.holds)
        rows.append(
            [
                key.authority,
                o.order_id,
                o.ingredient or o.drug_text,
                o.dose,
                to_iso(o.start) or "",
                to_iso(o.stop) or "",
                str(o.status_at(now)),
                holds,
            ]
        )
    return rows


def schedule_rows(schedules: Iterable[ScheduleRow], now: datetime) -> list[list[str]]:
    """`hl7-alerts schedule list`: header row, then who is due when
    (aza.monitoring.overdue), earliest alert time first. ``overdue`` is yes once
    the grace period after the due time has passed; ``fired`` says the alert
    for this due time went out."""
    rows = [["patient", "id_type", "authority", "order_id", "state", "last_panel", "next_due", "alert_at",
             "overdue", "fired"]]
    for r in schedules:
        overdue = r.state is ScheduleState.ACTIVE and now >= r.fires_at
        rows.append(
            [
                r.patient.id,
                r.patient.id_type,
                r.patient.authority,
                r.order_id,
                str(r.state),
                to_iso(r.last_panel) or "",
                to_iso(r.due) or "",
                to_iso(r.fires_at) or "",
                "yes" if overdue else "no",
                "yes" if r.fired else "no",
            ]
        )
    return rows
