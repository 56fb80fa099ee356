"""Issue 19's stories end to end: real MLLP bytes in, MQTT alert payloads out,
against a real Mosquitto and the daemon on a free port, on each store backend.

Each story is one synthetic patient. A marker patient sent last proves the
publisher has drained everything before it (events go out in commit order),
so the tests can say what did *not* happen: no reassurance, no `resolved`
for a worse panel, no `updated` for the same values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.daemon import make_config, running
from tests.support.hl7kit import ALP, AST, AZA, BILI, order_msg, oru, result
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import recording

ALBUMIN, INR, NEUTROPHILS, PLATELETS = "1751-7", "6301-6", "751-8", "777-3"
MERCAPTOPURINE = "103^Mercaptopurine 50 MG Oral Tablet^RXNORM"
THIOGUANINE = "10485^Thioguanine 40 MG Oral Tablet^RXNORM"
ALLOPURINOL = "519^Allopurinol 100 MG Oral Tablet^RXNORM"
FEBUXOSTAT = "73689^Febuxostat 40 MG Oral Tablet^RXNORM"
STOP, HYS, CHOL, MILD = "aza.hepatotoxicity.stop", "aza.hys_law", "aza.cholestasis", "aza.liver.mild"
SYN, MYELO, MISSING = "aza.synthetic_function", "aza.myelosuppression", "aza.pgx.missing"
HYPERBILI, UNSCORED, LOW_ALP = "aza.hyperbilirubinemia", "aza.result.unscored", "aza.post_stop.low_alp"
MARKER = "H199999"


def mrn(patient: str) -> str:
    return f"{patient}^^^GENHOSP^MR"


def start(patient: str, drug: str = AZA, when: str = "20260901090000", order_id: str = "RX1", **kw: Any) -> str:
    return order_msg(f"{patient}-{order_id}", "NW", order_id, drug, when, mrn=mrn(patient), **kw)


def control(patient: str, ctl: str, when: str, order_id: str = "RX1") -> str:
    return order_msg(f"{patient}-{ctl}{when}", ctl, order_id, AZA, "20260901090000", mrn=mrn(patient), tx=when)


def panel(patient: str, when: str, *results: str) -> str:
    return oru(f"{patient}-L{when}", when, *results, mrn=mrn(patient), specimen=f"S{when}")


def alt(value: str, unit: str = "U/L", ref: str = "7-56", flag: str = "") -> str:
    return f"NM|1742-6^ALT^LN||{value}|{unit}|{ref}|{flag}|||F"


def ast(value: str) -> str:
    return result(AST, value, "U/L", "10-40", name="AST")


def alp(value: str) -> str:
    return result(ALP, value, "U/L", "42-141", name="ALP")


def bili(value: str) -> str:
    return result(BILI, value, "mg/dL", "0.1-1.2", name="Bilirubin total")


def marker() -> list[str]:
    return [start(MARKER), panel(MARKER, "20261201080000", alt("300"))]


async def replay(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend, messages: list[str], **sections: Any
) -> list[dict[str, Any]]:
    """Every alert event the messages cause, through MLLP and MQTT, once the
    marker's critical alert (sent last) has arrived."""
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), **sections)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        for m in [*messages, *marker()]:
            assert ack_fields(await client.send(m.encode()))["code"] in ("AA", "CA"), m[:80]
        await client.close()
        await mqtt.wait_for(lambda _: any(a["patient"]["id"] == MARKER and a["rule"] == STOP for a in mqtt.alerts()))
        return [a for a in mqtt.alerts() if a["patient"]["id"] != MARKER]


def story(alerts: list[dict[str, Any]], patient: str) -> list[tuple[str, str, str]]:
    return [(a["rule"], a["event"], a["severity"]) for a in alerts if a["patient"]["id"] == patient]


