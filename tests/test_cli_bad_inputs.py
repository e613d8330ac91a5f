"""Every CLI command, given a bad file or an out-of-range number, prints one `error:` line and exits 2.

Issue 9 (item 10 and its "done when"): 297 bad inputs found 17 commands ending in tracebacks. The
commands are enumerated from the Typer app, so a new command fails `test_every_command_has_cases`
until its file inputs are listed here, and `test_every_numeric_option_is_bounded` covers its numbers
without a list. The bulk runs in-process through `edgecloud.cli.app.run` (the function the console
script calls, so usage errors are formatted exactly as users see them), a representative subset
through `python -m edgecloud.cli.app` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from serving_helpers import write_plan
from typer.testing import CliRunner

from edgecloud.cli.app import app, run
from edgecloud.cli.options import finite_float
from partitioner.models.zoo import cached_model_path

NO_BROKER = "mqtt://127.0.0.1:9"  # a closed port: nothing here may get as far as connecting
BAD = "<BAD>"  # replaced by the bad file's path
PLAN, NPY, OUT, OUT_DIR = "<PLAN>", "<NPY>", "<OUT>", "<OUT_DIR>"


# Typer 0.29 vendors click (typer._click), so click's classes are recognised by name, not imported.
def command_paths(group: Any = None, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf command of the app, e.g. ("plan",) and ("predictor", "fit")."""
    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def command_of(path: tuple[str, ...]) -> Any:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


# Where each command reads a file the user names: (arguments with BAD in the slot, suffix of the file).
FILE_SLOTS: dict[tuple[str, ...], list[tuple[list[str], str]]] = {
    ("plan",): [(["plan", "--cost-graph", BAD], ".json"), (["plan", BAD], ".onnx"),
                (["plan", "chain", "--edge", BAD], ".json"), (["plan", "chain", "--profile", BAD], ".json"),
                (["plan", "chain", "--device", f"server={BAD}"], ".json"),
                (["plan", "chain", "--link", f"edge-cloud={BAD}"], ".json")],
    ("sweep",): [(["sweep", BAD], ".onnx"), (["sweep", "chain", "--cloud", BAD], ".json"),
                 (["sweep", "chain", "--profile", BAD], ".json")],
    ("profile",): [(["profile", BAD, "-o", OUT], ".onnx")],
    ("split",): [(["split", BAD, "-o", OUT_DIR], ".json")],
    ("agent",): [(["agent", "--plan", BAD, "--device", "edge", "--broker", NO_BROKER], ".json")],
    ("infer",): [(["infer", "--plan", BAD, "--input", NPY, "-o", OUT, "--broker", NO_BROKER], ".json"),
                 (["infer", "--plan", PLAN, "--input", BAD, "-o", OUT, "--broker", NO_BROKER], ".npy")],
    ("demo",): [(["demo", "--edge", BAD], ".json"), (["demo", "--cloud", BAD], ".json")],
    ("testbed",): [(["testbed", BAD, "--bandwidth", "5Mbit"], ".onnx"),
                   (["testbed", "mlp", "--bandwidth", "5Mbit", "--edge", BAD], ".json")],
    ("predictor", "fit"): [(["predictor", "fit", BAD, "-o", OUT], ".json")],
    ("train-worker",): [(["train-worker", "--broker", NO_BROKER, "--id", "0", "--data-dir", BAD], "")],
    ("predictor", "estimate"): [(["predictor", "estimate", "chain", "--predictor", BAD], ".json"),
                                (["predictor", "estimate", "chain", "-d", BAD], ".json"),
                                (["predictor", "estimate", BAD], ".onnx")],
}
NO_FILE_INPUT = {("models",), ("export",), ("broker",), ("train",), ("train-server",), ("train-data", "export"), ("fleet", "init"),
                 ("calibrate",)}

