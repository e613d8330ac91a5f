"""`edgecloud train`: JSON output, saved model, plot, and exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecloud.cli.app import app

runner = CliRunner()


def _train(*args: str):
    return runner.invoke(app, ["train", "--dataset", "digits", "--nodes", "6", "--rounds", "3", *args])


def test_json_reports_the_promised_fields() -> None:
    result = _train("--model", "logistic", "--batch-size", "32", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["rounds"] == 3 and summary["seconds"] > 0
    assert summary["flagged"] == [] and np.isfinite(summary["train_loss"])
    assert len(summary["history"]) == 3


def test_coded_run_saves_named_arrays_plots_and_flags_the_adversaries(tmp_path: Path) -> None:
    model_path, plot_path = tmp_path / "model.npz", tmp_path / "curve.png"
    result = _train("--model", "svm", "--code", "repetition", "--redundancy", "3", "--adversaries", "1",
                    "--attack", "constant", "--save", str(model_path), "--plot", str(plot_path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["flagged"]
    with np.load(model_path, allow_pickle=False) as saved:
        assert saved["weight"].shape == (64, 10) and saved["bias"].shape == (10,)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_output_for_a_torch_network() -> None:
    result = _train("--model", "lenet", "--batch-size", "16", "--lr", "0.05", "--non-iid")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout


@pytest.mark.parametrize(("args", "phrase"), [
    (["--code", "cyclic", "--redundancy", "3", "--adversaries", "2"], "cannot decode"),
    (["--nodes", "0"], "at least one worker"),
    (["--model", "resnet"], "unknown model"),
    (["--dataset", "cifar"], "unknown dataset"),
    (["--bandwidth", "fast"], "bandwidth"),
    (["--code", "repetition", "--redundancy", "4"], "divisible"),
    (["--aggregator", "krum", "--code", "cyclic", "--redundancy", "3"], "only with --code none"),
    (["--code", "repetition", "--redundancy", "3", "--adversaries", "2"], "cannot decode 2 adversaries"),
    (["--attack", "nuke", "--adversaries", "1"], "unknown attack"),
    (["--rounds", "-1"], "at least one round"),
    (["--save", "/nonexistent-folder/model.npz"], "cannot write there"),
    (["--plot", "/proc/curve.png"], "cannot write there"),
    (["--save", "/tmp"], "is a directory"),
])
def test_bad_input_exits_2_with_one_error_line(args: list[str], phrase: str) -> None:
    result = _train(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert phrase in result.stderr


def test_a_value_of_the_wrong_type_is_a_usage_error_not_a_traceback() -> None:
    result = _train("--lr", "abc")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Invalid value for '--lr'" in result.output


def test_save_adds_the_npz_suffix_it_writes(tmp_path: Path) -> None:
    result = _train("--save", str(tmp_path / "model"), "--json")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
