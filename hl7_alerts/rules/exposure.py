"""Who is exposed to a thiopurine when a result is observed (CLINICAL.md
decision 16), and what the alert says about it.

Pure. The rules that judge drug injury (the liver rules, synthetic function,
myelosuppression, unscored results) do not ask "is an order active?": the
engine asks `exposure` once per panel and hands the answer to them, so that a
hold, a recent stop and the follow-up of an open alert are decided in one
place and never by a special case inside a rule. Exposed at t: a thiopurine
order active at t, or held at t, or stopped at most ``exposure_days`` before
t (the drug's effect outlasts its last dose, and a hold is often the first
answer to a problem). Followed at t: stopped at most ``follow_up_days``
before t while an alert of the rule's area is still open (a later panel
still over the thresholds updates or escalates it; one below resolves it).

When the patient is neither, the values still decide whether an open alert
holds (decision 3: stopping never resolves): `judging` gives the rules an
exposure marked as such, and the engine keeps their verdict but sends none of
their findings.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from hl7_alerts.model import OrderState, OrderStatus, PatientContext
from hl7_alerts.rules.common import RuleSettings, thiopurine_orders


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """The thiopurine order a result is judged against, where it stood at the
    result's time, and since when (a hold's start, a stop)."""

    order: OrderState
    status: OrderStatus
    since: datetime | None = None
    judging: bool = False
    """Made up only to judge whether an open alert's values still meet its
    rule; findings made with it are never sent."""

    @property
    def drug(self) -> str:
        return self.order.ingredient or "thiopurine"

    @property
    def active(self) -> bool:
        return self.status is OrderStatus.ACTIVE

    def _since(self) -> str:
        return self.since.date().isoformat() if self.since is not None else "an unknown date"

    @property
    def state(self) -> str:
        """Where the drug stands, for a summary: "on azathioprine", "on
        azathioprine, held since 2026-10-20", "after azathioprine was stopped
        on 2026-10-20"."""
        if self.status is OrderStatus.HELD:
            return f"on {self.drug}, held since {self._since()}"
        if self.status is OrderStatus.STOPPED:
            return f"after {self.drug} was stopped on {self._since()}"
        return f"on {self.drug}"

    def stop_advice(self) -> str:
        """Stop an active drug now; never advise stopping a drug that is held
        or stopped: ask for urgent review instead (decision 16)."""
        if self.status is OrderStatus.HELD:
            held = f"{self.drug.capitalize()} on hold since {self._since()}"
            return f"{held}: urgent clinical review; keep it held"
        if self.status is OrderStatus.STOPPED:
            return f"{self.drug.capitalize()} stopped on {self._since()}: urgent clinical review"
        return f"Discontinue {self.drug} now"

    def hold_advice(self) -> str:
        """Hold an active drug and review; held or stopped: say so, and review."""
        if self.status is OrderStatus.HELD:
            return f"{self.drug.capitalize()} on hold since {self._since()}: review before any restart"
        if self.status is OrderStatus.STOPPED:
            return f"{self.drug.capitalize()} stopped on {self._since()}: review"
        return f"Hold {self.drug} and review"


def exposure(
    ctx: PatientContext, at: datetime, settings: RuleSettings, *, followed: Collection[str] = ()
) -> Exposure | None:
    """The patient's thiopurine exposure at ``at``: an active order (the most
    recently started), else a held one, else the last one stopped within
    ``exposure_days`` — or within ``follow_up_days`` while an alert of one of
    the ``followed`` rules is open. None: not exposed."""
    started = [o for o in thiopurine_orders(ctx, settings) if o.start is not None and o.start <= at]
    by_start = sorted(started, key=lambda o: o.start or at, reverse=True)
    for wanted in (OrderStatus.ACTIVE, OrderStatus.HELD):
        for order in by_start:
            if order.status_at(at) is wanted:
                since = None if wanted is OrderStatus.ACTIVE else _hold_start(order, at)
                return Exposure(order=order, status=wanted, since=since)
    stopped = [o for o in started if o.stop is not None and o.stop <= at]
    if not stopped:
        return None
    last = max(stopped, key=lambda o: o.stop or at)
    assert last.stop is not None
    after = at - last.stop
    followed_open = any(a.open and a.rule in followed for a in ctx.alerts)
    if after <= timedelta(days=settings.exposure_days) or (
        followed_open and after <= timedelta(days=settings.follow_up_days)
    ):
        return Exposure(order=last, status=OrderStatus.STOPPED, since=last.stop)
    return None


def judging(ctx: PatientContext, at: datetime, settings: RuleSettings) -> Exposure | None:
    """An exposure to judge values with when the patient is not exposed: the
    latest thiopurine order, as it stood at ``at``. None without any order
    (then no alert can be open either)."""
    orders = thiopurine_orders(ctx, settings)
    if not orders:
        return None
    order = max(orders, key=lambda o: o.start or at)
    return Exposure(order=order, status=order.status_at(at), since=order.stop, judging=True)


def _hold_start(order: OrderState, at: datetime) -> datetime | None:
    for hold in order.holds:
        if hold.start <= at and (hold.end is None or at < hold.end):
            return hold.start
    return None
