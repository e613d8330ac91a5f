"""Real architectures end to end: export, plan, split, run and serve.

Six Hugging Face architectures built from tiny configs (depthwise, grouped and 7x7 depthwise CNNs, a
ViT, a BERT-style and a GPT-style transformer; `partitioner.models.real_models`) and an IR 3 model built by
hand with ConstantOfShape/Constant weight chains like the old ONNX zoo's (`old_ir_models`). For each:
the plan at three bandwidths is never worse than a baseline; a split with cuts forced (consecutive
runs of nodes alternating edge/cloud) reproduces every output and every tensor that crosses devices;
one request served by agents over Mosquitto gets the whole model's answer.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import onnx
import pytest
from old_ir_models import INPUT_SHAPE, old_ir_model
from serving_helpers import DEVICES, bouncing_placement

from devices.lookup import load_device
from devices.profiles import LinkProfile
from devices.sessions import make_session
from edgecloud.serving.agent import AgentOptions, DeviceAgent
from edgecloud.serving.client import InferenceClient
from edgecloud.serving.stage_runner import StageRunner
from edgecloud.transport.broker import MosquittoBroker
from partitioner.costs.from_model import cost_graph_from_model
from partitioner.costs.scenario import Scenario
from partitioner.graph.layer_graph import load_layer_graph
from partitioner.graph.onnx_loading import load_compute_model
from partitioner.models.real_models import REAL_MODELS, example_input, export_real_model
from partitioner.plan.make_plan import plan_cost_graph
from partitioner.split.manifest import SplitManifest
from partitioner.split.onnx_split import split_model

pytestmark = pytest.mark.slow

OLD_IR = "old-ir3-zoo-net"
NAMES = [*REAL_MODELS, OLD_IR]
BANDWIDTHS_BPS = (1e6, 50e6, 1e9)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("real-models")
    files = {name: export_real_model(name, folder / f"{name}.onnx") for name in REAL_MODELS}
    files[OLD_IR] = folder / f"{OLD_IR}.onnx"
    onnx.save(old_ir_model(), str(files[OLD_IR]))
    return files


def _input(name: str, model_path: Path) -> dict[str, np.ndarray]:
    if name == OLD_IR:
        return {"data": np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)}
    (graph_input,) = [item.name for item in onnx.load(str(model_path), load_external_data=False).graph.input]
    return {graph_input: example_input(name, seed=1)}


@pytest.fixture(scope="module")
def mosquitto():
    with MosquittoBroker() as running:
        yield running


def _assert_relatively_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Within 1e-5 of the tensor's own magnitude (elementwise relative error explodes near zero)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_plan_at_three_bandwidths_is_never_worse_than_a_baseline(model_files, name: str) -> None:
    layer_graph = load_layer_graph(model_files[name])
    assert all(attrs["known_op"] for _, attrs in layer_graph.dag.nodes(data=True)), name
    assert not any(attrs["op_type"] in ("Constant", "ConstantOfShape") for _, attrs in layer_graph.dag.nodes(data=True))
    devices = {"edge": load_device("rpi4"), "cloud": load_device("cloud-server")}
    for bandwidth_bps in BANDWIDTHS_BPS:
        scenario = Scenario.of_profiles(devices, {("edge", "cloud"): LinkProfile(bandwidth_bps, 0.005)}, "edge")
        graph = cost_graph_from_model(layer_graph, scenario, model_files[name])
        plan = plan_cost_graph(graph, "latency")
        assert plan.solver["status"] == "optimal" and set(plan.placement) == set(layer_graph.dag.nodes)
        for baseline, value in plan.baselines.items():
            assert value is None or plan.predicted_s <= value * (1 + 1e-9), (name, bandwidth_bps, baseline)


def _whole_model_tensors(model_path: Path, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The unsplit model's values of `names` (graph outputs and intermediates), from onnxruntime."""
    model = onnx.load(str(model_path))
    typed = {item.name: item for item in onnx.shape_inference.infer_shapes(model).graph.value_info}
    typed.update({item.name: item for item in model.graph.output})
    present = {item.name for item in model.graph.output}
    model.graph.output.extend(typed[name] for name in names if name not in present)
    session = make_session(model.SerializeToString())  # type: ignore[arg-type]
    return dict(zip(names, session.run(names, inputs)))


def _forced_split(model_path: Path, folder: Path) -> SplitManifest:
    compute_model, _ = load_compute_model(model_path)
    ids = [node.name for node in compute_model.graph.node]
    return split_model(model_path, bouncing_placement(ids, runs=4), "edge", "edge", folder, devices=DEVICES)


@pytest.mark.parametrize("name", NAMES)
def test_forced_split_reproduces_every_output_and_crossing_tensor(model_files, name: str, tmp_path: Path) -> None:
    manifest = _forced_split(model_files[name], tmp_path)
    assert [stage.device for stage in manifest.stages] == ["edge", "cloud", "edge", "cloud"], name
    crossing = [item.tensor for stage in manifest.stages for item in stage.outputs
                if any(ref.device != stage.device for ref in item.destinations)]
    assert crossing, name
    inputs = _input(name, model_files[name])
    tensors: dict[str, np.ndarray] = dict(inputs)
    StageRunner(manifest, manifest.stages).run_remaining(tensors)
    outputs = [spec.name for spec in manifest.graph_outputs]
    expected = _whole_model_tensors(model_files[name], inputs, list(dict.fromkeys([*outputs, *crossing])))
    for tensor, value in expected.items():
        _assert_relatively_close(tensors[tensor], value, f"{name}: {tensor}")


@pytest.mark.parametrize("name", NAMES)
def test_one_request_served_by_agents_over_mosquitto(model_files, mosquitto, name: str, tmp_path: Path) -> None:
    manifest = _forced_split(model_files[name], tmp_path)
    inputs = _input(name, model_files[name])
    expected = make_session(str(model_files[name])).run(None, inputs)[0]
    deployment = f"real{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        agents = {device: stack.enter_context(DeviceAgent(manifest, device, mosquitto.url,
                                                          AgentOptions(deployment=deployment)))
                  for device in manifest.devices}
        client = stack.enter_context(InferenceClient(manifest, mosquitto.url, deployment=deployment))
        result = client.infer(inputs, deadline_s=20.0)
    assert not result.fell_back and result.answered_by == "edge"
    assert agents["cloud"].stats["stages_run"] == len(manifest.stages_of("cloud"))
    (output,) = result.outputs.values()
    _assert_relatively_close(output, expected, name)
