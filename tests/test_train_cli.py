"""`edgecloud train`: JSON output, saved model, plot, flags per round, and exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecloud.cli.app import app
from test_cli_bad_inputs import assert_one_error_line, run_cli

runner = CliRunner()


def _train(*args: str):
    return runner.invoke(app, ["train", "--dataset", "digits", "--nodes", "6", "--rounds", "3", *args])


def test_json_reports_the_promised_fields() -> None:
    result = _train("--model", "logistic", "--batch-size", "32", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["rounds"] == 3 and summary["seconds"] > 0
    assert summary["flagged_per_round"] == [[], [], []] and summary["flagged_count"] == {}
    assert np.isfinite(summary["train_loss"])
    assert len(summary["history"]) == 3


def test_coded_run_saves_named_arrays_plots_and_flags_the_adversaries(tmp_path: Path) -> None:
    model_path, plot_path = tmp_path / "model.npz", tmp_path / "curve.png"
    result = _train("--model", "svm", "--code", "repetition", "--redundancy", "3", "--adversaries", "1",
                    "--attack", "constant", "--save", str(model_path), "--plot", str(plot_path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # one adversary re-drawn every round: each round flags exactly that round's adversary
    assert summary["flagged_per_round"] == [record["adversaries"] for record in summary["history"]]
    assert sum(summary["flagged_count"].values()) == 3
    with np.load(model_path, allow_pickle=False) as saved:
        assert saved["weight"].shape == (64, 10) and saved["bias"].shape == (10,)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_output_for_a_torch_network() -> None:
    result = _train("--model", "lenet", "--batch-size", "16", "--lr", "0.05", "--non-iid")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout


@pytest.mark.parametrize(("args", "phrase"), [
    (["--code", "cyclic", "--redundancy", "3", "--adversaries", "2"], "cannot decode"),
    (["--nodes", "0"], "--nodes"),
    (["--model", "resnet"], "unknown model"),
    (["--dataset", "cifar"], "unknown dataset"),
    (["--bandwidth", "fast"], "bandwidth"),
    (["--cores", "0"], "--cores"),
    (["--code", "repetition", "--redundancy", "4"], "divisible"),
    (["--aggregator", "krum", "--code", "cyclic", "--redundancy", "3"], "only with --code none"),
    (["--code", "repetition", "--redundancy", "3", "--adversaries", "2"], "cannot decode 2 adversaries"),
    (["--attack", "nuke", "--adversaries", "1"], "unknown attack"),
    (["--rounds", "-1"], "--rounds"),
    (["--unequal", "--non-iid"], "unequal local data sizes apply to the IID split only"),  # was ignored
    (["--seed", "-1"], "--seed"),  # was a traceback
    (["--lr", "inf"], "--lr"),  # ran to "diverged" with exit 0
    (["--lr", "1e6", "--model", "fc"], "training diverged"),  # finite, but the model blows up: not exit 0
    (["--non-iid", "--alpha", "nan"], "--alpha"),  # split the data [1, ..., 1, 1430]
    (["--save", "/nonexistent-folder/model.npz"], "cannot write there"),
    (["--plot", "/proc/curve.png"], "cannot write there"),
    (["--save", "/tmp"], "is a directory"),
])
def test_bad_input_exits_2_with_one_error_line(args: list[str], phrase: str) -> None:
    code, stdout, stderr = run_cli(["train", "--dataset", "digits", "--nodes", "6", "--rounds", "3", *args])
    assert_one_error_line(code, stdout, stderr, phrase)


@pytest.mark.parametrize(("aggregator", "nodes", "adversaries"), [("krum", 4, 2), ("multikrum", 5, 3), ("trimmed", 4, 2)])
def test_an_infeasible_aggregator_is_refused_before_the_data_loads(monkeypatch, aggregator: str, nodes: int,
                                                                   adversaries: int) -> None:
    """Krum's n > f + 2 and the trimmed mean's n > 2f were checked at the first aggregation only."""
    import robust_training.data

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the data set was loaded before the aggregator was checked")

    monkeypatch.setattr(robust_training.data, "load_dataset", no_loading)
    code, stdout, stderr = run_cli(["train", "--aggregator", aggregator, "--nodes", str(nodes), "--adversaries",
                                    str(adversaries), "--dataset", "mnist"])
    assert_one_error_line(code, stdout, stderr, f"f={adversaries}")


def test_a_value_of_the_wrong_type_is_a_usage_error_not_a_traceback() -> None:
    result = _train("--lr", "abc")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Invalid value for '--lr'" in result.output


def test_save_adds_the_npz_suffix_it_writes(tmp_path: Path) -> None:
    result = _train("--save", str(tmp_path / "model"), "--json")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
