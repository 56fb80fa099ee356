"""`hl7-alerts survey`: what the daemon will understand of a site's feed,
from an archive, before go-live. No store, no broker.

Owns reading an archive (the daemon's own reader: `segments.split_file`,
`messages.parse_message`, the site's `ParseOptions`) and counting what an
integration engineer needs: versions, message types, senders, charsets;
PID-3 identifier types and authorities and how many messages would be keyed
to a patient; every OBX-3 code with the analyte it maps to, and for unmapped
codes whose text reads like an analyte we watch a ready ``config.yaml``
line (keyed by OBX-3.1, as ``terminology.lab_codes`` is); units per analyte
and whether each converts; reference ranges the daemon cannot read; drug
codes and names and what they resolve to; ORC-1 and OBX-11 values; and
hl7apy's structural validation per message type (reported, never enforced;
hl7apy is imported only here, and only when a survey runs). Every message
the daemon would refuse is listed as skipped with its reason. Nothing here
decides anything the pipeline decides: mapping, units and ranges are asked
of `terminology`, the patient key of `messages.read_patient`.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hl7_alerts.messages import ParseOptions, parse_message, read_header, read_patient
from hl7_alerts.replay import Skipped
from hl7_alerts.segments import MessageError, Segment, decode, read_segments, split_file
from hl7_alerts.terminology import Analyte, parse_range, to_canonical

# Names labs give the analytes we watch, as they appear in OBX-3's text or
# code: what a suggested mapping is offered for. Never used to map a result:
# a person reads the suggestion and puts it in config.
_SYNONYMS: tuple[tuple[Analyte, re.Pattern[str]], ...] = tuple(
    (analyte, re.compile(rf"(?<![A-Z0-9])(?:{pattern})(?![A-Z0-9])", re.I))
    for analyte, pattern in (
        (Analyte.ALT, r"ALT|SGPT|S-GPT|GPT|ALAT|ALANINE AMINO ?TRANSFERASE|ALANINE TRANSAMINASE"),
        (Analyte.AST, r"AST|SGOT|S-GOT|GOT|ASAT|ASPARTATE AMINO ?TRANSFERASE|ASPARTATE TRANSAMINASE"),
        (Analyte.ALP, r"ALP|ALK ?PHOS|ALKP|ALKALINE PHOSPHATASE|ALK\.? PHOSPHATASE"),
        (Analyte.GGT, r"GGT|GGTP|GAMMA[- ]?GT|GAMMA[- ]GLUTAMYL ?TRANSFERASE"),
        (Analyte.BILI_DIRECT, r"D\.? ?BILI|DBIL|DIRECT BILIRUBIN|BILIRUBIN,? DIRECT|CONJUGATED BILIRUBIN"),
        (Analyte.BILI_TOTAL, r"T\.? ?BILI|TBIL|TOTAL BILIRUBIN|BILIRUBIN,? TOTAL|BILI TOTAL|BILIRUBIN"),
        (Analyte.ALBUMIN, r"ALB|ALBUMIN"),
        (Analyte.INR, r"INR"),
        (Analyte.PT, r"PT|PROTHROMBIN TIME|PRO ?TIME"),
        (Analyte.WBC, r"WBC|WHITE BLOOD CELLS?|WHITE CELL COUNT|LEUKOCYTES|LEUCOCYTES"),
        (Analyte.NEUTROPHILS, r"ANC|NEUT|NEUTS|NEUTROPHILS?|ABS NEUT|NEUTROPHILS? ABS(?:OLUTE)?"),
        (Analyte.PLATELETS, r"PLT|PLTS|PLATELETS?|PLATELET COUNT|THROMBOCYTES"),
        (Analyte.TPMT, r"TPMT|THIOPURINE (?:S-)?METHYLTRANSFERASE"),
        (Analyte.NUDT15, r"NUDT15"),
    )
)

_DRUG_FIELDS = {"RXE": 2, "RXO": 1, "RXD": 2, "RXA": 5}
# How many messages of each type hl7apy validates (it is slow: milliseconds each).
VALIDATE_PER_TYPE = 100


def suggest(code: str, text: str) -> Analyte | None:
    """The analyte an unmapped code's text (or the code) reads like, if any."""
    for candidate in (text, code):
        for analyte, pattern in _SYNONYMS:
            if candidate and pattern.search(candidate):
                return analyte
    return None


