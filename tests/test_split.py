"""Splitting a model into per-device stages: the pieces run in order give the whole model's outputs."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from serving_helpers import DEVICES, bouncing_placement, node_ids, write_plan
from typer.testing import CliRunner

from devices.sessions import make_session
from edgecloud.cli.app import app
from edgecloud.cli.demo_steps import model_inputs
from edgecloud.serving.stage_runner import run_split
from partitioner.errors import PartitionerError
from partitioner.graph.onnx_names import name_nodes_uniquely
from partitioner.models.zoo import MODEL_NAMES, cached_model_path
from partitioner.split.manifest import SplitManifest, load_manifest
from partitioner.split.onnx_split import cached_split, plan_content_hash, split_model

def _reference(model_path: Path | str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = make_session(str(model_path))
    names = [item.name for item in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _assert_split_matches(model_path: Path | str, manifest: SplitManifest) -> None:
    inputs = model_inputs(manifest, seed=0)
    expected = _reference(model_path, inputs)
    actual = run_split(manifest, inputs)
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_random_and_bouncing_placements_reproduce_every_bundled_model(name: str, tmp_path: Path) -> None:
    model_path = cached_model_path(name)
    ids = node_ids(model_path)
    rng = random.Random(7)
    placements = {
        "random": {node: rng.choice(DEVICES) for node in ids},
        "bounce": bouncing_placement(ids, runs=4),
    }
    for label, placement in placements.items():
        manifest = split_model(model_path, placement, "edge", "edge", tmp_path / label, devices=DEVICES)
        for stage in manifest.stages:
            onnx.checker.check_model(onnx.load(str(manifest.stage_path(stage))), full_check=True)
            assert {placement[node] for node in stage.nodes} == {stage.device}
        assert sorted(node for stage in manifest.stages for node in stage.nodes) == sorted(ids)
        _assert_split_matches(model_path, manifest)


@pytest.mark.parametrize("name", ["resnet18", "transformer"])
def test_stages_keep_the_dynamic_batch_dimension(name: str, tmp_path: Path) -> None:
    model_path = cached_model_path(name)
    manifest = split_model(model_path, bouncing_placement(node_ids(model_path), runs=4), "edge", "edge", tmp_path)
    (spec,) = manifest.graph_inputs
    assert isinstance(spec.shape[0], str)  # symbolic
    x = np.random.default_rng(0).standard_normal([3, *spec.shape[1:]]).astype(spec.dtype)
    (output,) = run_split(manifest, {spec.name: x}).values()
    np.testing.assert_allclose(output, _reference(model_path, {spec.name: x})["output"], rtol=1e-5, atol=1e-5)
    assert output.shape[0] == 3


def test_bouncing_placement_visits_each_device_twice(tmp_path: Path) -> None:
    model_path = cached_model_path("chain")
    manifest = split_model(model_path, bouncing_placement(node_ids(model_path), runs=4), "edge", "edge", tmp_path)
    assert [stage.device for stage in manifest.stages] == ["edge", "cloud", "edge", "cloud"]
    assert [stage.index for stage in manifest.stages_of("cloud")] == [1, 3]
    last = manifest.stages[-1]
    assert [item.to_sink for item in last.outputs] == [True]
    assert manifest.sink_inputs[0].origin is not None and manifest.sink_inputs[0].origin.stage == 3


def test_device_without_nodes_is_source_and_sink_only(tmp_path: Path) -> None:
    model_path = cached_model_path("mlp")
    placement = {node: "cloud" for node in node_ids(model_path)}
    manifest = split_model(model_path, placement, "edge", "edge", tmp_path, devices=DEVICES)
    assert manifest.devices == ["edge", "cloud"]
    assert manifest.stages_of("edge") == []
    assert [ref.device for item in manifest.source_outputs for ref in item.destinations] == ["cloud"]
    assert manifest.sink_inputs[0].origin is not None and manifest.sink_inputs[0].origin.device == "cloud"
    assert load_manifest(tmp_path).to_dict()["devices"] == {"edge": {"stages": []}, "cloud": {"stages": [0]}}
    _assert_split_matches(model_path, manifest)


def test_parallel_branches_on_two_devices_make_one_stage_each(tmp_path: Path) -> None:
    """Inception's branches alternate in the exporter's node order; the device-sticky order groups them."""
    model_path = cached_model_path("inception")
    model = onnx.load(str(model_path))
    ids = name_nodes_uniquely(model.graph)
    concat = next(node for node in model.graph.node if node.op_type == "Concat")
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    fan_out = next(name for name, count in consumers.items() if count == 4)  # the block's input
    producer = {output: node for node in model.graph.node for output in node.output}
    # The first branch: ancestors of Concat's first input, back to (not including) the fan-out tensor.
    branch: set[str] = set()
    frontier = [concat.input[0]]
    while frontier:
        name = frontier.pop()
        if name != fan_out and name in producer and producer[name].name not in branch:
            branch.add(producer[name].name)
            frontier.extend(producer[name].input)
    after = set(ids[ids.index(concat.name):])
    placement = {node: "cloud" if node in branch | after else "edge" for node in ids}
    manifest = split_model(model_path, placement, "edge", "edge", tmp_path)
    assert [stage.device for stage in manifest.stages] == ["edge", "cloud"]
    _assert_split_matches(model_path, manifest)


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    model_path = cached_model_path("resnet18")
    rng = random.Random(3)
    placement = {node: rng.choice(DEVICES) for node in node_ids(model_path)}
    manifest = split_model(model_path, placement, "edge", "cloud", tmp_path, plan_sha256="abc")
    loaded = load_manifest(tmp_path)
    assert loaded.to_dict() == manifest.to_dict()
    assert loaded.model_path() == Path(model_path).resolve()
    assert loaded.sink == "cloud" and loaded.plan_sha256 == "abc"


def test_placement_missing_a_node_is_refused(tmp_path: Path) -> None:
    model_path = cached_model_path("mlp")
    placement = dict.fromkeys(node_ids(model_path)[1:], "edge")
    with pytest.raises(PartitionerError, match="no device"):
        split_model(model_path, placement, "edge", "edge", tmp_path)


def test_split_of_a_plan_is_cached_by_content_and_redone_when_the_plan_changes(tmp_path: Path) -> None:
    model_path = cached_model_path("mlp")
    plan_path = write_plan(model_path, tmp_path, runs=2)
    first = cached_split(plan_path)
    assert cached_split(plan_path).directory == first.directory
    assert first.plan_sha256 == plan_content_hash(plan_path)
    write_plan(model_path, tmp_path, runs=3)
    changed = cached_split(plan_path)
    assert changed.directory != first.directory and len(changed.stages) == 3
    _assert_split_matches(model_path, changed)


def test_split_command_writes_stages_and_manifest(tmp_path: Path) -> None:
    plan_path = write_plan(cached_model_path("chain"), tmp_path)
    outcome = CliRunner().invoke(app, ["split", str(plan_path), "-o", str(tmp_path / "out")])
    assert outcome.exit_code == 0, outcome.output
    manifest = load_manifest(tmp_path / "out")
    assert [stage.device for stage in manifest.stages] == ["edge", "cloud", "edge", "cloud"]
    assert all(manifest.stage_path(stage).is_file() for stage in manifest.stages)
    assert "4 stage(s)" in outcome.output


def test_split_command_reports_a_missing_plan_in_one_line(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(app, ["split", str(tmp_path / "nope.json"), "-o", str(tmp_path / "out")])
    assert outcome.exit_code == 2
    assert outcome.output.startswith("error: ") and "does not exist" in outcome.output


def test_corrupt_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": "edgecloud.split/1", "stages": []}')
    with pytest.raises(PartitionerError, match="malformed"):
        load_manifest(tmp_path)


def _diamond_with_if_model() -> onnx.ModelProto:
    """x -> a=Relu(x); b=Neg(x); c=Add(a,b); If(cond) whose branches read `c` from the outer scope;
    plus a graph output that is the graph input itself. Covers DAG joins, control flow and pass-through."""
    then_branch = helper.make_graph([helper.make_node("Abs", ["c"], ["then_out"], name="then_abs")], "then", [],
                                    [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 3])])
    else_branch = helper.make_graph([helper.make_node("Sigmoid", ["c"], ["else_out"], name="else_sig")], "else",
                                    [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 3])])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Neg", ["x"], ["b"], name="neg"),
        helper.make_node("Add", ["a", "b"], ["c"], name="add"),
        helper.make_node("ReduceSum", ["c"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="greater"),
        helper.make_node("If", ["cond"], ["branched"], name="if", then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Mul", ["branched", "a"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes, "diamond",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(devices=st.lists(st.sampled_from(("edge", "cloud", "fog")), min_size=7, max_size=7),
       sink=st.sampled_from(("edge", "cloud")))
def test_any_placement_of_a_dag_with_control_flow_reproduces_it(devices: list[str], sink: str,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    model = _diamond_with_if_model()
    model_path = tmp_path_factory.mktemp("diamond") / "diamond.onnx"
    onnx.save(model, str(model_path))
    placement = dict(zip((node.name for node in model.graph.node), devices))
    manifest = split_model(model_path, placement, "edge", sink, model_path.parent / "split")
    if_stage = next(stage for stage in manifest.stages if "if" in stage.nodes)
    if "add" not in if_stage.nodes:  # the If body reads `c` from the outer scope: it must be a stage input
        assert "c" in [item.tensor for item in if_stage.inputs]
    stage_order = {stage.index: position for position, stage in enumerate(manifest.stages)}
    for stage in manifest.stages:
        for item in stage.inputs:
            assert item.origin is None or stage_order[item.origin.stage] < stage_order[stage.index]
    _assert_split_matches(model_path, manifest)


def _old_ir_model_file(folder: Path) -> Path:
    from old_ir_models import old_ir_model

    path = folder / "old_zoo_net.onnx"
    onnx.save(old_ir_model(), str(path))
    return path


def test_an_ir3_model_with_weight_chains_splits_and_runs_like_the_whole_model(tmp_path: Path) -> None:
    """IR < 4 lists initializers as graph inputs; stages cut from it used to fail the checker."""
    model_path = _old_ir_model_file(tmp_path)
    manifest = split_model(model_path, bouncing_placement(node_ids(model_path), 3), "edge", "edge", tmp_path / "out",
                           devices=DEVICES)
    assert [spec.name for spec in manifest.graph_inputs] == ["data"]
    for stage in manifest.stages:
        onnx.checker.check_model(onnx.load(str(manifest.stage_path(stage))), full_check=True)
        assert not any(node.startswith(("Constant", "Mul_", "Add_", "Reshape_")) for node in stage.nodes)
    _assert_split_matches(model_path, manifest)


def test_cli_plans_splits_an_ir3_model_without_a_traceback(tmp_path: Path) -> None:
    model_path = _old_ir_model_file(tmp_path)
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", str(model_path), "--bandwidth", "1Gbit", "-o", str(tmp_path / "plan.json")])
    assert planned.exit_code == 0, planned.output
    split = runner.invoke(app, ["split", str(tmp_path / "plan.json"), "-o", str(tmp_path / "out")])
    assert split.exit_code == 0, split.output
    _assert_split_matches(model_path, load_manifest(tmp_path / "out"))


def test_placement_naming_nodes_the_model_lacks_is_refused(tmp_path: Path) -> None:
    model_path = cached_model_path("mlp")
    placement = {**dict.fromkeys(node_ids(model_path), "edge"), "node_from_another_model": "cloud"}
    with pytest.raises(PartitionerError, match="does not have.*node_from_another_model"):
        split_model(model_path, placement, "edge", "edge", tmp_path)


def test_a_plan_for_a_replaced_model_is_refused_unless_forced(tmp_path: Path) -> None:
    from partitioner.models.zoo import export_model

    model_path = tmp_path / "chain.onnx"
    model_path.write_bytes(cached_model_path("chain").read_bytes())
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", str(model_path), "-o", str(tmp_path / "plan.json")])
    assert planned.exit_code == 0, planned.output
    assert json.loads((tmp_path / "plan.json").read_text())["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    export_model("chain", model_path, seed=1)  # same graph, other weights: another model
    refused = runner.invoke(app, ["split", str(tmp_path / "plan.json"), "-o", str(tmp_path / "out")])
    assert refused.exit_code == 2
    assert refused.output.startswith("error: ") and len(refused.output.strip().splitlines()) == 1
    assert "--force" in refused.output and not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(PartitionerError, match="not the model the plan was made for"):
        cached_split(tmp_path / "plan.json")  # what `edgecloud agent` and `infer` split with
    forced = runner.invoke(app, ["split", str(tmp_path / "plan.json"), "-o", str(tmp_path / "out"), "--force"])
    assert forced.exit_code == 0, forced.output
    _assert_split_matches(model_path, load_manifest(tmp_path / "out"))
    model_path.write_bytes(cached_model_path("mlp").read_bytes())  # another graph: its nodes are not in the plan
    other = runner.invoke(app, ["split", str(tmp_path / "plan.json"), "-o", str(tmp_path / "out2"), "--force"])
    assert other.exit_code == 2 and other.output.startswith("error: ")


def test_a_model_that_cannot_be_split_is_one_error_line(tmp_path: Path) -> None:
    """A graph output that is a weight, produced by no stage: planned fine, refused by split in one line."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "weight_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])])
    model_path = tmp_path / "weight_out.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(model_path))
    runner = CliRunner()
    assert runner.invoke(app, ["plan", str(model_path), "-o", str(tmp_path / "plan.json")]).exit_code == 0
    outcome = runner.invoke(app, ["split", str(tmp_path / "plan.json"), "-o", str(tmp_path / "out")])
    assert outcome.exit_code == 2 and outcome.output.startswith("error: ")
    assert len(outcome.output.strip().splitlines()) == 1 and "Traceback" not in outcome.output


