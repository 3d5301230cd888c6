"""The Python API as a researcher uses it: the README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import bitfront

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_api_example_runs(micro_pair, tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert isinstance(result, bitfront.SearchResult)
    assert result.front and all(isinstance(p, bitfront.Point) for p in result.front)
    assert isinstance(result.knee.metrics, bitfront.TrialMetrics)
    assert 0 < result.hypervolume <= 1
    assert scope["point"].metrics.memory_bytes <= result.knee.metrics.memory_bytes
    assert (tmp_path / "plan.json").exists() and not (tmp_path / "runs").exists()
    assert "plans on the front" in capsys.readouterr().out


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, bitfront; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False"
