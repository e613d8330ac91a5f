"""`edgecloud split|agent|infer` with a user's mistakes: one `error: ...` line and exit code 2, before any
broker is contacted (the broker URL below points at a closed port on purpose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serving_helpers import write_plan
from typer.testing import CliRunner

from edgecloud.cli.app import app
from edgecloud.errors import EdgecloudError
from edgecloud.serving.client import InferenceClient
from partitioner.models.zoo import cached_model_path

NO_BROKER = "mqtt://127.0.0.1:9"


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plan(cached_model_path("mlp"), tmp_path_factory.mktemp("plan"))


def _one_error_line(args: list[str], message: str) -> None:
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 2, outcome.output
    assert outcome.output.startswith("error: ") and message in outcome.output, outcome.output
    assert len(outcome.output.strip().splitlines()) == 1, outcome.output


def test_infer_with_a_missing_input_file(plan_path: Path, tmp_path: Path) -> None:
    _one_error_line(["infer", "--plan", str(plan_path), "--input", str(tmp_path / "x.npy"), "-o",
                     str(tmp_path / "y.npy"), "--broker", NO_BROKER], "does not exist")


def test_infer_with_a_wrong_shape_is_refused_before_sending(plan_path: Path, tmp_path: Path) -> None:
    """It used to be sent anyway and end, without agents, in a deadline error two seconds later."""
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    _one_error_line(["infer", "--plan", str(plan_path), "--input", str(tmp_path / "x.npy"), "-o",
                     str(tmp_path / "y.npy"), "--broker", NO_BROKER], "input 'input' is float32[2, 2]")


@pytest.mark.parametrize("content", [b"not numpy at all", None])
def test_infer_with_a_file_that_is_no_plain_array(plan_path: Path, tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    _one_error_line(["infer", "--plan", str(plan_path), "--input", str(path), "-o", str(tmp_path / "y.npy"),
                     "--broker", NO_BROKER], "not a .npy or .npz file of plain arrays")


def test_agent_with_a_missing_plan_names_the_file(tmp_path: Path) -> None:
    """It used to print the bare OSError text ("[Errno 2] ...")."""
    _one_error_line(["agent", "--plan", str(tmp_path / "nope.json"), "--device", "edge", "--broker", NO_BROKER],
                    "plan file")


def test_split_with_a_file_that_is_no_plan(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text('{"format": "something else"}')
    _one_error_line(["split", str(tmp_path / "plan.json"), "-o", str(tmp_path / "out")], "not an edgecloud plan")


def test_client_checks_inputs_against_the_model(plan_path: Path) -> None:
    client = InferenceClient(plan_path, NO_BROKER)
    (spec,) = client.manifest.graph_inputs
    good = np.zeros([1 if isinstance(size, str) else size for size in spec.shape], spec.dtype)
    assert set(client.named_inputs(good)) == {spec.name}
    with pytest.raises(EdgecloudError, match="float64"):
        client.named_inputs(good.astype(np.float64))
    with pytest.raises(EdgecloudError, match="takes"):
        client.named_inputs({"other": good})


@pytest.mark.parametrize(("edit", "message"), [
    (lambda plan: plan["placement"].update({next(iter(plan["placement"])): "gpu"}), "names the device 'gpu'"),
    (lambda plan: plan.update(sink="phone"), "the sink names the device 'phone'"),
    (lambda plan: plan["links"][0].update(bandwidth_bps="fast"), "malformed"),
])
def test_split_of_a_plan_naming_devices_it_does_not_list(plan_path: Path, tmp_path: Path, edit, message: str) -> None:
    """Such a plan used to split into stages for a device no agent would ever serve."""
    import json

    plan = json.loads(plan_path.read_text())
    edit(plan)
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(plan))
    _one_error_line(["split", str(bad), "-o", str(tmp_path / "out")], message)


def test_infer_names_the_file_it_really_writes(plan_path: Path, tmp_path: Path) -> None:
    """`-o answer` is written as answer.npy (numpy adds the suffix): the message used to say "wrote answer"."""
    import uuid

    from broker_fixtures import make_broker
    from test_cli_bad_inputs import run_cli

    from edgecloud.serving.agent_processes import AgentProcesses

    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.float32))
    deployment = f"o{uuid.uuid4().hex[:8]}"
    with make_broker("mosquitto") as running, AgentProcesses(plan_path, ["edge", "cloud"], running.url, deployment):
        code, stdout, stderr = run_cli(["infer", "--plan", str(plan_path), "--input", str(tmp_path / "x.npy"),
                                        "-o", str(tmp_path / "answer"), "--broker", running.url,
                                        "--deployment", deployment, "--deadline", "10s"])
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answer.npy", "x.npy"]
    assert f"wrote {tmp_path / 'answer.npy'}" in " ".join(stdout.split())
