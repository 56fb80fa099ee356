"""Builders for rule tests: observations, orders and contexts from a few values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hl7_alerts.model import (
    HoldPeriod,
    Observation,
    OrderState,
    PastAlert,
    PatientContext,
    PatientDemographics,
    PatientKey,
    ResultStatus,
)
from hl7_alerts.terminology import CANONICAL_UNIT, LOINC, Analyte, parse_range

T0 = datetime(2026, 10, 20, 8, 0, tzinfo=UTC)
PATIENT = PatientKey(id="H1", id_type="MR", authority="GENHOSP")
_CODES = {analyte: code for code, analyte in reversed(list(LOINC.items()))} | {
    Analyte.TPMT: "TPMT", Analyte.NUDT15: "NUDT15"
}


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


def context(
    *orders: OrderState,
    sex: str = "",
    history: tuple[Observation, ...] = (),
    alerts: tuple[PastAlert, ...] = (),
) -> PatientContext:
    return PatientContext(
        patient=PATIENT,
        orders=orders,
        demographics=PatientDemographics(sex=sex),
        history=history,
        alerts=alerts,
    )


def past(rule: str, at: datetime, *, open: bool = False) -> PastAlert:
    """An alert the patient had, raised on results observed at ``at``."""
    return PastAlert(rule=rule, open=open, opened_at=at, evidence_at=at)


def coded(analyte: Analyte, text: str, *, value_type: str = "CWE", at: datetime = T0, value: float | None = None) -> Observation:
    """A TPMT/NUDT15 result as text (phenotype, diplotype) or an activity number."""
    return Observation(
        analyte=analyte,
        code=analyte.value,
        code_system="L",
        text=analyte.value,
        value_type=value_type,
        value_text=text,
        value=value,
        comparator="",
        unit="",
        ref_low=None,
        ref_high=None,
        ref_text="",
        flag="",
        status=ResultStatus.FINAL,
        observed_at=at,
        specimen_id="G1",
    )