def test_a_cost_graph_remembers_its_model_so_a_plan_made_from_it_refuses_a_replaced_model(tmp_path: Path,
                                                                                           monkeypatch) -> None:
    """A cost graph saved with its model records the model's SHA-256 and names it relative to its own folder:
    planned later from another folder, after the model file changed, the plan still names the model the
    costs were measured on, and the split refuses the replacement."""
    from devices.lookup import load_device
    from devices.profiles import LinkProfile
    from partitioner.costs.cost_graph import CostGraph
    from partitioner.costs.from_model import cost_graph_from_model
    from partitioner.costs.scenario import Scenario
    from partitioner.graph.layer_graph import load_layer_graph
    from partitioner.models.zoo import export_model

    folder = tmp_path / "project"
    folder.mkdir()
    model_path = folder / "chain.onnx"
    model_path.write_bytes(cached_model_path("chain").read_bytes())
    planned_for = hashlib.sha256(model_path.read_bytes()).hexdigest()
    scenario = Scenario.of_profiles({"edge": load_device("rpi4"), "cloud": load_device("cloud-server")},
                                    {("edge", "cloud"): LinkProfile(50e6, 1e-3)}, "edge")
    graph = cost_graph_from_model(load_layer_graph(model_path), scenario, model_path)
    graph.save(folder / "costs.json")
    saved = json.loads((folder / "costs.json").read_text())
    assert saved["model"] == "chain.onnx" and saved["model_sha256"] == planned_for
    assert CostGraph.load(folder / "costs.json").model == str(model_path.resolve())
    export_model("chain", model_path, seed=1)  # the model file now holds another model
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", "--cost-graph", str(folder / "costs.json"), "-o", "plan.json"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads((elsewhere / "plan.json").read_text())
    assert plan["model_sha256"] == planned_for
    refused = runner.invoke(app, ["split", "plan.json", "-o", "out"])
    assert refused.exit_code == 2 and "not the model the plan was made for" in refused.output
