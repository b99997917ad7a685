"""The project's promises about itself: the README's test command is what CI runs, the package layout."""

from __future__ import annotations

from pathlib import Path

import pyrnn

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_cmd = next(line for line in ci_lines if "pytest" in line and not line.startswith("#"))
    assert f"```bash\n{test_cmd}\n```" in readme


def test_backends_reports_cpu():
    b = pyrnn.backends()
    assert b["cpu"]["available"] is True
    assert b["cpu"]["isa"] in b["cpu"]["isas"]


def test_kernels_namespace_is_under_pyrnn():
    import importlib.util

    assert importlib.util.find_spec("pyrnn.kernels") is not None
