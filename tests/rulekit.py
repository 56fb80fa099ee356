"""Builders for rule tests: observations, orders and contexts from a few values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hl7_alerts.model import (
    HoldPeriod,
    Observation,
    OrderState,
    PatientContext,
    PatientDemographics,
    PatientKey,
    ResultStatus,
)
from hl7_alerts.terminology import CANONICAL_UNIT, LOINC, Analyte, parse_range

T0 = datetime(2026, 10, 20, 8, 0, tzinfo=UTC)
PATIENT = PatientKey(id="H1", id_type="MR", authority="GENHOSP")
_CODES = {analyte: code for code, analyte in reversed(list(LOINC.items()))}


def obs(
    analyte: Analyte,
    value: float | None,
    *,
    ref: str | None = "",
    unit: str = "",
    at: datetime = T0,
    status: ResultStatus = ResultStatus.FINAL,
    specimen: str = "S1",
    comparator: str = "",
) -> Observation:
    rng = parse_range(ref or "")
    return Observation(
        analyte=analyte,
        code=_CODES[analyte],
        code_system="LN",
        text=analyte.value,
        value_type="NM",
        value_text="" if value is None else f"{comparator}{value:g}",
        value=value,
        comparator=comparator,
        unit=unit or CANONICAL_UNIT.get(analyte, ""),
        ref_low=rng.low,
        ref_high=rng.high,
        ref_text=ref or "",
        flag="",
        status=status,
        observed_at=at,
        specimen_id=specimen,
    )


def order(
    *,
    start: datetime | None = T0 - timedelta(days=30),
    stop: datetime | None = None,
    ingredient: str = "azathioprine",
    holds: tuple[tuple[datetime, datetime | None], ...] = (),
    order_id: str = "RX1",
) -> OrderState:
    return OrderState(
        order_id=order_id,
        ingredient=ingredient,
        drug_text=ingredient.upper(),
        dose="150 mg",
        start=start,
        stop=stop,
        holds=tuple(HoldPeriod(start=s, end=e) for s, e in holds),
    )


def context(*orders: OrderState, sex: str = "") -> PatientContext:
    return PatientContext(patient=PATIENT, orders=orders, demographics=PatientDemographics(sex=sex))
