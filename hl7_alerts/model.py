"""Domain values that travel between the stages of the pipeline.

Everything here is a frozen, keyword-only dataclass or a ``StrEnum``: the stages
(`messages` → `store` → `rules` → `alerts` → `publisher`) hand each other plain
values, never parse trees, rows or client objects. Patient identifiers are kept
out of ``repr`` so that an accidental log of a value cannot leak them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime


class AckCode(enum.StrEnum):
    """MSA-1 acknowledgment codes (original mode A*, enhanced commit mode C*)."""

    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"

    @property
    def accepted(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is more urgent; used to decide whether an update escalates."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {
    Severity.INFO: 0,
    Severity.WARNING: 1,
    Severity.HIGH: 2,
    Severity.CRITICAL: 3,
}


class OrderControl(enum.StrEnum):
    """ORC-1 values the order store understands."""

    NEW = "NW"
    CHANGE = "XO"
    STATUS_CHANGED = "SC"
    DISCONTINUE = "DC"
    DISCONTINUED = "OD"
    CANCEL = "CA"
    CANCELLED = "OC"
    HOLD = "HD"
    RELEASE = "RL"
    DISPENSE = "RE"  # RDS^O13: a pharmacy dispense (decision 14)


class ResultStatus(enum.StrEnum):
    """OBX-11 observation result status."""

    FINAL = "F"
    CORRECTED = "C"
    PRELIMINARY = "P"
    CANCELLED = "X"
    DELETED = "D"
    PENDING = "I"
    RESULTS_ENTERED = "R"
    SPECIMEN_IN_LAB = "S"
    NOT_VERIFIED = "N"
    UNKNOWN = "U"
    WRONG = "W"

    @property
    def evaluated(self) -> bool:
        """Whether rules look at a value carrying this status."""
        return self in (ResultStatus.FINAL, ResultStatus.CORRECTED, ResultStatus.PRELIMINARY)


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientKey:
    """Who a message is about: PID-3 identifier, its type and assigning authority."""

    id: str = field(repr=False)
    id_type: str
    authority: str

    @property
    def key(self) -> str:
        """Stable storage key; never logged."""
        return f"{self.authority}|{self.id_type}|{self.id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientDemographics:
    """PHI beyond the identifier; carried only when the config's policy allows."""

    name: str = field(default="", repr=False)
    birth_date: str = field(default="", repr=False)
    sex: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """The MSH fields the pipeline and the ACK need."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_time: datetime | None
    message_type: str
    trigger_event: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str = ""
    application_ack_type: str = ""
    charset: str = ""

    @property
    def type_code(self) -> str:
        return f"{self.message_type}^{self.trigger_event}" if self.trigger_event else self.message_type

    @property
    def enhanced_mode(self) -> bool:
        """MSH-15/16 present means the sender asked for enhanced acknowledgments."""
        return bool(self.accept_ack_type or self.application_ack_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One OBX result, mapped to an analyte where the code is known."""

    analyte: str | None
    code: str
    code_system: str
    text: str
    value_type: str
    value_text: str
    value: float | None
    comparator: str
    unit: str
    ref_low: float | None
    ref_high: float | None
    ref_text: str
    flag: str
    status: ResultStatus
    observed_at: datetime
    specimen_id: str
    set_id: str = ""

    def __post_init__(self) -> None:
        # A number no float can hold (400 digits read as infinity) is not a
        # number: the text stays for people to read, and no rule, ratio or
        # payload ever computes with it. Whoever built the value (the mapping,
        # a row of an older store, a test) gets the same guarantee.
        if self.value is not None and not math.isfinite(self.value):
            object.__setattr__(self, "value", None)
            object.__setattr__(self, "comparator", "")
        if self.ref_low is not None and not math.isfinite(self.ref_low):
            object.__setattr__(self, "ref_low", None)
        if self.ref_high is not None and not math.isfinite(self.ref_high):
            object.__setattr__(self, "ref_high", None)

    @property
    def numeric(self) -> bool:
        return self.value is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class MedicationOrder:
    """One ORC + RXE/RXO group: an order event for a drug."""

    order_id: str
    control: OrderControl
    drug_code: str
    drug_system: str
    drug_text: str
    ingredient: str | None
    dose: str
    start: datetime | None
    stop: datetime | None
    transaction_time: datetime | None


class OrderStatus(enum.StrEnum):
    """Where an order stands at a given time (`OrderState.status_at`)."""

    ACTIVE = "active"
    HELD = "held"
    STOPPED = "stopped"
    PENDING = "pending"  # its start is still ahead (or unknown)


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldPeriod:
    start: datetime
    end: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderState:
    """The store's current view of one order, built from its events."""

    order_id: str
    ingredient: str | None
    drug_text: str
    dose: str
    start: datetime | None
    stop: datetime | None
    holds: tuple[HoldPeriod, ...] = ()
    # An order opened by dispenses with no order on file (decision 14): its
    # last dispense. Such an order stops (``stop``) when it lapses, a set
    # time after that; None for an ordered one, or once a DC/CA stopped it.
    dispensed: datetime | None = None

    def active_at(self, at: datetime) -> bool:
        """CLINICAL.md: start ≤ t, no stop or t < stop, not on hold."""
        if self.start is None or self.start > at:
            return False
        if self.stop is not None and at >= self.stop:
            return False
        return not any(h.start <= at and (h.end is None or at < h.end) for h in self.holds)

    def status_at(self, at: datetime) -> OrderStatus:
        """Where the order stands at ``at`` (stopped wins over held)."""
        if self.stop is not None and at >= self.stop:
            return OrderStatus.STOPPED
        if any(h.start <= at and (h.end is None or at < h.end) for h in self.holds):
            return OrderStatus.HELD
        return OrderStatus.ACTIVE if self.start is not None and self.start <= at else OrderStatus.PENDING


@dataclass(frozen=True, slots=True, kw_only=True)
class PastAlert:
    """What a rule may know about an alert the patient had: which rule, whether
    it is still open, and the observation times it rests on."""

    rule: str
    open: bool
    opened_at: datetime
    evidence_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientContext:
    """What the rules may know about a patient: orders, prior results and
    prior alerts (withdrawn ones excluded: their evidence was wrong)."""

    patient: PatientKey
    orders: tuple[OrderState, ...]
    history: tuple[Observation, ...] = ()
    demographics: PatientDemographics = field(default_factory=PatientDemographics)
    alerts: tuple[PastAlert, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultMessage:
    header: Header
    patient: PatientKey
    demographics: PatientDemographics
    observations: tuple[Observation, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderMessage:
    header: Header
    patient: PatientKey
    demographics: PatientDemographics
    orders: tuple[MedicationOrder, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeMessage:
    """ADT^A40: the prior identifier (MRG-1) merges into the surviving one (PID-3)."""

    header: Header
    patient: PatientKey
    prior: PatientKey


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherMessage:
    """A message type we store and acknowledge but do not evaluate."""

    header: Header


Message = ResultMessage | OrderMessage | MergeMessage | OtherMessage
