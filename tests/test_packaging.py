"""The package runs on the oldest Python that pyproject.toml admits."""

import re
import subprocess
import sys

from conftest import ROOT


def test_the_code_needs_no_newer_python_than_pyproject_admits():
    declared = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    # vermin reads the syntax, standard-library modules and members the code uses (e.g. 3.11's
    # hashlib.file_digest) and fails when they need a newer Python than `declared`
    command = [
        sys.executable,
        "-c",
        "import sys, vermin; sys.exit(vermin.main())",
        f"-t={declared}-",
        "--no-tips",
        "--eval-annotations",
    ]
    result = subprocess.run(
        [*command, "--violations", "lightning_gpt", "cli.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
