"""What the testbed plans with: the link, the broker's host, the client's hops and the edge as measured
(`Emulation.priced`), and strategies measured in turns under one time budget (`interleaved_totals`)."""

from __future__ import annotations

import pytest

from edgecloud.cli.demo_steps import RequestOutcome
from edgecloud.cli.testbed_steps import MIN_REQUESTS, Emulation, interleaved_totals
from edgecloud.serving.client import RequestTimings
from edgecloud.testbed.hosts import LocalHosts
from partitioner.costs.cost_graph import CostGraph, to_arrays
from partitioner.costs.objective import latency_s


def two_layer_graph() -> CostGraph:
    return CostGraph.from_dict({
        "format": "edgecloud.costgraph/1", "devices": {"edge": {}, "cloud": {}},
        "links": [{"from": "edge", "to": "cloud", "bandwidth_bps": 1e6, "latency_s": 0.0}],
        "source": "edge", "sink": "edge",
        "nodes": {"a": {"time_s": {"edge": 0.004, "cloud": 0.001}}, "b": {"time_s": {"edge": 0.006, "cloud": 0.001}}},
        "tensors": {"x": {"bytes": 10_000, "producer": None, "consumers": ["a"]},
                    "h": {"bytes": 2_000, "producer": "a", "consumers": ["b"]},
                    "y": {"bytes": 40, "producer": "b", "consumers": [], "output": True}}})


def test_the_plan_is_priced_with_the_measured_rate_message_costs_broker_host_and_edge() -> None:
    emulation = Emulation(LocalHosts("mqtt://127.0.0.1:1"), None, None, broker_device="cloud",
                          message_figures={"message_s": 3e-4, "broker_s": 1e-4, "host_s_per_byte": 1e-9},
                          rates_bps={5e6: 4.8e6}, edge_scale={"m": 0.5})
    priced = emulation.priced(two_layer_graph(), 5e6, "m")
    link = priced.link("edge", "cloud")
    assert (link.bandwidth_bps, link.latency_s, link.message_s, link.broker_s) == (4.8e6, 0.0, 3e-4, 1e-4)
    assert priced.broker == "cloud" and priced.client_link is not None
    assert priced.nodes["a"].time_s == {"edge": 0.002, "cloud": 0.001}  # the edge as calibrated
    arrays = to_arrays(priced)
    all_edge = [0, 0] if arrays.device_names[0] == "edge" else [1, 1]
    import numpy as np

    wire = lambda n: 8 * n / 4.8e6  # noqa: E731
    own = lambda n: 3e-4 + 1e-4 + 1e-9 * n + 8 * n / 1e10  # noqa: E731  the client's hop off the link
    expected = 0.002 + 0.003 + own(10_000) + own(40) + 2 * wire(10_000) + 2 * wire(40)
    assert latency_s(arrays, np.array(all_edge)) == pytest.approx(expected)
    unpriced = emulation.priced(two_layer_graph(), 20e6, "other")  # no rate measured, no calibration: as set
    assert unpriced.link("edge", "cloud").bandwidth_bps == 20e6 and unpriced.nodes["a"].time_s["edge"] == 0.004


def outcome(index: int, total_s: float) -> RequestOutcome:
    return RequestOutcome(index, RequestTimings(total_s), False, 0.0, 0.0)


def test_strategies_take_turns_request_by_request_and_a_slow_one_stops_at_its_budget() -> None:
    calls: list[tuple[str, int]] = []

    def serving(name: str, seconds: float):
        def serve(index: int) -> RequestOutcome:
            calls.append((name, index))
            return outcome(index, seconds)
        return serve

    totals = interleaved_totals({"fast": serving("fast", 0.01), "slow": serving("slow", 1.0)}, requests=10, warmup=1,
                                budget_s=2.5)
    assert calls[:2] == [("fast", -1), ("slow", -1)]  # the warm-up, not counted
    assert calls[2:6] == [("fast", 0), ("slow", 0), ("fast", 1), ("slow", 1)]  # turns, not blocks
    assert len(totals["fast"]) == 10 and len(totals["slow"]) == MIN_REQUESTS  # 5 x 1 s is past 2.5 s, not before


