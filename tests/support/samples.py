"""The sample feed in samples/: where it is, and its messages by file name."""

from __future__ import annotations

from pathlib import Path

from hl7_alerts.segments import split_file

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "samples"

# The seed story: an azathioprine order (aza.pgx.missing: no TPMT/NUDT15 on
# file), a liver panel above 3 x ULN (aza.hepatotoxicity.stop, critical), the
# discontinuation, and a low ALP two weeks later (aza.post_stop.low_alp, which
# also resolves the critical alert).
SEED_STORY = [
    "01_seed_order_azathioprine.hl7",
    "02_seed_liver_panel_above_3xuln.hl7",
    "03_seed_discontinue_azathioprine.hl7",
    "04_seed_low_alp_two_weeks_later.hl7",
]
# The seed order and its critical panel, without the later messages that stop
# the drug and resolve the alert: the critical alert stays open.
OPEN_CRITICAL = SEED_STORY[:2]
PGX, STOP = "aza.pgx.missing", "aza.hepatotoxicity.stop"


def sample_messages(*names: str) -> list[bytes]:
    """The messages of the named sample files, in order."""
    out: list[bytes] = []
    for name in names:
        out.extend(split_file((SAMPLES / name).read_bytes()))
    return out