# The ways a file can be bad; None: the file does not exist.
BAD_CONTENT: dict[str, bytes | None] = {
    "missing": None,
    "empty": b"",
    "blank": b"  \n\t",
    "not-utf8": b"\xff\xfe\x00\x81\x9f garbage",
    "huge-integer": b'{"format": "edgecloud.plan/1", "n": 1' + b"0" * 5000 + b"}",
    "deeply-nested": b"[" * 200_000 + b"]" * 200_000,
    "not-json": b"{truncated",
    "nan": b'{"format": "edgecloud.plan/1", "predicted_s": NaN}',
    "a-list": b"[1, 2, 3]",
}
# Files that cannot be read even by root (the tests run as root here, so chmod 000 proves nothing).
SYSTEM_FILES = {"permission-denied": "/proc/sys/vm/compact_memory", "io-error": "/proc/self/mem"}

JSON_PHRASES: dict[str, str | tuple[str, ...]] = {"missing": "does not exist", "empty": "is empty", "blank": "is empty", "not-utf8": "is not UTF-8",
                "huge-integer": "integer too long", "deeply-nested": "too deeply", "not-json": "is not valid JSON",
                "nan": "holds NaN", "permission-denied": ("permission denied", "is not readable"), "io-error": "cannot read"}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The good files the slots around a bad one need: a plan of the mlp model and an input array."""
    import numpy as np

    folder = tmp_path_factory.mktemp("good")
    plan = write_plan(cached_model_path("mlp"), folder)
    np.save(folder / "x.npy", np.zeros((1, 784), np.float32))
    return {PLAN: str(plan), NPY: str(folder / "x.npy")}


def _fill(args: list[str], fixtures: dict[str, str], folder: Path, bad: Path | None = None) -> list[str]:
    values = {**fixtures, OUT: str(folder / "out.npy"), OUT_DIR: str(folder / "split")}
    if bad is not None:
        values[BAD] = str(bad)
    filled = []
    for arg in args:
        for token, value in values.items():
            arg = arg.replace(token, value)
        filled.append(arg)
    return filled


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command line, through the console script's own `run`."""
    with CliRunner().isolation() as (out, err, _):
        code = run(args)
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def assert_one_error_line(code: int, stdout: str, stderr: str, phrase: str = "") -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stdout[-2000:], stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    assert phrase in lines[0], lines[0]


def test_every_command_has_cases() -> None:
    """A command added to the app must say here where it reads files (or that it reads none)."""
    commands = set(command_paths())
    assert ("plan",) in commands and ("predictor", "fit") in commands  # the enumeration works
    unlisted = commands - set(FILE_SLOTS) - NO_FILE_INPUT
    assert not unlisted, f"add the file inputs of {sorted(unlisted)} to FILE_SLOTS or NO_FILE_INPUT"
    assert not (set(FILE_SLOTS) | NO_FILE_INPUT) - commands, "a listed command no longer exists"


def test_every_numeric_option_is_bounded() -> None:
    """Every int option is an IntRange with both ends, every float one a `finite_float`: no seed of -1,
    no 24-digit count, no NaN or infinity reaches the code (click's FloatRange lets NaN through)."""
    unbounded = []
    for path in command_paths():
        for param in command_of(path).params:
            base = _base_type(param.type_descriptor.annotation)
            if base is int:
                ok = param.min is not None and param.max is not None
            elif base is float:
                ok = hasattr(param.type_descriptor.parameter_info.parser, "bounds")
            else:
                continue
            if not ok:
                unbounded.append(f"{' '.join(path)} --{param.name}")
    assert not unbounded, unbounded


def _base_type(annotation: Any) -> Any:
    """int for int, Optional[int] and list[int]; bool stays bool."""
    while typing.get_args(annotation):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def _file_cases() -> list[tuple[list[str], str, str]]:
    return [(args, suffix, kind) for slots in FILE_SLOTS.values() for args, suffix in slots
            for kind in [*BAD_CONTENT, *SYSTEM_FILES]]


@pytest.mark.parametrize(("args", "suffix", "kind"), _file_cases(),
                         ids=[f"{' '.join(a)}-{k}".replace(BAD, "BAD") for a, _, k in _file_cases()])
