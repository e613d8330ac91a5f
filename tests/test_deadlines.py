"""Deadlines on the receiver's clock (edgecloud.serving.deadlines) and the trace parser's refusal of forged entries."""

from __future__ import annotations

import math

import pytest

from edgecloud.serving.deadlines import (
    SenderClocks,
    default_deadline_s,
    expected_path_s,
    fallback_margin_s,
    finite_float,
)
from edgecloud.serving.trace import MAX_EVENTS, TraceLog, encode_trace, parse_trace, stage_event, transfer_event


@pytest.mark.parametrize("value", [True, "1.0", None, [1.0], math.inf, -math.inf, math.nan, 10**400])
def test_finite_float_refuses_what_is_not_a_finite_number(value) -> None:
    assert finite_float(value) is None


def test_finite_float_takes_ints_and_floats() -> None:
    assert finite_float(3) == 3.0 and finite_float(-2.5) == -2.5


def test_staleness_ignores_a_constant_clock_offset_and_sees_time_spent_in_a_queue() -> None:
    clocks = SenderClocks()
    offset_s = -3.0  # the sender's clock is 3 s behind ours
    for step in range(5):
        now = 1000.0 + step
        assert clocks.staleness_s("client", now + offset_s - 0.002, now) == pytest.approx(0.0, abs=1e-3)
    assert clocks.staleness_s("client", 1010.0 + offset_s - 4.0, 1010.0) == pytest.approx(4.0, abs=1e-2)
    assert clocks.staleness_s("other", 0.0, 1010.0) == 0.0  # each sender has its own baseline


def test_the_baseline_forgets_old_delays_so_a_clock_step_heals() -> None:
    clocks = SenderClocks(window_s=10.0)
    clocks.staleness_s("client", 100.0, 100.0)
    # The sender's clock steps 2 s back: its messages look 2 s late until the window has moved on.
    assert clocks.staleness_s("client", 103.0, 105.0) == pytest.approx(2.0)
    assert clocks.staleness_s("client", 113.0, 115.0) == pytest.approx(0.0)


def test_arrival_prefers_the_relative_budget_and_caps_nothing_itself() -> None:
    clocks = SenderClocks()
    arrival = clocks.arrival("client", {"sent_s": 5.0, "budget_s": 2.0}, header_deadline=7.0, received_s=1000.0,
                             default_s=9.0)
    assert arrival.deadline_s == pytest.approx(1002.0)  # the sender's clock (5 + 2) does not matter
    assert clocks.arrival("x", {}, None, 1000.0, default_s=9.0).deadline_s == 1009.0
    assert clocks.arrival("y", {}, 1500.0, 1000.0, default_s=9.0).deadline_s == 1500.0  # an old client


def test_default_deadline_leaves_the_planned_path_its_time_before_the_fallback() -> None:
    whole_s, predicted_s = 0.7, 0.5  # VGG-19-like: the margin is 1.45 s
    margin_s = fallback_margin_s(whole_s)
    deadline_s = default_deadline_s(predicted_s, whole_s, margin_s)
    assert deadline_s - margin_s >= 2 * expected_path_s(predicted_s, whole_s)
    assert expected_path_s(0.0, whole_s) == pytest.approx(whole_s + 0.05)  # no prediction: the whole model


def test_parse_trace_skips_every_forged_entry_and_keeps_the_good_ones() -> None:
    good = [stage_event(1, "cloud", 1.0, 2.0), transfer_event("edge", "cloud", 0.5, 1.0, 40, from_stage=0)]
    forged = [{"kind": "stage", "start_s": 0.0, "end_s": 1.0, "device": "cloud", "stage": math.inf},
              {"kind": "stage", "start_s": 10**400, "end_s": 1.0, "device": "cloud"},
              {"kind": "stage", "start_s": 0.0, "end_s": 1.0, "device": {"a": 1}},
              {"kind": "stage", "start_s": 0.0, "end_s": 1.0, "device": "cloud", "stage": True},
              {"kind": "teleport", "start_s": 0.0, "end_s": 1.0, "device": "cloud"},
              {"kind": "transfer", "start_s": 0.0, "end_s": 1.0, "device": "cloud", "bytes": -1},
              "not an object", None]
    assert parse_trace([*forged, *encode_trace(good)]) == good
    assert parse_trace({"kind": "stage"}) == []


def test_trace_log_keeps_each_event_once_skips_forged_entries_and_is_bounded() -> None:
    """What an agent holds per request: a DAG's paths bring the shared prefix twice, peers may forge."""
    prefix = [transfer_event("client", "edge", 0.0, 0.1, 40), stage_event(0, "edge", 0.1, 0.2)]
    log = TraceLog()
    for event in prefix:
        log.add(event)
    own = stage_event(1, "cloud", 0.3, 0.4)
    log.merge_raw([*encode_trace(prefix), {"kind": "stage", "start_s": [1], "end_s": 1.0, "device": "x"},
                   {"kind": "stage", "start_s": 0.0, "end_s": 1.0, "device": "cloud", "stage": True},
                   *encode_trace([own]), "not an object"])
    log.merge_raw({"kind": "stage"})
    assert log.events == [*prefix, own]
    assert log.snapshot() == encode_trace([*prefix, own])
    assert parse_trace(log.snapshot()) == log.events
    for index in range(2 * MAX_EVENTS):
        log.add(stage_event(index, "edge", float(index), float(index) + 1.0))
    assert len(log.events) == len(log.snapshot()) == MAX_EVENTS
