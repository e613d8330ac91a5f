"""`plan --adaptive`: the plan set covers its range, and at every bandwidth inside an interval that
interval's placement is optimal — checked against brute force on random DAGs and against `plan
--bandwidth` on a bundled model at random bandwidths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cost_graph_strategies import cost_graphs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgecloud.cli.app import app
from partitioner.costs.cost_graph import to_arrays
from partitioner.costs.objective import LATENCY
from partitioner.errors import InfeasiblePlanError, PartitionerError
from partitioner.plan.plan_set import adaptive_plans, load_plan_set
from partitioner.solve.baselines import brute_force
from partitioner.solve.optimal import structural_infeasibility

LOW_BPS, HIGH_BPS = 1e5, 1e10


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cost_graphs(max_nodes=7, memory=False), fractions=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6))
def test_each_interval_placement_is_optimal_everywhere_inside_it(graph, fractions) -> None:
    assume(structural_infeasibility(to_arrays(graph)) is None)
    link = next(iter(graph.links))
    try:
        plans = adaptive_plans(graph, link, LOW_BPS, HIGH_BPS)
    except InfeasiblePlanError:
        assume(False)
    pieces = plans.pieces
    assert pieces[0].low_bps == LOW_BPS and pieces[-1].high_bps == HIGH_BPS
    assert all(a.high_bps == b.low_bps and a.low_bps < a.high_bps for a, b in zip(pieces, pieces[1:]))
    assert plans.solves <= 2 * len(pieces)  # the search adds a piece or a breakpoint per solve
    breakpoints = [p.low_bps for p in pieces[1:]]
    # random points, the breakpoints themselves and points just beside them
    points = [LOW_BPS * (HIGH_BPS / LOW_BPS) ** f for f in fractions] + breakpoints
    points += [b * (1 + side * 1e-6) for b in breakpoints for side in (-1, 1)]
    for bandwidth_bps in points:
        arrays = to_arrays(plans.graph_at(bandwidth_bps))
        _, optimum_s = brute_force(arrays, LATENCY)
        piece = plans.piece_at(bandwidth_bps)
        assert math.isclose(LATENCY.evaluate(arrays, piece.solution.placement), optimum_s, rel_tol=1e-7, abs_tol=1e-12)
    for piece in pieces:  # the reported ends are the placement's own latency there
        for bandwidth_bps, predicted_s in zip((piece.low_bps, piece.high_bps), piece.predicted_s):
            arrays = to_arrays(plans.graph_at(bandwidth_bps))
            assert math.isclose(LATENCY.evaluate(arrays, piece.solution.placement), predicted_s, rel_tol=1e-9,
                                abs_tol=1e-12)


def test_cli_plan_set_matches_plan_at_random_bandwidths(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["plan", "resnet18", "--adaptive", "--bandwidth", "100kbit..10Gbit", "--latency", "1ms",
                               "-o", str(tmp_path / "plans.json")])
    assert made.exit_code == 0, made.output
    data = json.loads((tmp_path / "plans.json").read_text())
    assert data["format"] == "edgecloud.plans/1" and data["bandwidth_bps"] == [1e5, 1e10]
    intervals = load_plan_set(tmp_path / "plans.json")
    assert len(intervals) >= 2, "resnet18 at 1 ms changes its optimum across four decades of bandwidth"
    assert all(Path(i.plan.model).is_file() and i.plan.model_sha256 == data["model_sha256"] for i in intervals)
    rng = np.random.default_rng(0)
    for bandwidth_bps in [*10 ** rng.uniform(5, 10, 4), *(i.high_bps * 1.001 for i in intervals[:-1])]:
        single = runner.invoke(app, ["plan", "resnet18", "--bandwidth", f"{bandwidth_bps:.6f}bit", "--latency", "1ms",
                                     "--json"])
        assert single.exit_code == 0, single.output
        optimum_s = json.loads(single.output)["predicted_s"]
        interval = next(i for i in intervals if i.low_bps <= bandwidth_bps <= i.high_bps)
        (at_low, at_high), low, high = interval.predicted_s, interval.low_bps, interval.high_bps
        slope = (at_low - at_high) / (1 / low - 1 / high)  # the interval's placement is affine in 1/bandwidth
        assert math.isclose(at_high + slope * (1 / bandwidth_bps - 1 / high), optimum_s, rel_tol=1e-6)
        assert interval.plan.predicted_s == at_low and set(interval.plan.placement.values()) <= {"edge", "cloud"}


def test_a_plan_set_with_a_gap_or_a_bad_interval_is_refused(tmp_path: Path) -> None:
    made = CliRunner().invoke(app, ["plan", "resnet18", "--adaptive", "--bandwidth", "100kbit..10Gbit",
                                    "--latency", "1ms", "-o", str(tmp_path / "plans.json")])
    assert made.exit_code == 0, made.output
    data = json.loads((tmp_path / "plans.json").read_text())
    gap = json.loads(json.dumps(data))
    gap["plans"][1]["bandwidth_bps"][0] *= 1.5
    bad_device = json.loads(json.dumps(data))
    first_node = next(iter(bad_device["plans"][0]["placement"]))
    bad_device["plans"][0]["placement"][first_node] = "moon"
    for broken, words in ((gap, "sorted, adjacent and cover"), (bad_device, "interval 1: node")):
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        with pytest.raises(PartitionerError, match=words):
            load_plan_set(tmp_path / "broken.json")


def test_adaptive_refuses_what_it_cannot_make_exact(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, words in ((["--objective", "throughput"], "latency objective only"),
                        (["--bandwidth", "20Mbit"], "range such as 1Mbit..1Gbit"),
                        (["--plot", str(tmp_path / "p.png")], "edgecloud sweep --plot")):
        result = runner.invoke(app, ["plan", "chain", "--adaptive", *args])
        assert result.exit_code == 2 and result.output.startswith("error: ") and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_split_of_a_plan_set_writes_every_interval_and_each_runs_like_the_whole_model(tmp_path: Path) -> None:
    from test_split import _assert_split_matches

    from partitioner.split.manifest import load_manifest

    runner = CliRunner()
    made = runner.invoke(app, ["plan", "resnet18", "--adaptive", "--bandwidth", "100kbit..10Gbit", "--latency", "1ms",
                               "-o", str(tmp_path / "plans.json")])
    assert made.exit_code == 0, made.output
    intervals = load_plan_set(tmp_path / "plans.json")
    split = runner.invoke(app, ["split", str(tmp_path / "plans.json"), "-o", str(tmp_path / "stages")])
    assert split.exit_code == 0, split.output
    for index, interval in enumerate(intervals):
        manifest = load_manifest(tmp_path / "stages" / f"interval-{index + 1}")
        assert {stage.device for stage in manifest.stages} == set(interval.plan.placement.values())
        _assert_split_matches(interval.plan.model, manifest)