def test_a_bad_file_is_one_error_line(fixtures, tmp_path: Path, args: list[str], suffix: str, kind: str) -> None:
    bad = Path(SYSTEM_FILES[kind]) if kind in SYSTEM_FILES else tmp_path / f"bad{suffix}"
    content = BAD_CONTENT.get(kind)
    if content is not None:
        bad.write_bytes(content)
    code, stdout, stderr = run_cli(_fill(args, fixtures, tmp_path, bad))
    assert_one_error_line(code, stdout, stderr, str(bad) if kind == "missing" else "")
    if kind != "missing":
        assert str(bad) in stderr or bad.name in stderr, stderr  # the sentence names the file
    if suffix == ".json" and kind in JSON_PHRASES:  # what is wrong, in the shared reader's words
        phrases = JSON_PHRASES[kind]
        assert any(phrase in stderr for phrase in ((phrases,) if isinstance(phrases, str) else phrases)), stderr


def _other_files(folder: Path) -> dict[str, Path]:
    """Files of the wrong kind: an ONNX model, and JSON files of our other formats."""
    from devices.profiler import PROFILE_FORMAT
    from partitioner.costs.cost_graph import COSTGRAPH_FORMAT

    files = {"model": cached_model_path("mlp")}
    for name, tag in (("profile", PROFILE_FORMAT), ("costgraph", COSTGRAPH_FORMAT)):
        files[name] = folder / f"{name}.json"
        files[name].write_text(json.dumps({"format": tag}))
    return files


@pytest.mark.parametrize(("args", "other", "phrase"), [
    (["split", BAD, "-o", OUT_DIR], "model", "is an ONNX model, not a JSON plan file; make a plan with `edgecloud plan"),
    (["agent", "--plan", BAD, "--device", "edge", "--broker", NO_BROKER], "model", "is an ONNX model"),
    (["infer", "--plan", BAD, "--input", NPY, "-o", OUT, "--broker", NO_BROKER], "model", "is an ONNX model"),
    (["split", BAD, "-o", OUT_DIR], "profile", "is not an edgecloud plan"),
    (["plan", "--cost-graph", BAD], "profile", "is not an edgecloud cost graph"),
    (["plan", "--cost-graph", BAD], "model", "is an ONNX model, not a JSON cost graph file"),
    (["plan", "chain", "--profile", BAD], "costgraph", "is not an edgecloud profile"),
    (["predictor", "fit", BAD, "-o", OUT], "costgraph", "is not an edgecloud profile"),
    (["predictor", "estimate", "chain", "--predictor", BAD], "profile", "is not an edgecloud predictor"),
    (["plan", "chain", "--edge", BAD], "model", "is an ONNX model, not a JSON device profile file"),
    (["plan", BAD], "profile", ""),  # a JSON file where a model is expected
])
def test_a_file_of_the_wrong_kind_is_named(fixtures, tmp_path: Path, args: list[str], other: str, phrase: str) -> None:
    code, stdout, stderr = run_cli(_fill(args, fixtures, tmp_path, _other_files(tmp_path)[other]))
    assert_one_error_line(code, stdout, stderr, phrase)


