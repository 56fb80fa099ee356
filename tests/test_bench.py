"""The benchmark's own machinery, briefly: what it sends is what the issue
asks for, and the quick mode's code path runs end to end (real Mosquitto,
the daemon on SQLite and two daemons on one PostgreSQL database, reference
servers, load client) on a few hundred messages. Nothing
here is timed: the figures come from `python -m bench.run`."""

from __future__ import annotations

import json
from pathlib import Path

from bench import run
from bench.gen import Generator
from hl7_alerts.config import parse_config
from hl7_alerts.messages import parse_message
from hl7_alerts.model import OrderMessage, ResultMessage


def test_generator_sends_unique_ids_a_tenth_on_azathioprine_and_some_abnormal() -> None:
    gen = Generator(seed=3, run_id="T")
    options = parse_config("{}").parse_options()
    orders = [parse_message(m, options) for m in gen.orders()]
    results = [parse_message(m, options) for m in gen.results(0, 2000)]
    assert all(isinstance(o, OrderMessage) and o.orders[0].ingredient == "azathioprine" for o in orders)
    assert len({o.patient.id for o in orders if isinstance(o, OrderMessage)}) == 100  # 10 % of 1,000
    ids = [m.header.control_id for m in [*orders, *results]]
    assert len(set(ids)) == len(ids)
    abnormal = [
        r for r in results if isinstance(r, ResultMessage) and any(o.flag == "H" for o in r.observations)
    ]
    assert 40 < len(abnormal) < 180  # about 5 %
    assert gen.result(17) == Generator(seed=3, run_id="T").result(17)  # deterministic


def test_quick_mode_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    report = run.main(
        ["--messages", "200", "--rate", "250", "--paced-seconds", "0.4", "--stores", "sqlite,pg2", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    by_server = {r["server"]: r for r in report["results"]}
    assert set(by_server) == {"hl7-alerts", "hl7-alerts pg×2", "python-hl7", "bare"}
    for result in by_server.values():
        assert result["saturation"]["ack_codes"] == {"AA": 200}
        assert result["paced"]["ack_codes"] == {"AA": 100}
        assert result["memory_kib"]["VmHWM"] > 0
    sqlite, pg = by_server["hl7-alerts"], by_server["hl7-alerts pg×2"]
    assert (sqlite["store"], pg["store"], pg["processes"]) == ("sqlite", "postgresql×2", 2)
    # The load client splits its connections between the two daemons.
    per_port = pg["saturation"]["per_port"]
    assert len(per_port) == 2
    assert all(n > 0 for n in per_port.values())
    assert pg["saturation"]["database_cpu_us_per_message"] > 0
    # Waited for: the outbox drained, in the SQLite file and in PostgreSQL.
    assert isinstance(sqlite["alerts_total"], int)
    assert isinstance(pg["alerts_total"], int)
    assert report["postgresql"]["fsync"] == report["postgresql"]["synchronous_commit"] == "on"
    assert set(report["ratios"]) >= {"hl7-alerts/python-hl7", "postgresql×2/sqlite"}
