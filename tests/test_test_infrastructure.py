"""The suite must collect however it is started: `pytest FILE` does not put the project root on sys.path
the way `python -m pytest` does, and tests import the benches' graph generators."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_single_file_collects_with_the_bare_pytest_command() -> None:
    pytest_command = shutil.which("pytest", path=str(Path(sys.executable).parent)) or "pytest"
    result = subprocess.run([pytest_command, "--collect-only", "-q", "tests/test_costs.py"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
