"""`hl7-alerts rejected list|show|resend`: a rejected message is not lost
once its cause is fixed. The site lists and reads what was rejected, fixes
its config, and resends the raw messages through the daemon's own frame
handler while the daemon runs: they get the answer a live resend would, the
alerts they raise reach the pagers, and each row says what its resend came to.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.daemon import CLI, make_config, running, write_config
from tests.support.hl7kit import AZA, alt, order_msg, oru
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import events, recording
from tests.support.waiting import WAIT

# The lab and the pharmacy write the identifier type "MRN"; the config says MR.
MRN = "H0990009^^^GENHOSP^MRN"
ORDER = order_msg("RXR1", "NW", "RX9", AZA, "20261001090000", mrn=MRN).encode()
PANEL = oru("LABR1", "20261020080000", alt("400"), mrn=MRN).encode()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    group, *rest = args
    return subprocess.run([*CLI, group, *rest, "--config", str(config)], capture_output=True, timeout=WAIT,
                          check=False, text=True, env={**os.environ})


def site_config(tmp_path: Path, backend: Backend, name: str, **sections: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"store": backend.store_section(), **sections}))
    return path


async def test_list_show_fix_the_config_and_resend_while_the_daemon_runs(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    sections: dict[str, Any] = {"store": backend.store_section(), "rules": {"monitoring": {"enabled": False}}}
    config = make_config(tmp_path, broker.port, prefix, **sections)
    # The commands read the daemon's own config file (its topic prefix names
    # the topics of the alerts a resend raises), before and after the fix.
    as_before = write_config(tmp_path / "before.yaml", broker.port, prefix, **sections)
    fixed = write_config(tmp_path / "fixed.yaml", broker.port, prefix, **sections, patient={"id_type": "MRN"})
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        answers = [ack_fields(await client.send(m)) for m in (ORDER, PANEL)]
        await client.close()
        assert [a["code"] for a in answers] == ["AE", "AE"]

        listed = await asyncio.to_thread(cli, as_before, "rejected", "list")
        assert listed.returncode == 0, listed.stderr
        header, *rows = [line.split("\t") for line in listed.stdout.splitlines()]
        assert header == ["id", "received_at", "ack", "control_id", "sender", "reason", "resent"]
        assert [(r[2], r[3], r[4], r[6]) for r in rows] == [
            ("AE", "LABR1", "LAB|GENHOSP", ""), ("AE", "RXR1", "PHARM|GENHOSP", ""),  # newest first
        ]
        assert rows[0][5].startswith("PID-3 has no patient identifier of type MR")
        panel_id, order_id = rows[0][0], rows[1][0]

        shown = await asyncio.to_thread(cli, as_before, "rejected", "show", panel_id)
        assert "reason      PID-3 has no patient identifier of type MR" in shown.stdout
        assert shown.stdout.splitlines()[-4:] == PANEL.decode().strip("\r").split("\r")[-4:]
        raw = await asyncio.to_thread(
            subprocess.run, [*CLI, "rejected", "show", panel_id, "--raw", "--config", str(as_before)],
            capture_output=True, timeout=WAIT, check=False,
        )
        assert raw.stdout == PANEL

        # Resent with the config as it was: rejected again, and kept once, not twice.
        again = await asyncio.to_thread(cli, as_before, "rejected", "resend", panel_id)
        assert again.returncode == 1
        assert again.stdout.startswith(f"{panel_id}\tLABR1\tAE\tPID-3 has no patient identifier of type MR")

        # The site fixes patient.id_type and resends, order first, while the daemon runs.
        resent = await asyncio.to_thread(cli, fixed, "rejected", "resend", order_id, panel_id)
        assert resent.returncode == 0, resent.stderr
        assert resent.stdout.splitlines() == [
            f"{order_id}\tRXR1\tAA\tstored, 1 alert events",
            f"{panel_id}\tLABR1\tAA\tstored, 1 alert events",
        ]
        alerts = await mqtt.wait_alerts(2)  # published by the running daemon, from the outbox
    assert [(e[1], e[2]) for e in events(alerts)] == [("aza.pgx.missing", "firing"),
                                                       ("aza.hepatotoxicity.stop", "firing")]
    assert {a["patient"]["id_type"] for a in alerts} == {"MRN"}
    assert backend.query("SELECT count(*) FROM rejected_messages") == [(2,)]

    twice = cli(fixed, "rejected", "resend", panel_id)
    assert (twice.returncode, twice.stdout) == (0, f"{panel_id}\tLABR1\tAA\talready on file (a duplicate)\n")
    after = [line.split("\t") for line in cli(fixed, "rejected", "list").stdout.splitlines()[1:]]
    assert [r[6].split(" at ")[0] for r in after] == ["AA", "AA"]
    as_json = [json.loads(line) for line in cli(fixed, "rejected", "list", "--json").stdout.splitlines()]
    assert as_json[0]["resend_text"] == "already on file (a duplicate)"
    assert "raw" not in as_json[0]


def test_unknown_ids_and_an_empty_list(tmp_path: Path, backend: Backend) -> None:
    config = site_config(tmp_path, backend, "c.yaml")

    async def make_store() -> None:
        await (await backend.open()).close()

    asyncio.run(make_store())
    empty = cli(config, "rejected", "list")
    assert (empty.returncode, empty.stdout) == (0, "id\treceived_at\tack\tcontrol_id\tsender\treason\tresent\n")
    missing = cli(config, "rejected", "resend", "42")
    assert (missing.returncode, missing.stdout) == (1, "42\t\t-\tno such rejected message\n")
    shown = cli(config, "rejected", "show", "42")
    assert shown.returncode == 1
    assert shown.stderr.strip() == "Error: no rejected message 42"