@pytest.mark.parametrize(("args", "phrase"), [
    (["plan", "chain", "--latency", "1e300s"], "out of range"),
    (["plan", "chain", "--bandwidth", "1e400bit"], "out of range"),
    (["plan", "chain", "--bandwidth", "10"], "has no unit"),  # issue 10 item 6: was 10 bit/s, silently
    (["plan", "chain", "--latency", "10"], "has no unit"),
    (["plan", "chain", "--memory-limit", "edge=1e400B"], "out of range"),
    (["plan", "chain", "--memory-limit", "edge=512"], "has no unit"),
    (["plan", "chain", "--link", "edge-cloud=10,1ms"], "has no unit"),
    (["plan", "chain", "--time-limit", "-1"], "--time-limit"),
    (["plan", "chain", "--time-limit", "nan"], "--time-limit"),
    (["plan", "chain", "--time-limit", "inf"], "--time-limit"),
    (["plan", "chain", "--time-limit", "0"], "--time-limit"),
    (["sweep", "chain", "--bandwidth", "1bit..1e400bit", "--json"], "out of range"),
    (["sweep", "chain", "--points", "100000000"], "--points"),
    (["export", "mlp", "-o", OUT, "--seed", "100000000000000000000000"], "--seed"),
    (["export", "mlp", "-o", OUT, "--seed", "1e23"], "--seed"),
    (["export", "mlp", "-o", OUT, "--seed", "-1"], "--seed"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--non-iid", "--alpha", "nan"], "--alpha"),
    (["train", "--non-iid", "--alpha", "-1"], "--alpha"),
    (["train", "--nodes", "100000000000000000000"], "--nodes"),
    (["train", "--bandwidth", "10"], "has no unit"),
    (["infer", "--plan", PLAN, "--input", NPY, "-o", OUT, "--broker", NO_BROKER, "--deadline", "1e300s"], "out of range"),
    (["infer", "--plan", PLAN, "--input", NPY, "-o", OUT, "--broker", NO_BROKER, "--deadline", "2"], "has no unit"),
    (["agent", "--plan", PLAN, "--device", "edge", "--broker", NO_BROKER, "--log-level", "FOO"], "--log-level 'FOO'"),
    (["agent", "--plan", PLAN, "--device", "edge", "--broker", NO_BROKER, "--fallback-margin", "1e300s"], "out of range"),
    (["agent", "--plan", PLAN, "--device", "edge", "--broker", NO_BROKER, "--local-after-fallback", "5"], "has no unit"),
    (["demo", "--bandwidth", "10"], "has no unit"),
    (["demo", "--latency", "1e300s"], "out of range"),
    (["demo", "--requests", "0"], "--requests"),
    (["profile", "chain", "-o", OUT, "--seed", "-1"], "--seed"),
    (["profile", "chain", "-o", OUT, "--threads", "0"], "--threads"),
    (["predictor", "fit", "-o", OUT, "--seed", "-1"], "--seed"),
    (["broker", "--port", "70000"], "--port"),
], ids=lambda value: " ".join(value).replace(NO_BROKER, "NO_BROKER") if isinstance(value, list) else "")
def test_an_out_of_range_number_is_one_error_line(fixtures, tmp_path: Path, args: list[str], phrase: str) -> None:
    code, stdout, stderr = run_cli(_fill(args, fixtures, tmp_path))
    assert_one_error_line(code, stdout, stderr, phrase)
    assert not (tmp_path / "out.npy").exists()


def test_split_into_an_existing_file_is_refused(fixtures, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("keep me")
    code, stdout, stderr = run_cli(["split", fixtures[PLAN], "-o", str(target)])
    assert_one_error_line(code, stdout, stderr, "is a file")
    assert target.read_text() == "keep me"


def test_infer_into_a_directory_is_refused_before_connecting(fixtures, tmp_path: Path) -> None:
    """It used to write DIR.npy after the answer came, and print "wrote DIR"."""
    (tmp_path / "answers").mkdir()
    code, stdout, stderr = run_cli(["infer", "--plan", fixtures[PLAN], "--input", fixtures[NPY], "-o",
                                    str(tmp_path / "answers"), "--broker", NO_BROKER])
    assert_one_error_line(code, stdout, stderr, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers"]


def _console_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecloud.cli.app", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("kind", ["not-utf8", "huge-integer", "deeply-nested", "empty"])
@pytest.mark.parametrize("command", [["split", BAD, "-o", OUT_DIR], ["plan", "--cost-graph", BAD],
                                     ["predictor", "fit", BAD, "-o", OUT]])
def test_the_console_script_reports_bad_files_in_one_line(fixtures, tmp_path: Path, command: list[str],
                                                          kind: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(BAD_CONTENT[kind] or b"")
    result = _console_script(*_fill(command, fixtures, tmp_path, bad))
    assert_one_error_line(result.returncode, result.stdout, result.stderr, str(bad))


@pytest.mark.parametrize("args", [["plan", "chain", "--latency", "1e300s"], ["train", "--seed", "-1"],
                                  ["plan", "chain", "--time-limit", "nan"], ["export", "mlp", "-o", "x.onnx",
                                                                             "--seed", "100000000000000000000000"]])
def test_the_console_script_reports_bad_numbers_in_one_line(args: list[str]) -> None:
    result = _console_script(*args)
    assert_one_error_line(result.returncode, result.stdout, result.stderr)


def test_finite_float_refuses_nan_and_infinity() -> None:
    parse = finite_float(0.0, 10.0, low_open=True)
    assert parse("2.5") == 2.5 and parse("10") == 10.0
    for text in ("nan", "inf", "-inf", "0", "-1", "10.5", "ten"):
        with pytest.raises(typer.BadParameter):
            parse(text)


def test_the_reader_caps_the_size_before_parsing(tmp_path: Path) -> None:
    from devices.errors import DeviceError
    from devices.json_files import read_json_file

    path = tmp_path / "big.json"
    path.write_text(json.dumps({"format": "x", "pad": "a" * 100}))
    assert read_json_file(path, "thing", expected_format="x")["pad"] == "a" * 100
    with pytest.raises(DeviceError, match=r"thing file .*big.json is larger than"):
        read_json_file(path, "thing", max_bytes=50)


def test_every_writer_refuses_nan_and_infinity(tmp_path: Path) -> None:
    """`plan --bandwidth 1e400bit` and `sweep --json` once wrote `Infinity`, which is not JSON."""
    from dataclasses import replace

    from partitioner.errors import PartitionerError
    from partitioner.plan.plan_file import load_plan

    plan = load_plan(write_plan(cached_model_path("mlp"), tmp_path))
    with pytest.raises(PartitionerError, match="non-finite number"):
        replace(plan, predicted_s=float("inf")).save(tmp_path / "inf.json")
    code, stdout, _ = run_cli(["plan", "chain", "--bandwidth", "1Gbit", "--json"])
    assert code == 0
    json.loads(stdout, parse_constant=lambda name: pytest.fail(f"{name} in the plan's JSON"))


@pytest.mark.parametrize("kind", ["deeply-nested", "not-utf8", "empty", "a-list"])
def test_an_unreadable_host_cache_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    kind: str) -> None:
    """The host profile cache is ours but sits in the user's folder: a deeply nested one was a traceback."""
    from devices import host

    monkeypatch.setenv("EDGECLOUD_CACHE", str(tmp_path))
    monkeypatch.setattr(host, "_BUDGET_S", 0.05)
    (tmp_path / host.HOST_CACHE_FILE).write_bytes(BAD_CONTENT[kind] or b"")
    host.host_profile.cache_clear()
    try:
        assert host.host_profile().peak_flops > 1e6
    finally:
        host.host_profile.cache_clear()
    assert json.loads((tmp_path / host.HOST_CACHE_FILE).read_text())["profile"]["name"] == "host"


def test_a_malformed_cost_graph_or_manifest_names_its_file(tmp_path: Path) -> None:
    """The reader names the file; so must the format's own checks after it ("the cost graph is malformed")."""
    from partitioner.costs.cost_graph import COSTGRAPH_FORMAT
    from partitioner.errors import PartitionerError
    from partitioner.split.manifest import MANIFEST_FORMAT, load_manifest

    graph = tmp_path / "g.json"
    graph.write_text(json.dumps({"format": COSTGRAPH_FORMAT, "devices": {}}))
    code, stdout, stderr = run_cli(["plan", "--cost-graph", str(graph)])
    assert_one_error_line(code, stdout, stderr, f"cost graph file {graph}: ")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "stages": []}))
    with pytest.raises(PartitionerError, match=f"split manifest {tmp_path / 'manifest.json'}: .*malformed"):
        load_manifest(tmp_path)