def _form(text: str) -> str:
    """A reference range's shape: digits as 9 (``M:10-50 F:7-35`` → ``M:99-99 F:9-99``)."""
    return re.sub(r"\d", "9", text.strip())


@dataclass(slots=True)
class _Code:
    system: str = ""
    text: str = ""
    analyte: str | None = None
    count: int = 0
    units: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class Survey:
    """Counts over an archive; `document` turns them into the report."""

    options: ParseOptions
    validate_per_type: int = VALIDATE_PER_TYPE
    files: int = 0
    messages: int = 0
    accepted: int = 0
    keyed: int = 0
    with_pid: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    senders: Counter[str] = field(default_factory=Counter)
    charsets: Counter[str] = field(default_factory=Counter)
    identifiers: Counter[tuple[str, str]] = field(default_factory=Counter)
    codes: dict[str, _Code] = field(default_factory=dict)
    units: Counter[tuple[str, str]] = field(default_factory=Counter)
    ranges: Counter[str] = field(default_factory=Counter)
    range_examples: dict[str, str] = field(default_factory=dict)
    drugs: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    order_controls: Counter[str] = field(default_factory=Counter)
    result_statuses: Counter[str] = field(default_factory=Counter)
    validated: Counter[str] = field(default_factory=Counter)
    problems: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    skipped: list[Skipped] = field(default_factory=list)

    def add_file(self, path: Path) -> None:
        self.files += 1
        try:
            raws = split_file(path.read_bytes())
        except OSError as exc:
            self.skipped.append(Skipped(file=str(path), control_id=None, code="unreadable",
                                        reason=exc.strerror or str(exc)))
            return
        if not raws:
            self.skipped.append(Skipped(file=str(path), control_id=None, code="unreadable",
                                        reason="no HL7 message in this file"))
        for raw in raws:
            self.add_message(str(path), raw)

    def add_message(self, source: str, raw: bytes) -> None:
        self.messages += 1
        options = self.options
        text = decode(raw, options.fallback_charset)
        try:
            _, segments = read_segments(text)
            header = read_header(segments, options.timezone)
        except MessageError as exc:
            self.skipped.append(
                Skipped(file=source, control_id=None, code=str(exc.ack_code), reason=exc.reason)
            )
            return
        self.versions[header.version or "(empty)"] += 1
        self.types[header.type_code or "(empty)"] += 1
        self.senders[f"{header.sending_application}^{header.sending_facility}"] += 1
        self.charsets[header.charset or "(none: UTF-8, else hl7.fallback_charset)"] += 1
        try:
            parse_message(raw, options)
        except MessageError as exc:
            self.skipped.append(Skipped(file=source, control_id=header.control_id or None,
                                        code=str(exc.ack_code), reason=exc.reason))
        else:
            self.accepted += 1
        for seg in segments:
            self._segment(seg)
        if any(s.name == "PID" for s in segments):
            self.with_pid += 1
            try:
                read_patient(segments, options)
            except MessageError:
                pass
            else:
                self.keyed += 1
        if self.validated[header.type_code] < self.validate_per_type:
            self.validated[header.type_code] += 1
            for problem in structure_problems(text):
                self.problems[header.type_code][problem] += 1

    def _segment(self, seg: Segment) -> None:
        if seg.name == "PID":
            d = seg.delims
            for rep in seg.repetitions(3):
                parts = rep.split(d.component)
                kind = parts[4].strip().upper() if len(parts) > 4 else ""
                authority = parts[3].split(d.subcomponent)[0].strip() if len(parts) > 3 else ""
                self.identifiers[(kind or "(empty)", authority or "(empty)")] += 1
        elif seg.name == "OBX":
            self._observation(seg)
        elif seg.name == "ORC":
            self.order_controls[seg.get(1).strip().upper() or "(empty)"] += 1
        elif seg.name in _DRUG_FIELDS:
            n = _DRUG_FIELDS[seg.name]
            code, text, system = (seg.get(n, i).strip() for i in (1, 2, 3))
            if code or text:
                ingredient = self.options.terminology.ingredient(code, system, text)
                self.drugs[(seg.name, code, text, ingredient or "")] += 1

    def _observation(self, obx: Segment) -> None:
        ident = [c.strip() for c in obx.components(3)] + [""] * 6
        code, text, system, alt_code, alt_system = ident[0], ident[1], ident[2], ident[3], ident[5]
        analyte = self.options.terminology.analyte(((code, system), (alt_code, alt_system)))
        entry = self.codes.setdefault(code or "(empty)", _Code(system=system, text=text, analyte=analyte))
        entry.count += 1
        units = obx.components(6)
        unit = (units[0].strip() if units else "") or (units[1].strip() if len(units) > 1 else "")
        entry.units[unit] += 1
        if analyte is not None:
            self.units[(analyte, unit)] += 1
        status = obx.get(11).strip().upper()
        self.result_statuses[status or "(empty)"] += 1
        ref = obx.text(7).strip()
        if ref:
            rng = parse_range(ref)
            if rng.low is None and rng.high is None:
                form = _form(ref)
                self.ranges[form] += 1
                self.range_examples.setdefault(form, ref)

    # -- the report ------------------------------------------------------------

    def suggestions(self) -> list[dict[str, Any]]:
        out = []
        for code, entry in sorted(self.codes.items(), key=lambda kv: -kv[1].count):
            if entry.analyte is not None or code == "(empty)":
                continue
            analyte = suggest(code, entry.text)
            if analyte is not None:
                out.append({"code": code, "system": entry.system, "text": entry.text, "analyte": str(analyte),
                            "results": entry.count, "units": dict(entry.units.most_common())})
        return out

    def document(self) -> dict[str, Any]:
        """The whole survey, JSON-ready (the text report prints the same)."""
        suggestions = self.suggestions()
        snippet = ""
        if suggestions:
            lines = ["terminology:", "  lab_codes:"]
            for s in suggestions:
                units = ", ".join(u or "(none)" for u in s["units"])
                note = f"{s['text']!r}, {s['results']} results, {units}"
                lines.append(f'    "{s["code"]}": {s["analyte"]}    # {note}')
            snippet = "\n".join(lines) + "\n"
        return {
            "files": self.files,
            "messages": self.messages,
            "accepted": self.accepted,
            "skipped": [s.as_dict() for s in self.skipped],
            "versions": dict(self.versions.most_common()),
            "message_types": dict(self.types.most_common()),
            "senders": dict(self.senders.most_common()),
            "charsets": dict(self.charsets.most_common()),
            "patient_identifiers": [
                {"id_type": t, "authority": a, "count": n} for (t, a), n in self.identifiers.most_common()
            ],
            "keyed": {"messages_with_pid": self.with_pid, "keyed_to_a_patient": self.keyed,
                      "id_type": " or ".join(self.options.patient_id_types),
                      "untyped_ids": "accept" if self.options.accept_untyped_ids else "reject",
                      "authority": self.options.patient_authority},
            "observation_codes": [
                {"code": code, "system": e.system, "text": e.text, "analyte": e.analyte or "unmapped",
                 "count": e.count}
                for code, e in sorted(self.codes.items(), key=lambda kv: -kv[1].count)
            ],
            "suggested_lab_codes": suggestions,
            "suggested_config": snippet,
            "units": [
                {"analyte": a, "unit": u, "count": n,
                 "converts": to_canonical(Analyte(a), 1.0, u) is not None}
                for (a, u), n in sorted(self.units.items())
            ],
            "unreadable_ranges": [
                {"form": f, "example": self.range_examples[f], "count": n}
                for f, n in self.ranges.most_common()
            ],
            "drugs": [
                {"segment": seg, "code": code, "text": text, "resolves_to": ing or None, "count": n}
                for (seg, code, text, ing), n in sorted(
                    self.drugs.items(), key=lambda kv: (not kv[0][3], -kv[1])
                )
            ],
            "order_controls": dict(self.order_controls.most_common()),
            "result_statuses": dict(self.result_statuses.most_common()),
            "structure": {
                t: {"validated": self.validated[t], "problems": dict(self.problems[t].most_common())}
                for t in sorted(self.validated)
            },
        }


