"""Which lab codes a feed sends, and what this site's terminology makes of them.

A result whose OBX-3 code maps to no analyte is stored but never read by a
rule, so a site whose lab uses local codes it has not mapped gets no alert
at all. `code_table` turns the store's counts per (code, coding system)
into the table `hl7-alerts codes` prints: code, system, text, results, and
the analyte under the config given now, or "unmapped". Mapping is what the
config says today; results stored before a mapping was added keep the
analyte they were stored with (none), and the table says how many.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hl7_alerts.store import CodeCount
from hl7_alerts.terminology import Terminology

UNMAPPED = "unmapped"


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeRow:
    """One OBX-3 (code, coding system) seen in stored results."""

    code: str
    system: str
    text: str
    results: int
    analyte: str | None  # under the config given; None: unmapped
    stored_unmapped: int  # of ``results``, how many were stored with no analyte

    @property
    def mapping(self) -> str:
        """The analyte column: the analyte, "unmapped", and a note when the
        config maps a code whose results were stored unmapped before."""
        if self.analyte is None:
            return UNMAPPED
        if self.stored_unmapped:
            return f"{self.analyte} (mapped now; {self.stored_unmapped} stored before unmapped)"
        return self.analyte

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "system": self.system,
            "text": self.text,
            "results": self.results,
            "analyte": self.analyte,
            "stored_unmapped": self.stored_unmapped,
        }


HEADER = ("code", "system", "text", "results", "analyte")


def code_table(counts: Iterable[CodeCount], terminology: Terminology) -> list[CodeRow]:
    """One row per (code, system), unmapped codes first, then most results.

    A code the config maps now gets that analyte. One the config does not
    map on its own but that was stored with an analyte keeps it: the result
    carried a code that did map in OBX-3's alternate identifier."""
    merged: dict[tuple[str, str], list[CodeCount]] = {}
    for count in counts:
        merged.setdefault((count.code, count.system), []).append(count)
    rows: list[CodeRow] = []
    for (code, system), group in merged.items():
        now = terminology.analyte(((code, system),))
        stored = next((c.analyte for c in group if c.analyte is not None), None)
        rows.append(
            CodeRow(
                code=code,
                system=system,
                text=max((c.text for c in group), key=len),
                results=sum(c.results for c in group),
                analyte=str(now) if now is not None else stored,
                stored_unmapped=sum(c.results for c in group if c.analyte is None),
            )
        )
    rows.sort(key=lambda r: (r.analyte is not None, -r.results, r.code, r.system))
    return rows
