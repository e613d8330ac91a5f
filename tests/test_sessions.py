"""One onnxruntime session policy (devices.sessions) for the profiler, the host probe and the agents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serving_helpers import DEVICES, bouncing_placement, node_ids

from devices.errors import DeviceError
from devices.sessions import NO_SPINNING, make_session
from edgecloud.serving.stage_runner import StageRunner
from partitioner.split.onnx_split import split_model


def _spinning(session) -> str:
    return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_sessions_never_spin_and_keep_their_thread_count(bundled_models) -> None:
    session = make_session(bundled_models["mlp"], threads=2)
    options = session.get_session_options()
    assert _spinning(session) == NO_SPINNING
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    x = np.zeros((1, 784), np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (1, 10)


def test_unoptimized_sessions_keep_every_node_a_kernel(bundled_models) -> None:
    import onnxruntime as ort

    session = make_session(Path(bundled_models["mlp"]).read_bytes(), optimize=False)
    assert session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_the_agents_stage_sessions_follow_the_same_policy(bundled_models, tmp_path: Path) -> None:
    ids = node_ids(bundled_models["mlp"])
    manifest = split_model(bundled_models["mlp"], bouncing_placement(ids, runs=2), "edge", "edge", tmp_path,
                           devices=DEVICES)
    runner = StageRunner(manifest, manifest.stages)
    assert all(_spinning(session) == NO_SPINNING for session in runner._sessions.values())


def test_a_file_onnxruntime_cannot_load_is_one_sentence(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DeviceError, match="onnxruntime cannot load the model") as caught:
        make_session(broken)
    assert "\n" not in str(caught.value)