def structure_problems(text: str) -> list[str]:
    """hl7apy's structural validation of one message: the problems it reports
    (none when it finds the message valid). Never raises."""
    from hl7apy.consts import VALIDATION_LEVEL  # noqa: PLC0415 (hl7apy only when a survey runs)
    from hl7apy.parser import parse_message as hl7apy_parse  # noqa: PLC0415
    from hl7apy.validation import Validator  # noqa: PLC0415

    try:
        message = hl7apy_parse(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.TOLERANT,
                               find_groups=True)
    except Exception as exc:
        return [f"hl7apy cannot read it: {type(exc).__name__}: {str(exc)[:120]}"]
    with tempfile.TemporaryDirectory(prefix="hl7-alerts-survey-") as folder:
        report = Path(folder) / "report.txt"
        # It raises the first problem; the report file holds all of them.
        with contextlib.suppress(Exception):
            Validator.validate(message, report_file=str(report))
        lines = report.read_text(encoding="utf-8", errors="replace").splitlines() if report.exists() else []
    return [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]


def survey_files(paths: Sequence[Path], options: ParseOptions, *,
                 validate_per_type: int = VALIDATE_PER_TYPE) -> Survey:
    """Read every file; never raises for bad input (it is in ``skipped``)."""
    survey = Survey(options=options, validate_per_type=validate_per_type)
    for path in paths:
        survey.add_file(path)
    return survey


