"""Bundled models: each exports to one self-contained ONNX file that runs in onnxruntime like the torch
module, at any batch size, and loads as a layer DAG whose every op is known; the CLI lists and exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edgecloud.cli.app import app
from partitioner.errors import PartitionerError
from partitioner.graph.layer_graph import load_layer_graph
from partitioner.models.zoo import MODEL_NAMES, MODEL_SPECS, build_module, cached_model_path, check_model_name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bundled_model_runs_in_onnxruntime_like_torch(bundled_models, name: str) -> None:
    path = bundled_models[name]
    model = onnx.load(path)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert list(path.parent.glob(f"{path.name}.data")) == []
    module, (example,) = build_module(name)
    assert tuple(example.shape) == MODEL_SPECS[name].input_shape
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (input_name,) = [item.name for item in session.get_inputs()]
    for batch in (1, 3):
        batch_input = torch.randn((batch, *example.shape[1:]), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = module(batch_input).numpy()
        (actual,) = session.run(None, {input_name: batch_input.numpy()})
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bundled_model_loads_with_every_op_known(bundled_models, name: str) -> None:
    graph = load_layer_graph(bundled_models[name])
    assert graph.dag.number_of_nodes() == len(graph.model.graph.node)
    assert all(known for _, known in graph.dag.nodes(data="known_op"))
    assert graph.total_flops > 0 and graph.total_param_bytes > 0
    assert graph.inputs == ["input"] and graph.outputs == ["output"]
    assert graph.tensors["output"].shape == (1, 10)


def test_mlp_totals_by_hand(bundled_models) -> None:
    graph = load_layer_graph(bundled_models["mlp"])
    layers = ((784, 256), (256, 128), (128, 10))
    gemm_flops = sum(2 * inputs * outputs + outputs for inputs, outputs in layers)
    relu_flops = 256 + 128
    assert graph.total_flops == gemm_flops + relu_flops == 470_282
    assert graph.total_param_bytes == 4 * sum(inputs * outputs + outputs for inputs, outputs in layers)


def test_build_module_is_seeded() -> None:
    first, _ = build_module("mlp", seed=1)
    again, _ = build_module("mlp", seed=1)
    other, _ = build_module("mlp", seed=2)
    for (name, a), b, c in zip(first.state_dict().items(), again.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name
    assert not first.training


def test_cached_model_path_exports_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_CACHE", str(tmp_path))
    path = cached_model_path("mlp")
    assert path.parent == tmp_path / "models" and path.is_file()
    modified_ns = path.stat().st_mtime_ns
    assert cached_model_path("mlp") == path and path.stat().st_mtime_ns == modified_ns
    assert [item.name for item in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_models_and_the_host_profile_share_one_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devices import host

    monkeypatch.setenv("EDGECLOUD_CACHE", str(tmp_path))
    monkeypatch.setattr(host, "_BUDGET_S", 0.05)
    host.host_profile.cache_clear()
    try:
        host.host_profile()
    finally:
        host.host_profile.cache_clear()
    assert (tmp_path / host.HOST_CACHE_FILE).is_file()
    assert cached_model_path("mlp").parent == tmp_path / "models"


def test_unknown_model_name_lists_the_bundled_ones() -> None:
    with pytest.raises(PartitionerError, match="resnet18"):
        check_model_name("nosuchmodel")
    with pytest.raises(PartitionerError, match="unknown model"):
        cached_model_path("nosuchmodel")


def test_cli_lists_models() -> None:
    result = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in MODEL_NAMES:
        assert name in result.output


def test_cli_exports_a_model(tmp_path: Path) -> None:
    output = tmp_path / "chain.onnx"
    result = CliRunner().invoke(app, ["export", "chain", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert len(onnx.load(output).graph.node) == len(load_layer_graph(output).dag)


def test_cli_export_of_unknown_model_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "nosuchmodel", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown model 'nosuchmodel'; bundled models are: " + ", ".join(MODEL_NAMES)]
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_into_a_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "mlp", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path} is a directory; give the ONNX file to write"


def test_real_models_module_imports_neither_torch_nor_transformers() -> None:
    import subprocess
    import sys

    code = ("import sys, partitioner.models.real_models as r; assert len(r.REAL_MODELS) >= 6; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_real_model_inputs_are_valid_and_unknown_names_are_one_sentence() -> None:
    from partitioner.models.real_models import REAL_MODELS, VOCAB_SIZE, example_input, export_real_model

    for name, spec in REAL_MODELS.items():
        x = example_input(name, seed=3)
        assert x.shape == spec.input_shape and x.dtype == spec.input_dtype
        if spec.input_dtype == "int64":
            assert 0 <= x.min() and x.max() < VOCAB_SIZE
    with pytest.raises(PartitionerError, match="unknown real model 'alexnet'; choose one of mobilenetv2"):
        export_real_model("alexnet", "x.onnx")
