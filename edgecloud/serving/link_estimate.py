"""The link's bandwidth and latency, estimated from the messages that cross it (adaptive serving).

Every message an agent sends carries `meta.sent_s` (the sender's clock) and its tensor bytes; the
receiver notes when it arrived (its own clock) in the request's trace. So each crossing is a sample

    delay = received - sent = latency + offset(direction) + 8 bytes / bandwidth (+ queueing, jitter)

where `offset` is the receiver's clock minus the sender's: +o one way, -o the other. The estimator:

- keeps, per direction, the last WINDOW samples no older than MAX_AGE_S (a sliding window, so that a
  step change of the link fills it with new samples within WINDOW crossings);
- **size classes, minimum delay**: samples of one direction and one exact size are a class, and a
  class speaks through its least delay, and only once it holds MIN_CLASS_SAMPLES samples. Queueing,
  a descheduled sender and a loaded host only ever add delay (the minimum-delay-per-size rule of
  pathchar-style link estimators); on the testbed at load ~10 the source's 48 KB activations took 11-14
  ms for 8.5 unloaded at 47 Mbit/s while its idle-time probes did not, and the median over all
  samples then read 25-33 Mbit/s. One sample alone is not a class: right after a step the window held
  one 32 KB probe that took 16 ms for 6, and it set the rate (30 Mbit/s for 47);
- **slope** by Theil–Sen over the classes: the median, over pairs of classes of one direction whose
  sizes differ by at least MIN_SPREAD_BYTES, of (delay_j - delay_i) / (bytes_j - bytes_i); no estimate
  without such a pair. When pairs of classes both of at least BURST_FREE_BYTES exist, the slope is
  theirs alone: a token bucket passes a message's first KB at once after a gap, and only such pairs
  cancel it. Pairs within a direction share the clock offset, so it cancels; the median ignores a
  class that is off. Pairs of both directions are pooled: one link, one rate. bandwidth = 8 / slope;
- **intercept** per direction: the median over its classes of (least delay - slope x bytes) =
  latency + offset(direction) (over its samples while it has no class; the median over all samples
  let load-slowed ones lift it by 4 ms on the testbed, and every normal sample then looked fast);
  with samples both ways the offsets cancel in the mean of the two intercepts (clocks may disagree,
  as `edgecloud.serving.deadlines` allows), with one direction only the clocks are taken as agreeing.

- **step detection**: a window forgets slowly (a step is followed once half of it is new), so when
  STEP_RUN samples in a row of one direction, each of at least MIN_SPREAD_BYTES, are off the current
  fit on the same side, faster by more than STEP_FASTER_REL (one sample) or slower by more than
  STEP_SLOWER_REL (three, and STEP_SLOWER_MIN_S) of their predicted transfer time, that direction's
  older large samples are dropped. Small
  samples stay: they hardly depend on the rate, and they carry the intercept. The two sides differ
  because a loaded host only ever adds delay: on the testbed at load ~10 two 48 KB activations in a
  row took 1.7x their predicted transfer at an unchanged 47 Mbit/s, and a symmetric 0.5 threshold
  took that for a step, dropped ten good samples and switched plan on the two slow ones (30 Mbit/s).

Why not least squares: one message that waited behind a 100 ms transfer pulls a least-squares slope
anywhere; the median does not move. Why pairs of different sizes: a plan's own traffic often has one
size per direction, which says nothing about the rate on its own; the source agent then probes (see
`edgecloud.serving.agent`), and the probes' sizes differ from the traffic's.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from dataclasses import dataclass

WINDOW = 24  # samples per direction: with the probes' two sizes and the traffic's, each class >= 2
MAX_AGE_S = 10.0  # older samples say little about the link now
MIN_SPREAD_BYTES = 512  # a pair of samples closer in size than this says nothing about the rate
MIN_CLASS_SAMPLES = 2  # a size class speaks through its least delay once it holds this many samples
# A link shaped by a token bucket (tbf here, ISP shapers elsewhere) passes the first few KB of a message
# after an idle gap at once, so a pair of a tiny and a 16 KB message reads the rate high (76 Mbit/s on the
# testbed's 47.7); a pair of two messages both past the bucket cancels it (46.5 from 32 and 64 KB). When
# the window holds such pairs of classes, the slope is theirs alone.
BURST_FREE_BYTES = 8 * 2**10
# Large samples in a row off the fit, on one side, that mean the link changed: one faster (only the link
# makes a transfer faster, and the classes' minima would at once pair the new rate with the old), three
# slower, each also by more than STEP_SLOWER_MIN_S: on the testbed at 95 Mbit/s and load ~13 two 48 KB
# activations in a row took 10 ms for 4.8, two slower samples took that for a step, read 50 Mbit/s from
# those two alone and the next normal one stepped back: a one-request flap wherever a breakpoint lies between.
STEP_RUN = {-1: 1, 1: 3}
STEP_SLOWER_MIN_S = 0.002
STEP_FASTER_REL = 0.5  # faster than the fit by more than this fraction of the predicted transfer time
STEP_SLOWER_REL = 1.0  # slower by more than this: the rate at least halved (load alone rarely does that)


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float
    latency_s: float
    pairs: int  # pairs of size classes the slope is the median of


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
        logger.debug("link sample %s %d B at %.4f: %.3f ms", direction, sample.n_bytes, received_s, sample.delay_s * 1e3)
        if sample.n_bytes >= MIN_SPREAD_BYTES:
            self._watch_for_step(direction, sample)
        self._samples[direction].append(sample)
        self._cached = None

    def _watch_for_step(self, direction: str, sample: _Sample) -> None:
        fit = self._fit(sample.at_s)
        run = self._off_run[direction]
        if fit is None or direction not in fit[1]:
            run.clear()
            return
        slope, intercepts = fit
        transfer_s = slope * sample.n_bytes
        off_s = sample.delay_s - intercepts[direction] - transfer_s
        sign = (1 if off_s > max(STEP_SLOWER_REL * transfer_s, STEP_SLOWER_MIN_S)
                else -1 if off_s < -STEP_FASTER_REL * transfer_s else 0)
        if sign == 0 or (run and run[-1] != sign):
            run.clear()
        if sign:
            run.append(sign)
        if sign and len(run) >= STEP_RUN[sign]:
            kept = [s for s in self._samples[direction] if s.n_bytes < MIN_SPREAD_BYTES]
            large = [s for s in self._samples[direction] if s.n_bytes >= MIN_SPREAD_BYTES]
            recent_large = large[len(large) - (STEP_RUN[sign] - 1):]
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
        classes: dict[tuple[str, int], list[_Sample]] = {}
        for direction, samples in fresh.items():
            for sample in samples:
                classes.setdefault((direction, sample.n_bytes), []).append(sample)
        least = [(direction, n_bytes, min(s.delay_s for s in members))
                 for (direction, n_bytes), members in sorted(classes.items()) if len(members) >= MIN_CLASS_SAMPLES]
        pairs = [(a, b) for i, a in enumerate(least) for b in least[i + 1:]
                 if a[0] == b[0] and b[1] - a[1] >= MIN_SPREAD_BYTES]  # sorted: b is the larger
        burst_free = [(a, b) for a, b in pairs if a[1] >= BURST_FREE_BYTES]
        pairs = burst_free or pairs
        self._pairs = len(pairs)
        if not pairs:
            return None
        slope = statistics.median((b[2] - a[2]) / (b[1] - a[1]) for a, b in pairs)
        if slope <= 0:  # bigger messages were not slower: the rate is beyond what the jitter resolves
            return None
        intercepts = {}
        for direction, samples in fresh.items():
            mine = [delay_s - slope * n_bytes for d, n_bytes, delay_s in least if d == direction]
            if mine or samples:
                intercepts[direction] = statistics.median(mine or [s.delay_s - slope * s.n_bytes for s in samples])
        return slope, intercepts