def test_on_the_emulated_link_the_plan_prices_tbfs_bucket_and_each_request_waits_for_it_to_refill() -> None:
    """The bucket tbf gets at each rate, in the payload bytes a frame carries, and each message's own bytes;
    the quiet before a request covers two refills of that bucket and two periods of the edge's quota."""
    from types import SimpleNamespace

    from edgecloud.cli.testbed_steps import MESSAGE_OVERHEAD_BYTES
    from edgecloud.testbed.netns import tbf_arguments

    quota = SimpleNamespace(period_s=lambda: 0.017)
    emulation = Emulation(LocalHosts("mqtt://127.0.0.1:1"), object(), quota, rates_bps={1e6: 0.95e6})  # type: ignore[arg-type]
    for rate_bps in (1e6, 20e6, 100e6, 1e9):
        arguments = tbf_arguments(rate_bps)
        burst = int(arguments[arguments.index("burst") + 1])
        link = emulation.link_at(rate_bps)
        assert link.burst_bytes == pytest.approx(burst * 1448 / 1514) and link.overhead_bytes == MESSAGE_OVERHEAD_BYTES
        assert emulation.idle_gap_s(rate_bps) == pytest.approx(max(2 * 8 * burst / rate_bps, 0.034))
    assert emulation.idle_gap_s(1e6) > 0.034  # 1 Mbit/s: the bucket's refill is the longer wait
    software = Emulation(LocalHosts("mqtt://127.0.0.1:1"), None, None)
    assert software.link_at(1e6).burst_bytes == 0.0 and software.idle_gap_s(1e6) == 0.0


def test_each_counted_request_starts_after_the_quiet_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgecloud.cli.testbed_steps as steps

    events: list[object] = []
    monkeypatch.setattr(steps.time, "sleep", lambda seconds: events.append(seconds))

    def serve(index: int) -> RequestOutcome:
        events.append(index)
        return outcome(index, 0.01)

    interleaved_totals({"only": serve}, requests=3, warmup=1, budget_s=10.0, idle_s=0.025)
    assert events == [-1, 0.025, 0, 0.025, 1, 0.025, 2]


def test_what_a_real_agent_adds_to_the_echos_messages_is_priced_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibration's request through real agents took 2 ms where the echo's two messages cost 0.8 ms:
    each message of a plan then costs 0.6 ms more than the echo said."""
    import edgecloud.transport.hop_costs as hop_costs
    from edgecloud.cli.testbed_steps import AGENT_PROBE_BYTES
    from edgecloud.transport.hop_costs import HopCosts, PathCost

    monkeypatch.setattr(hop_costs, "measure_hop_costs", lambda url, repeats: HopCosts(
        PathCost(small_s=4e-4, large_s=4e-4, samples=repeats), PathCost(small_s=1e-4, large_s=1e-4, samples=repeats)))
    monkeypatch.setattr(Emulation, "agent_request_s", lambda self, requests: 2e-3)
    emulation = Emulation(LocalHosts("mqtt://127.0.0.1:1"), None, None, record={"links": [], "devices": []})
    emulation.calibrate_messages(repeats=8)
    echo_s = 2 * 4e-4
    assert emulation.record["messages"]["echo_request_s"] == pytest.approx(echo_s)
    assert emulation.message_figures["broker_s"] == pytest.approx(1e-4)
    assert emulation.message_figures["message_s"] == pytest.approx(3e-4 + (2e-3 - echo_s) / 2)
    assert AGENT_PROBE_BYTES > 0


def test_the_edges_end_of_each_message_is_priced_at_the_edges_speed() -> None:
    """An edge whose quota made the model's run 5x slower than here pays its half of every message's
    client-library cost 5x: (1 + 5) / 2 = 3x the measured figure; the broker's share stays."""
    emulation = Emulation(LocalHosts("mqtt://127.0.0.1:1"), None, None, broker_device="cloud",
                          message_figures={"message_s": 3e-4, "broker_s": 1e-4, "host_s_per_byte": 1e-9},
                          edge_slowdown={"slow": 5.0})
    slow = emulation.priced(two_layer_graph(), 5e6, "slow")
    for link in (slow.link("edge", "cloud"), slow.client_link):
        assert link is not None
        assert (link.message_s, link.broker_s, link.host_s_per_byte) == pytest.approx((9e-4, 1e-4, 3e-9))
    fast = emulation.priced(two_layer_graph(), 5e6, "fast")  # a full share: as measured
    assert fast.link("edge", "cloud").message_s == pytest.approx(3e-4)
