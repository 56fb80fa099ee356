"""Pager acks are authenticated (issue 18 item 6).

With ``mqtt.acks.hmac_key_file`` an ack must carry ``sig``, HMAC-SHA256 over
``alert_id \\n by \\n at``: unsigned and badly signed ones are refused, logged
and counted, and the alert keeps its reminders. Without a key, the broker
must restrict ``<prefix>/acks``: the shipped ACL (docs/mosquitto-acl.conf)
is loaded, verbatim, into a real Mosquitto with accounts, in front of a real
``hl7-alerts serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from structlog.testing import capture_logs

from hl7_alerts.acksig import Verdict, canonical, parse_keys, sign, verify
from hl7_alerts.config import ConfigError, load_config
from tests.support.broker import Broker
from tests.support.daemon import NO_MONITORING, make_config, running, serve, write_config
from tests.support.mllp import send_all
from tests.support.mqtt import recording
from tests.support.samples import OPEN_CRITICAL, ROOT, STOP, sample_messages
from tests.support.waiting import WAIT

# The README's worked example (pager guide): a vendor checks their code against it.
EXAMPLE_KEY = b"example-key-do-not-use-0123456789abcdef"
EXAMPLE = ("8f14e45fceea167a5a36dedd4bea2543", "dr.jones", "2026-11-24T20:05:00Z")
EXAMPLE_SIG = "7dc6d675079080e97c0ab56fe33c05100c2eadb3ad1fe14d5a533f495fe4d76a"

KEY = b"0f6b2c1e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a"
OTHER_KEY = b"a-key-the-site-never-gave-to-anyone-0123456789"


def ack(alert_id: str, by: str, at: str = "2026-11-24T20:05:00Z", *, key: bytes | None = None,
        signed_by: str | None = None, sig: object = None) -> bytes:
    body: dict[str, object] = {"alert_id": alert_id, "by": by, "at": at}
    if key is not None:
        body["sig"] = sign(key, alert_id, signed_by or by, at)
    elif sig is not None:
        body["sig"] = sig
    return json.dumps(body).encode()


def test_the_worked_example_in_the_pager_guide() -> None:
    assert canonical(*EXAMPLE) == b"8f14e45fceea167a5a36dedd4bea2543\ndr.jones\n2026-11-24T20:05:00Z"
    assert sign(EXAMPLE_KEY, *EXAMPLE) == EXAMPLE_SIG
    readme = (ROOT / "README.md").read_text()
    assert EXAMPLE_SIG in readme
    assert EXAMPLE_KEY.decode() in readme


A = "8f14e45fceea167a5a36dedd4bea2543"


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        pytest.param(ack(A, "dr.jones", key=KEY), Verdict.SIGNED, id="signed"),
        pytest.param(ack(A, "dr.jones", sig=sign(KEY, A, "dr.jones", "2026-11-24T20:05:00Z").upper()),
                     Verdict.SIGNED, id="upper-case-hex"),
        pytest.param(ack(A, " dr.jones ", key=KEY), Verdict.SIGNED, id="by-as-sent-not-trimmed"),
        pytest.param(ack(A, "Zoë Ó'Brien", key=KEY), Verdict.SIGNED, id="utf-8"),
        pytest.param(ack(A, "dr.jones"), Verdict.UNSIGNED, id="unsigned"),
        pytest.param(ack(A, "dr.jones", key=OTHER_KEY), Verdict.BAD_SIGNATURE, id="other-key"),
        pytest.param(ack(A, "anyone", key=KEY, signed_by="dr.jones"), Verdict.BAD_SIGNATURE, id="by-changed"),
        pytest.param(ack(A, "dr.jones", "2026-11-24T20:05:00+00:00", key=KEY).replace(b"+00:00", b"Z"),
                     Verdict.BAD_SIGNATURE, id="at-changed"),
        pytest.param(ack(A, "dr.jones", sig="z" * 64), Verdict.BAD_SIGNATURE, id="not-hex"),
        pytest.param(ack(A, "dr.jones", sig="ab"), Verdict.BAD_SIGNATURE, id="short"),
        pytest.param(ack(A, "dr.jones", sig=12), Verdict.BAD_SIGNATURE, id="not-a-string"),
        pytest.param(b"not json", Verdict.UNREADABLE, id="not-json"),
        pytest.param(b'{"alert_id": 1, "by": "x", "at": "y", "sig": "00"}', Verdict.UNREADABLE, id="not-strings"),
    ],
)
def test_verify(data: bytes, verdict: Verdict) -> None:
    assert verify(data, (KEY,)) is verdict


def test_several_keys_let_a_site_rotate() -> None:
    assert verify(ack(A, "dr.jones", key=OTHER_KEY), (KEY, OTHER_KEY)) is Verdict.SIGNED


def test_key_file_lines() -> None:
    assert parse_keys(f"# rotated 2026-11\n\n{KEY.decode()}\n  {OTHER_KEY.decode()}  \n") == (KEY, OTHER_KEY)
    with pytest.raises(ValueError, match="line 2: a key must be at least 32 bytes") as short:
        parse_keys(f"{KEY.decode()}\nshort-secret\n")
    assert "short-secret" not in str(short.value)
    with pytest.raises(ValueError, match="holds no key"):
        parse_keys("# nothing yet\n")


def test_config_loads_the_key_file_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "acks.key").write_text(KEY.decode() + "\n")
    config = tmp_path / "config.yaml"
    config.write_text("mqtt:\n  acks:\n    hmac_key_file: acks.key\n")
    assert load_config(config).mqtt.acks.hmac_key_file == tmp_path / "acks.key"
    config.write_text("mqtt:\n  acks:\n    hmac_key_file: missing.key\n")
    with pytest.raises(ConfigError, match=r"config.yaml:3: mqtt.acks.hmac_key_file: cannot read .*missing.key"):
        load_config(config)
    (tmp_path / "acks.key").write_text("too-short\n")
    config.write_text("mqtt:\n  acks:\n    hmac_key_file: acks.key\n")
    with pytest.raises(ConfigError, match="at least 32 bytes") as short:
        load_config(config)
    assert "too-short" not in str(short.value)


async def test_unsigned_and_badly_signed_acks_are_refused_logged_and_counted(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    key_file = tmp_path / "acks.key"
    key_file.write_text(KEY.decode() + "\n")
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING,
                         mqtt={"acks": {"hmac_key_file": str(key_file)}})
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
        stop = next(a for a in await mqtt.wait_alerts(2) if a["rule"] == STOP)
        alert_id, acks = stop["alert_id"], f"{prefix}/acks"
        with capture_logs() as logs:
            for forged in (
                ack(alert_id, "forger-unsigned"),
                ack(alert_id, "forger-other-key", key=OTHER_KEY),
                ack(alert_id, "forger-changed-by", key=KEY, signed_by="dr.legit"),
            ):
                await mqtt.client.publish(acks, forged, qos=1)
            # In order on one connection: had a forged one been taken, it
            # would be the acknowledgement, and this one a repeat.
            await mqtt.client.publish(acks, ack(alert_id, "dr.legit", key=KEY), qos=1)
            alerts = await mqtt.wait_alerts(3)
        registry = daemon.daemon.metrics.registry

        def count(outcome: str) -> float | None:
            return registry.get_sample_value("hl7_alerts_pager_acks_total", {"outcome": outcome})

        counts = {o: count(o) for o in ("unsigned", "bad_signature", "acknowledged")}
    acknowledged = alerts[2]
    assert (acknowledged["event"], acknowledged["acknowledged"]["by"]) == ("acknowledged", "dr.legit")
    assert counts == {"unsigned": 1, "bad_signature": 2, "acknowledged": 1}
    refused = [e for e in logs if e["event"] == "ack_refused"]
    assert [(e["reason"], e["alert_id"]) for e in refused] == [
        ("unsigned", alert_id), ("bad_signature", alert_id), ("bad_signature", alert_id)
    ]


# -- the shipped Mosquitto ACL, in a real broker ------------------------------------

ACCOUNTS = {"hl7-alerts": "daemon-secret", "pager-ward-a": "ward-a-secret", "pager-ward-b": "ward-b-secret",
            "wall-display": "display-secret"}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto with accounts and docs/mosquitto-acl.conf as shipped."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(passwd).exists():
        pytest.fail("mosquitto_passwd is not installed: `apt-get install mosquitto`", pytrace=False)
    # Mosquitto reads the password and ACL files after it drops root for its
    # own user, who cannot enter pytest's (0700) folders: a folder it can.
    with tempfile.TemporaryDirectory(prefix="hl7-alerts-acl-") as files:
        Path(files).chmod(0o755)
        yield _acl_broker(Path(files), tmp_path / "mosquitto", passwd)


def _acl_broker(files: Path, folder: Path, passwd: str) -> Broker:
    passwords, acl = files / "passwd", files / "acl.conf"
    for number, (user, password) in enumerate(ACCOUNTS.items()):
        subprocess.run([passwd, "-b", *(["-c"] if number == 0 else []), str(passwords), user, password],
                       check=True, capture_output=True)
    shutil.copyfile(ROOT / "docs" / "mosquitto-acl.conf", acl)
    for path in (passwords, acl):
        path.chmod(0o644)  # Mosquitto, started as root, reads them as its own user
    return Broker(folder, anonymous=False, extra_conf=f"password_file {passwords}\nacl_file {acl}\n")


async def test_only_pager_accounts_may_acknowledge_through_the_shipped_acl(
    tmp_path: Path, acl_broker: Broker
) -> None:
    acl_broker.start()
    prefix = "hl7alerts"  # the ACL as shipped names the default prefix
    config = write_config(tmp_path / "config.yaml", acl_broker.port, prefix, rules=NO_MONITORING,
                          mqtt={"client_id": "hl7-alerts", "username": "hl7-alerts",
                                "password": ACCOUNTS["hl7-alerts"]})
    try:
        with pytest.raises(aiomqtt.MqttError):  # no account, no connection
            async with aiomqtt.Client("127.0.0.1", acl_broker.port, protocol=aiomqtt.ProtocolVersion.V5):
                pass
        async with (
            recording(acl_broker, prefix, username="wall-display", password=ACCOUNTS["wall-display"]) as display,
            recording(acl_broker, prefix, username="pager-ward-b", password=ACCOUNTS["pager-ward-b"]) as ward_b,
            aiomqtt.Client("127.0.0.1", acl_broker.port, username="pager-ward-a", password=ACCOUNTS["pager-ward-a"],
                           protocol=aiomqtt.ProtocolVersion.V5) as ward_a,
            serve(config) as daemon,
        ):
            await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
            stop = next(a for a in await display.wait_alerts(2) if a["rule"] == STOP)
            # A read-only account's ack is dropped by the broker (the daemon
            # never sees it); a pager's, published after it, is recorded.
            with contextlib.suppress(aiomqtt.MqttError):
                await display.client.publish(f"{prefix}/acks", ack(stop["alert_id"], "wall-display"), qos=1)
            await ward_a.publish(f"{prefix}/acks", ack(stop["alert_id"], "dr.legit"), qos=1)
            alerts = await display.wait_alerts(3, timeout=WAIT)
            await ward_b.wait_alerts(3)
            ward_b_topics = [t for t, _ in ward_b.messages]
    finally:
        acl_broker.stop()
    assert (alerts[2]["event"], alerts[2]["acknowledged"]["by"]) == ("acknowledged", "dr.legit")
    assert f"{prefix}/status" in ward_b_topics  # pagers read the daemon's status ...
    assert f"{prefix}/acks" not in ward_b_topics  # ... but not other pagers' acks (no replay)
    assert daemon.events("ack_received")[0]["outcome"] == "acknowledged"
    assert len(daemon.events("ack_received")) == 1


async def test_the_shipped_acl_lets_daemons_share_the_acks(acl_broker: Broker) -> None:
    """Several daemons on PostgreSQL read acks through $share/hl7-alerts/...:
    the ACL's read grant on hl7alerts/acks covers it."""
    acl_broker.start()
    try:
        async with (
            aiomqtt.Client("127.0.0.1", acl_broker.port, username="hl7-alerts", password=ACCOUNTS["hl7-alerts"],
                           protocol=aiomqtt.ProtocolVersion.V5) as daemon,
            aiomqtt.Client("127.0.0.1", acl_broker.port, username="pager-ward-a", password=ACCOUNTS["pager-ward-a"],
                           protocol=aiomqtt.ProtocolVersion.V5) as pager,
        ):
            await daemon.subscribe("$share/hl7-alerts/hl7alerts/acks", qos=1)
            await pager.publish("hl7alerts/acks", ack(A, "dr.legit"), qos=1)
            async with asyncio.timeout(WAIT):
                message = await anext(aiter(daemon.messages))
    finally:
        acl_broker.stop()
    assert json.loads(message.payload)["by"] == "dr.legit"  # type: ignore[arg-type]