async def test_worsening_after_a_stop_escalates_and_nothing_says_resolved(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    """Item 1: azathioprine stopped after ALT 200; the next panel ALT 900,
    AST 700, total bilirubin 5.0, INR 2.2, albumin 2.6 once read "Resolved:
    Azathioprine hepatotoxicity" and nothing else. Now the cholestasis alert
    escalates to critical (jaundice), Hy's law fires, synthetic function
    fires, and the stop alert closes only as superseded by Hy's law
    (decision 19), never as resolved. A mild rise that worsens after the
    stop escalates, with no `resolved` at all."""
    p, q = "H190001", "H190002"
    alerts = await replay(tmp_path, broker, prefix, backend, [
        start(p), panel(p, "20261001080000", alt("200"), alp("300")), control(p, "DC", "20261002090000"),
        panel(p, "20261008080000", alt("900"), ast("700"), alp("320"), bili("5.0"),
              result(INR, "2.2", "", "0.8-1.2", name="INR"), result(ALBUMIN, "2.6", "g/dL", "3.5-5.0", name="Albumin")),
        start(q), panel(q, "20261001080000", alt("120")), control(q, "DC", "20261002090000"),
        panel(q, "20261008080000", alt("150")),
    ])
    assert story(alerts, p) == [
        (MISSING, "firing", "info"), (STOP, "firing", "critical"), (CHOL, "firing", "high"),
        (HYS, "firing", "critical"), (CHOL, "escalated", "critical"), (SYN, "firing", "high"),
        (STOP, "resolved", "critical"),
    ]
    closing = [a for a in alerts if a["event"] == "resolved"]
    assert [(a["rule"], a["reason"]) for a in closing] == [(STOP, "superseded by aza.hys_law")]
    hys = next(a for a in alerts if a["rule"] == HYS)
    assert hys["medication"]["status"] == "stopped"
    assert hys["recommendations"][0] == "Azathioprine stopped on 2026-10-02: urgent clinical review"
    assert "INR 2.2 on this panel" in " ".join(hys["recommendations"])
    assert story(alerts, q) == [(MISSING, "firing", "info"), (MILD, "firing", "warning"), (MILD, "escalated", "high")]


async def test_a_low_alp_with_a_bad_ast_gives_no_reassurance(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    """Item 2: after the stop, ALP 39 with AST 120 (3.0×) and total bilirubin
    2.8 (2.3×) once gave aza.post_stop.low_alp ("likely resolving … no
    intervention if asymptomatic") and resolved the critical alert."""
    p = "H190003"
    alerts = await replay(tmp_path, broker, prefix, backend, [
        start(p), panel(p, "20261001080000", alt("200")), control(p, "DC", "20261002090000"),
        panel(p, "20261016080000", alp("39"), ast("120"), bili("2.8")),
    ])
    assert story(alerts, p) == [(MISSING, "firing", "info"), (STOP, "firing", "critical"),
                                (HYS, "firing", "critical"), (STOP, "resolved", "critical")]
    assert next(a for a in alerts if a["event"] == "resolved")["reason"] == "superseded by aza.hys_law"
    text = " ".join(" ".join((a["title"], a["summary"], *a["recommendations"])) for a in alerts).lower()
    for reassurance in ("favorable", "no intervention", "likely resolving", "normalized"):
        assert reassurance not in text


async def test_the_other_stories_of_issue_19(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    """Items 3 to 10, one patient each, through MLLP and MQTT."""
    held, boundary, counts, unreadable, male, female = (f"H19001{i}" for i in range(6))
    late, jaundice, cholestatic, mp, tg, fx, repeat = (f"H19002{i}" for i in range(7))
    male_panel = panel(male, "20261001080000", alt("45", ref="M:10-50 F:7-35"))
    alerts = await replay(tmp_path, broker, prefix, backend, [
        # 3: held, then ALT 600.
        start(held), control(held, "HD", "20260930120000"), panel(held, "20261001080000", alt("600")),
        # 4: 3.3 µkat/L against 0.1-1.1 is 3.00 × ULN.
        start(boundary), panel(boundary, "20261001080000", alt("3.3", unit="ukat/L", ref="0.1-1.1")),
        # 5: counts in x10E9/L and G/L; ALT flagged HH with no unit or range; sex-specific ranges.
        start(counts), panel(counts, "20261001080000", result(NEUTROPHILS, "0.4", "x10E9/L", name="Neutrophils"),
                             result(PLATELETS, "30", "G/L", name="Platelets")),
        start(unreadable), panel(unreadable, "20261001080000", alt("400", unit="", ref="", flag="HH")),
        start(male), male_panel.replace("|19700101|F", "|19700101|M"),
        start(female), panel(female, "20261001080000", alt("45", ref="M:10-50 F:7-35")),
        # 6: ALT 300 on 1 October, then the order that started 1 September arrives on the 5th.
        panel(late, "20261001080000", alt("300")), start(late, tx="20261005090000"),
        # 7: isolated jaundice; cholestasis with jaundice.
        start(jaundice), panel(jaundice, "20261001080000", bili("4.0"), alt("40"), alp("100")),
        start(cholestatic), panel(cholestatic, "20261001080000", alp("395"), bili("4.0")),
        # 8: mercaptopurine; thioguanine with allopurinol; febuxostat with azathioprine.
        start(mp, MERCAPTOPURINE), panel(mp, "20261001080000", alt("300")),
        start(tg, ALLOPURINOL, order_id="AL1"), start(tg, THIOGUANINE, "20260902090000"),
        start(fx, FEBUXOSTAT, order_id="FX1"), start(fx, AZA, "20260902090000"),
        # 9: the same values again; a second order (a dose change) of the same patient.
        start(repeat), panel(repeat, "20261001080000", alt("300")), panel(repeat, "20261008080000", alt("300")),
        start(repeat, when="20261009090000", order_id="RX2"),
    ], terminology={"thiopurines": ["azathioprine", "mercaptopurine", "thioguanine"]})

    assert story(alerts, held) == [(MISSING, "firing", "info"), (STOP, "firing", "critical")]
    held_alert = next(a for a in alerts if a["patient"]["id"] == held and a["rule"] == STOP)
    assert (held_alert["medication"]["status"], held_alert["title"]) == (
        "held", "Azathioprine hepatotoxicity: ALT 10.71 × ULN (held)")
    assert story(alerts, boundary)[1:] == [(STOP, "firing", "critical")]
    assert story(alerts, counts)[1:] == [(MYELO, "firing", "critical")]
    assert story(alerts, unreadable)[1:] == [(UNSCORED, "firing", "high")]
    assert story(alerts, male)[1:] == []  # 45 against the male 10-50
    assert story(alerts, female)[1:] == [(MILD, "firing", "warning")]  # 45 against 7-35
    assert story(alerts, late) == [(STOP, "firing", "critical")]  # started > 30 days before it arrived: no pgx.missing
    assert next(a for a in alerts if a["patient"]["id"] == late)["occurred_at"] == "2026-10-01T08:00:00+00:00"
    assert story(alerts, jaundice)[1:] == [(HYPERBILI, "firing", "high")]
    assert story(alerts, cholestatic)[1:] == [(CHOL, "firing", "critical")]
    mp_stop = next(a for a in alerts if a["patient"]["id"] == mp and a["rule"] == STOP)
    assert mp_stop["recommendations"][0] == "Discontinue mercaptopurine now"
    mp_text = " ".join(" ".join((a["title"], a["summary"], *a["recommendations"]))
                       for a in alerts if a["patient"]["id"] == mp)
    assert "azathioprine" not in mp_text.lower()
    assert story(alerts, tg) == [(MISSING, "firing", "info")]  # never the interaction for thioguanine
    fx_alert = next(a for a in alerts if a["patient"]["id"] == fx and a["rule"] == "aza.interaction.allopurinol")
    assert fx_alert["severity"] == "critical"
    assert "contraindicated" in fx_alert["recommendations"][0]
    assert not any("1/3" in r for r in fx_alert["recommendations"])
    assert story(alerts, repeat) == [(MISSING, "firing", "info"), (STOP, "firing", "critical")]
    # 10: text a clinician does not trip on, on every page.
    for a in alerts:
        shown = " ".join((a["title"], a["summary"], *a["recommendations"]))
        for wrong in ("Tpmt", "Nudt15", "bilirubin_total", "No liver panel since the last liver panel"):
            assert wrong not in shown
        for reference in a["references"]:
            assert "CLINICAL" not in reference
            assert "shared/" not in reference