def text_report(doc: dict[str, Any]) -> list[str]:
    """The survey for people, section by section."""
    out = [f"files {doc['files']}, messages {doc['messages']}, the daemon accepts {doc['accepted']}, "
           f"skipped {len(doc['skipped'])}"]

    def section(title: str, rows: Sequence[str]) -> None:
        out.append("")
        out.append(f"## {title}")
        out.extend(rows or ["(none)"])

    section("versions (MSH-12)", [f"{v}\t{n}" for v, n in doc["versions"].items()])
    section("message types (MSH-9)", [f"{v}\t{n}" for v, n in doc["message_types"].items()])
    section("senders (MSH-3^MSH-4)", [f"{v}\t{n}" for v, n in doc["senders"].items()])
    section("charsets (MSH-18)", [f"{v}\t{n}" for v, n in doc["charsets"].items()])
    k = doc["keyed"]
    section("patient identifiers (PID-3 type, authority)",
            [f"{i['id_type']}\t{i['authority']}\t{i['count']}" for i in doc["patient_identifiers"]]
            + [f"keyed to a patient under patient.id_type {k['id_type']}"
               f"{' from ' + k['authority'] if k['authority'] else ''}"
               f" (untyped identifiers: {k['untyped_ids']}): "
               f"{k['keyed_to_a_patient']} of {k['messages_with_pid']} messages with a PID"])
    section("observation codes (OBX-3): code, system, text, analyte, count",
            [f"{c['code']}\t{c['system']}\t{c['text']}\t{c['analyte']}\t{c['count']}"
             for c in doc["observation_codes"]])
    section("suggested config.yaml for unmapped codes that read like an analyte (check each before use)",
            doc["suggested_config"].splitlines())
    section("units per analyte: analyte, unit, count, converts",
            [f"{u['analyte']}\t{u['unit'] or '(none)'}\t{u['count']}\t{'yes' if u['converts'] else 'NO'}"
             for u in doc["units"]])
    section("reference ranges (OBX-7) the daemon cannot read: form, example, count",
            [f"{r['form']}\t{r['example']}\t{r['count']}" for r in doc["unreadable_ranges"]])
    section("drugs (RXE-2, RXO-1, RXD-2, RXA-5): segment, code, text, resolves to, count",
            [f"{d['segment']}\t{d['code']}\t{d['text']}\t{d['resolves_to'] or 'unresolved'}\t{d['count']}"
             for d in doc["drugs"]])
    section("order controls (ORC-1)", [f"{v}\t{n}" for v, n in doc["order_controls"].items()])
    section("result statuses (OBX-11)", [f"{v}\t{n}" for v, n in doc["result_statuses"].items()])
    rows = []
    for t, s in doc["structure"].items():
        rows.append(f"{t}\tvalidated {s['validated']}\tproblems {sum(s['problems'].values())}")
        rows += [f"\t{p}\t{n}" for p, n in s["problems"].items()]
    section("structure (hl7apy validation, reported only: the daemon does not enforce it)", rows)
    section("skipped: file, control ID, code, reason",
            [f"{s['file']}\t{s['control_id'] or ''}\t{s['code']}\t{s['reason']}" for s in doc["skipped"]])
    return out
