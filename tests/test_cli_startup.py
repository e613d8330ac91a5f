"""`edgecloud --help` must stay fast: no torch, onnxruntime or onnx at start-up (issue 2, item 8)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY_MODULES = ("torch", "onnxruntime", "onnx", "matplotlib", "sklearn")


def _modules_loaded_by(code: str) -> set[str]:
    probe = (
        "import sys, json\n"
        f"{code}\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_app_loads_no_heavy_module() -> None:
    loaded = _modules_loaded_by("import edgecloud.cli.app")
    assert not loaded & set(HEAVY_MODULES), sorted(loaded & set(HEAVY_MODULES))


def test_a_thin_client_loads_no_heavy_module() -> None:
    """A sensor's client process imports the client only: no torch, onnxruntime or onnx (issue 11.6)."""
    loaded = _modules_loaded_by("import edgecloud.serving.client")
    assert not loaded & set(HEAVY_MODULES), sorted(loaded & set(HEAVY_MODULES))


def test_help_runs_and_loads_no_heavy_module() -> None:
    code = (
        "from typer.testing import CliRunner\n"
        "from edgecloud.cli.app import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'Usage' in result.output\n"
    )
    loaded = _modules_loaded_by(code)
    assert not loaded & set(HEAVY_MODULES), sorted(loaded & set(HEAVY_MODULES))


def test_console_script_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from edgecloud.cli.app import main; sys.argv=['edgecloud','--help']; main()"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "edgecloud" in result.stdout


def _run_console_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecloud.cli.app", *args], capture_output=True, text=True)


def test_a_usage_mistake_is_one_error_line_and_exit_2() -> None:
    result = _run_console_script("train", "--lr", "abc")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Invalid value for '--lr'"), lines


def test_a_missing_required_option_is_one_error_line_and_exit_2() -> None:
    result = _run_console_script("export", "mlp")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Missing option"), lines


def test_bare_command_prints_help_and_exits_0() -> None:
    result = _run_console_script()
    assert result.returncode == 0
    assert "Usage" in result.stdout and "plan" in result.stdout
