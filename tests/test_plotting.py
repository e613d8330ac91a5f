"""Plan plots: chains collapse into one mark, crossing-tensor labels do not overlap, big graphs draw."""

from __future__ import annotations

from pathlib import Path

from bench.synthetic_dags import synthetic_cost_graph
from partitioner.costs.cost_graph import topological_order
from partitioner.plan.make_plan import plan_cost_graph
from partitioner.plan.plotting import INPUT, OUTPUT, _layout, _spread_labels, plot_plan


def test_chains_collapse_into_groups_of_one_device_in_order() -> None:
    graph = synthetic_cost_graph(300, 2, seed=3)
    plan = plan_cost_graph(graph)
    device_of = {**plan.layers, INPUT: plan.source, OUTPUT: plan.sink}
    drawing = _layout(graph, device_of)
    groups = [nodes for nodes in drawing.members if nodes[0] not in (INPUT, OUTPUT)]
    assert sorted(node for nodes in groups for node in nodes) == sorted(graph.nodes)
    assert len(groups) < len(graph.nodes) / 1.5  # the synthetic DAG is mostly chain
    position = {name: i for i, name in enumerate(topological_order(graph))}
    for nodes in groups:
        assert len({device_of[node] for node in nodes}) == 1
        assert [position[node] for node in nodes] == sorted(position[node] for node in nodes)
    for tensor in graph.tensors.values():  # an edge never goes backwards in depth
        for consumer in tensor.consumers:
            if tensor.producer is not None and drawing.group_of[tensor.producer] != drawing.group_of[consumer]:
                assert (drawing.position[drawing.group_of[tensor.producer]][0]
                        < drawing.position[drawing.group_of[consumer]][0])


def test_crossing_labels_that_would_overlap_are_dropped_largest_first() -> None:
    candidates = [(float(size), [(5.0, 1.0)], f"{size} B") for size in (10, 30, 20)] + [(5.0, [(50.0, 1.0)], "far")]
    kept = _spread_labels(candidates, [], x_span=100.0, y_span=2.0, at_most=20)
    assert [text for _, _, text in kept] == ["30 B", "far"]
    assert len(_spread_labels(candidates, [], 100.0, 2.0, at_most=1)) == 1
    assert [text for _, _, text in _spread_labels(candidates, [(50.0, 1.0)], 100.0, 2.0, at_most=20)] == ["30 B"]


def test_a_label_moves_along_its_edge_to_a_free_spot() -> None:
    candidates = [(2.0, [(5.0, 1.0)], "first"), (1.0, [(5.0, 1.0), (30.0, 1.0)], "second")]
    assert _spread_labels(candidates, [], 100.0, 2.0, at_most=20) == [(5.0, 1.0, "first"), (30.0, 1.0, "second")]


def test_a_plan_of_two_thousand_nodes_is_drawn(tmp_path: Path) -> None:
    graph = synthetic_cost_graph(2000, 3, seed=0)
    plot_plan(plan_cost_graph(graph), graph, tmp_path / "plan.png")
    assert (tmp_path / "plan.png").stat().st_size > 10_000
