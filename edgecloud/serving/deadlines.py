"""Request deadlines on the receiver's own clock, whatever the sender's clock says.

Why not the header's absolute `deadline`: it is unix seconds on the *sender's* clock. A client 3 s
behind makes every request look 3 s late; a crafted or replayed one can claim any instant. So senders
carry a relative budget (`meta.budget_s`: seconds left when the message left) and the time they sent it
(`meta.sent_s`, their clock). A receiver turns that into a deadline on its own clock:

    deadline = received - staleness + budget

where `staleness` is how much longer this message took than the quickest recent message of the same
sender: `(received - sent) - min over the last WINDOW_S of (received - sent)`. The clock offset between
the hosts cancels out of that difference, so skew does not matter, while a message that sat in a queue
(a broker outage, a replay) shows up as late by the time it sat there. Only a message without a budget
falls back to the absolute `deadline` (older clients), and one with neither gets `default_s`.

Default deadline (issue 10, item 5): a fixed 2 s left VGG-19 0.6 s before its fallback (margin 1.4 s),
and it fell back. The fallback must start `margin` before the deadline and the planned path needs its
time before that, so a request without a deadline gets PLAN_SLACK x (the plan's prediction + jitter)
plus the margin; measured stage times run 2-3x the prediction here, hence the slack of 3.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

WINDOW_S = 30.0  # how far back the quickest delay of a sender is remembered (adapts to clock steps)
MAX_SENDERS = 1024  # senders whose delays are remembered; the least recent is forgotten first
PLAN_SLACK = 3.0  # measured stage times vs the plan's prediction: 2–3x seen (docs/architecture.md §7, demo figures)
JITTER_S = 0.05  # scheduling and broker hops on a loaded host


def finite_float(value: Any) -> float | None:
    """`value` as a float if it is a finite JSON number (not a bool), else None. Why: JSON gives ints of
    any size and 1e400 parses to inf, so `float(value)` alone can raise OverflowError or yield inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def fallback_margin_s(whole_model_s: float) -> float:
    """How long before the deadline the source starts running the rest itself: twice the time the
    whole model took here (a loaded host is slower than the warm-up) plus jitter."""
    return 2.0 * whole_model_s + JITTER_S


def expected_path_s(predicted_s: float | None, whole_model_s: float) -> float:
    """How long the planned path should take: the plan's prediction, or the whole model's measured
    time when there is none (a plan file made without one says 0), plus jitter."""
    path_s = whole_model_s if predicted_s is None or predicted_s <= 0 else predicted_s
    return path_s + JITTER_S


def default_deadline_s(predicted_s: float | None, whole_model_s: float, margin_s: float) -> float:
    """The deadline a request gets when its sender names none: the planned path's time with slack
    (measured stage times run 2-3x the prediction), then the fallback margin."""
    return PLAN_SLACK * expected_path_s(predicted_s, whole_model_s) + margin_s


@dataclass(frozen=True)
class Arrival:
    """A message's time on the receiver's clock: its deadline and how long it sat somewhere on the way."""

    deadline_s: float
    staleness_s: float


class SenderClocks:
    """Per sender, the quickest recent (received - sent): the baseline that staleness is measured from."""

    def __init__(self, window_s: float = WINDOW_S, max_senders: int = MAX_SENDERS) -> None:
        self.window_s = window_s
        self.max_senders = max_senders
        self._delays: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()

    def staleness_s(self, sender: str, sent_s: float, received_s: float) -> float:
        """How much later than the sender's quickest recent message this one arrived (>= 0)."""
        delay_s = received_s - sent_s
        samples = self._delays.pop(sender, None) or deque()
        while samples and samples[0][0] < received_s - self.window_s:
            samples.popleft()
        # A monotone deque of minima: the front is the window's smallest delay.
        while samples and samples[-1][1] >= delay_s:
            samples.pop()
        samples.append((received_s, delay_s))
        self._delays[sender] = samples
        while len(self._delays) > self.max_senders:
            self._delays.popitem(last=False)
        return delay_s - samples[0][1]

    def arrival(self, sender: str, meta: Any, header_deadline: float | None, received_s: float,
                default_s: float) -> Arrival:
        """The deadline of a message on our clock (see the module docstring); never later than
        `received_s + default_s` when the sender says nothing, and never from the sender's clock alone
        when it carries a budget."""
        budget_s = finite_float(meta.get("budget_s"))
        sent_s = finite_float(meta.get("sent_s"))
        staleness_s = 0.0 if sent_s is None else self.staleness_s(sender, sent_s, received_s)
        if budget_s is not None:
            return Arrival(received_s - staleness_s + budget_s, staleness_s)
        if header_deadline is not None:
            return Arrival(header_deadline, staleness_s)
        return Arrival(received_s - staleness_s + default_s, staleness_s)
