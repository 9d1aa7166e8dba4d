"""The README's Python example runs as written (in a fresh interpreter, in a scratch folder),
and what it prints is the trained run's prediction."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.timeout(600)
def test_readme_python_example_runs(tmp_path):
    done = subprocess.run([sys.executable, "-c", _example()], cwd=tmp_path, capture_output=True,
                          text=True, timeout=540, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("data/api_demo/val/")]
    assert len(lines) == 2, done.stdout
    demo = (Path(__file__).resolve().parent.parent / "prompts" / "demo.txt").read_text().split("\n")
    for line in lines:
        labels = re.findall(r"\('([^']+)', ([0-9.]+)\)", line)
        assert len(labels) == 3 and all(name in demo for name, _ in labels)
        probs = [float(p) for _, p in labels]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.001
    assert (tmp_path / "runs" / "api_demo" / "run.json").is_file()
