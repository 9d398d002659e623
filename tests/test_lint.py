"""The linter (ruff, configured in pyproject.toml: line length, pycodestyle, pyflakes, import order) finds nothing."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"ruff check found problems (fix them, do not silence them):\n{r.stdout}{r.stderr}"
