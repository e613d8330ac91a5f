"""The link's bandwidth and latency, estimated from the messages that cross it (adaptive serving).

Every message an agent sends carries `meta.sent_s` (the sender's clock) and its tensor bytes; the
receiver notes when it arrived (its own clock) in the request's trace. So each crossing is a sample

    delay = received - sent = latency + offset(direction) + 8 bytes / bandwidth (+ queueing, jitter)

where `offset` is the receiver's clock minus the sender's: +o one way, -o the other. The estimator:

- keeps, per direction, the last WINDOW samples no older than MAX_AGE_S (a sliding window, so that a
  step change of the link fills it with new samples within WINDOW crossings);
- **slope** by Theil–Sen: the median, over all pairs of samples of one direction whose sizes differ by
  at least MIN_SPREAD_BYTES, of (delay_j - delay_i) / (bytes_j - bytes_i); no estimate from fewer than
  MIN_PAIRS pairs, or from pairs whose larger ends are fewer than MIN_LARGE_ENDS distinct samples.
  When MIN_PAIRS pairs have both samples of at least BURST_FREE_BYTES, the slope is theirs alone: a
  token bucket passes a message's first KB at once after a gap, and only such pairs cancel it.
  Pairs within a direction share the clock offset, so it cancels; the median ignores up to ~29 % outliers (a message that sat behind
  another, a descheduled process). Pairs of both directions are pooled: one link, one rate.
  bandwidth = 8 / slope;
- **intercept** per direction: the median of (delay - slope x bytes) = latency + offset(direction);
  with samples both ways the offsets cancel in the mean of the two intercepts (clocks may disagree,
  as `edgecloud.serving.deadlines` allows), with one direction only the clocks are taken as agreeing.

- **step detection**: a window forgets slowly (a step is followed once half of it is new), so when
  STEP_RUN samples in a row of one direction, each of at least MIN_SPREAD_BYTES, are off the current
  fit by more than STEP_REL of their predicted transfer time, on the same side, that direction's older
  samples of that size class are dropped. Small samples stay: they hardly depend on the rate, and they
  carry the intercept.

Why not least squares: one message that waited behind a 100 ms transfer pulls a least-squares slope
anywhere; the median does not move. Why pairs of different sizes: a plan's own traffic often has one
size per direction, which says nothing about the rate on its own; the source agent then probes (see
`edgecloud.serving.agent`), and the probes' sizes differ from the traffic's.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

WINDOW = 12  # samples per direction
MAX_AGE_S = 10.0  # older samples say little about the link now
MIN_SPREAD_BYTES = 512  # a pair of samples closer in size than this says nothing about the rate
MIN_PAIRS = 6  # fewer informative pairs: no estimate (a few first samples can say anything)
# ... and the pairs' larger ends must be at least this many distinct samples: six pairs of one large
# sample against six small ones are one measurement, and one jittered sample then sets the rate (on the
# testbed right after a step: 541.9 Mbit/s estimated at 47.8)
MIN_LARGE_ENDS = 2
# A link shaped by a token bucket (tbf here, ISP shapers elsewhere) passes the first few KB of a message
# after an idle gap at once, so a pair of a tiny and a 16 KB message reads the rate high (76 Mbit/s on the
# testbed's 47.7); a pair of two messages both past the bucket cancels it (46.5 from 32 and 64 KB). When
# the window holds MIN_PAIRS such pairs, the slope is theirs alone.
BURST_FREE_BYTES = 8 * 2**10
STEP_RUN = 2  # large samples in a row off the fit, on one side, that mean the link changed
STEP_REL = 0.5  # off by more than this fraction of the predicted transfer time


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float
    latency_s: float
    pairs: int  # informative pairs the slope is the median of


@dataclass(frozen=True)
class _Sample:
    at_s: float  # when it arrived (the estimator's clock): for the window's age limit
    n_bytes: int
    delay_s: float


class LinkEstimator:
    """One link's samples in both directions ("up" and "down"), and the estimate they give."""

    def __init__(self, window: int = WINDOW, max_age_s: float = MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self.window = window
        self._samples: dict[str, deque[_Sample]] = {"up": deque(maxlen=window), "down": deque(maxlen=window)}
        self._off_run: dict[str, list[int]] = {"up": [], "down": []}  # signs of the last large samples off the fit
        self.steps = 0  # step changes detected
        self._pairs = 0
        self._cached: tuple[float, tuple[float, dict[str, float]] | None] | None = None  # (when, fit) since the last add

    def add(self, direction: str, n_bytes: int, sent_s: float, received_s: float) -> None:
        """One crossing: `sent_s` on the sender's clock, `received_s` on the receiver's."""
        sample = _Sample(received_s, int(n_bytes), received_s - sent_s)
        if sample.n_bytes >= MIN_SPREAD_BYTES:
            self._watch_for_step(direction, sample)
        self._samples[direction].append(sample)
        self._cached = None

    def has_large_since(self, direction: str, since_s: float) -> bool:
        """Whether a sample of at least MIN_SPREAD_BYTES went `direction` since `since_s` (the traffic's own)."""
        return any(s.n_bytes >= MIN_SPREAD_BYTES and s.at_s >= since_s for s in self._samples[direction])

    def _watch_for_step(self, direction: str, sample: _Sample) -> None:
        fit = self._fit(sample.at_s)
        run = self._off_run[direction]
        if fit is None or direction not in fit[1]:
            run.clear()
            return
        slope, intercepts = fit
        transfer_s = slope * sample.n_bytes
        off_s = sample.delay_s - intercepts[direction] - transfer_s
        sign = 0 if abs(off_s) <= STEP_REL * transfer_s else (1 if off_s > 0 else -1)
        if sign == 0 or (run and run[-1] != sign):
            run.clear()
        if sign:
            run.append(sign)
        if len(run) >= STEP_RUN:
            kept = [s for s in self._samples[direction] if s.n_bytes < MIN_SPREAD_BYTES]
            recent_large = [s for s in self._samples[direction] if s.n_bytes >= MIN_SPREAD_BYTES][-(STEP_RUN - 1):]
            self._samples[direction] = deque(sorted(kept + recent_large, key=lambda s: s.at_s), maxlen=self.window)
            run.clear()
            self.steps += 1

    def estimate(self, now_s: float) -> LinkEstimate | None:
        """The estimate from the window's fresh samples, or None while they hold too few informative pairs."""
        fit = self._fit(now_s)
        if fit is None:
            return None
        slope, intercepts = fit
        latency_s = max(0.0, sum(intercepts.values()) / len(intercepts))
        return LinkEstimate(8.0 / slope, latency_s, self._pairs)

    def _fit(self, now_s: float) -> tuple[float, dict[str, float]] | None:
        """Theil–Sen slope (seconds per byte) over the fresh samples and each direction's intercept;
        computed once per new sample (and per second for the age limit): the source asks per request,
        and on a slow edge every millisecond of Python is on the request's path."""
        if self._cached is not None and now_s - self._cached[0] < 1.0:
            return self._cached[1]
        fit = self._compute_fit(now_s)
        self._cached = (now_s, fit)
        return fit

    def _compute_fit(self, now_s: float) -> tuple[float, dict[str, float]] | None:
        fresh = {direction: [s for s in samples if s.at_s >= now_s - self.max_age_s]
                 for direction, samples in self._samples.items()}
        pairs = [(a, b) for samples in fresh.values() for i, a in enumerate(samples) for b in samples[i + 1:]
                 if abs(b.n_bytes - a.n_bytes) >= MIN_SPREAD_BYTES]
        burst_free = [(a, b) for a, b in pairs if min(a.n_bytes, b.n_bytes) >= BURST_FREE_BYTES]
        if len(burst_free) >= MIN_PAIRS:
            pairs = burst_free
        self._pairs = len(pairs)
        large_ends = {id(a if a.n_bytes > b.n_bytes else b) for a, b in pairs}
        if len(pairs) < MIN_PAIRS or len(large_ends) < MIN_LARGE_ENDS:
            return None
        slopes = [(b.delay_s - a.delay_s) / (b.n_bytes - a.n_bytes) for a, b in pairs]
        slope = statistics.median(slopes)
        if slope <= 0:  # bigger messages were not slower: the rate is beyond what the jitter resolves
            return None
        return slope, {direction: statistics.median(s.delay_s - slope * s.n_bytes for s in samples)
                       for direction, samples in fresh.items() if samples}
