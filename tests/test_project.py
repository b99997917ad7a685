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


def test_bench_cli_runs_a_case_and_writes_json_and_plot(tmp_path, monkeypatch):
    import json

    from pyrnn import bench

    monkeypatch.setattr(bench, "standard_grid", lambda quick=False: [bench.Case("GRU", 3, 2, 8, train=True)])
    monkeypatch.setattr(bench, "apart_grid", lambda: [bench.Case("LSTM", 3, 2, 8, layers=2, penalty=True),
                                                      bench.Case("RNN", 3, 2, 8, input_grad=True)])
    monkeypatch.setattr(bench, "sweep_grid", lambda: [bench.Case("RNN", 3, b, 8, sweep="B") for b in (1, 2)]
                        + [bench.Case("RNN", 3, 2, h, sweep="H") for h in (4, 8)])
    out = tmp_path / "r.json"
    png = tmp_path / "p.png"
    args = ["--min-time", "0", "--json", str(out)]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(png)]
    except ImportError:
        png = None
    assert bench.main(args) == 0
    data = json.loads(out.read_text())
    assert data["results"][0]["ratio"] > 0 and data["machine"]["fma_peak_gflops"] > 0
    # the grid, then the cases reported apart: a penalty step, an input gradient
    assert [(r["case"]["penalty"], r["case"]["input_grad"]) for r in data["results"][:3]] == [
        (False, False), (True, False), (False, True)]
    if png is not None:
        assert png.stat().st_size > 0
