"""Pictures of plans: the DAG coloured by device, and latency against bandwidth for every strategy.

matplotlib is imported inside the functions (Agg backend): planning without `--plot` never pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from partitioner.costs import CostGraph, topological_order
from partitioner.plan import Plan


@dataclass(frozen=True)
class SweepPoint:
    bandwidth_bps: float
    plan_s: float
    baselines_s: dict[str, float | None]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_plan(plan: Plan, graph: CostGraph, path: str | Path) -> None:
    """Nodes by depth (x) and rank within their depth (y), coloured by device; tensors crossing devices
    drawn as thick red dashed edges."""
    plt = _pyplot()
    depth: dict[str, int] = {}
    inputs_of: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for tensor in graph.tensors.values():
        for consumer in tensor.consumers:
            if tensor.producer is not None:
                inputs_of[consumer].append(tensor.producer)
    for name in topological_order(graph):
        depth[name] = 1 + max((depth[p] for p in inputs_of[name]), default=-1)
    rank: dict[str, int] = {}
    used: dict[int, int] = {}
    for name in topological_order(graph):
        rank[name] = used.get(depth[name], 0)
        used[depth[name]] = rank[name] + 1
    device_of = plan.layers
    colours = {device: plt.get_cmap("tab10")(i) for i, device in enumerate(plan.devices)}
    width = max(6.0, min(40.0, 0.35 * (max(depth.values(), default=0) + 2)))
    height = max(3.0, min(20.0, 0.5 * (max(used.values(), default=1) + 2)))
    figure, axes = plt.subplots(figsize=(width, height))
    for tensor in graph.tensors.values():
        if tensor.producer is None:
            continue
        for consumer in tensor.consumers:
            crossing = device_of[tensor.producer] != device_of[consumer]
            axes.plot([depth[tensor.producer], depth[consumer]], [rank[tensor.producer], rank[consumer]],
                      color="red" if crossing else "0.6", linestyle="--" if crossing else "-",
                      linewidth=2.0 if crossing else 0.7, zorder=1)
    for device, colour in colours.items():
        members = [name for name in graph.nodes if device_of[name] == device]
        axes.scatter([depth[m] for m in members], [rank[m] for m in members], color=colour, s=40,
                     label=f"{device} ({len(members)})", zorder=2, edgecolors="black", linewidths=0.4)
    if len(graph.nodes) <= 60:
        for name in graph.nodes:
            axes.annotate(name, (depth[name], rank[name]), fontsize=6, xytext=(2, 4), textcoords="offset points")
    axes.plot([], [], color="red", linestyle="--", label=f"crossing tensors ({len(plan.crossing_tensors)})")
    axes.set_title(f"{plan.objective} plan: {plan.predicted_s * 1e3:.2f} ms")
    axes.set_xlabel("depth in the DAG")
    axes.set_yticks([])
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_sweep(points: list[SweepPoint], path: str | Path, objective: str = "latency") -> None:
    """Predicted seconds per strategy against link bandwidth, both axes logarithmic."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    bandwidths = [p.bandwidth_bps for p in points]
    names = list(points[0].baselines_s) if points else []
    for name in names:
        values = [p.baselines_s[name] if p.baselines_s[name] is not None else float("nan") for p in points]
        axes.plot(bandwidths, values, marker=".", linewidth=1.0, label=name)
    axes.plot(bandwidths, [p.plan_s for p in points], color="black", linewidth=2.5, label="plan (ILP)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("bandwidth (bit/s)")
    axes.set_ylabel(f"predicted {objective} (s)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
