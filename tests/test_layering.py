"""The packages stack one way: gq_tf <- converters <- android_bench <- gq_speech.

Each imports only those below it (function-level imports and importlib
strings included), and no two modules import each other (tests/support/layering.py
reads the graph from the source).
"""

import textwrap
from pathlib import Path

from tests.support import layering

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("gq_tf", "converters", "android_bench", "gq_speech")


def test_the_packages_import_only_downward_and_have_no_cycles():
    problems = layering.check(ROOT, ORDER)
    assert not problems, "\n".join(problems)


def test_every_package_module_is_read():
    known, edges = layering.graph(ROOT, ORDER)
    assert {"gq_tf.configs", "converters.export", "android_bench.run", "gq_speech.experiment"} <= set(known)
    # The CLI dispatcher names its commands' modules as importlib strings.
    assert {e.target for e in edges if e.source == "gq_speech.__main__"} >= {"gq_speech.cli", "converters.cli"}


def _tree(root: Path, files: dict):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_check_finds_upward_imports_of_every_kind(tmp_path):
    """A synthetic tree: low <- high. Every way of importing upward is caught, with its line."""
    _tree(tmp_path, {
        "low/__init__.py": "",
        "low/plain.py": "import high.top\n",
        "low/late.py": "def f():\n    from high import top\n    return top\n",
        "low/relative.py": "from . import plain\n",  # inside the package: fine
        "low/dynamic.py": "import importlib\n\ndef f():\n    return importlib.import_module('high.top')\n",
        "high/__init__.py": "",
        "high/top.py": "import low.plain\nfrom low import relative\n",
    })
    problems = layering.check(tmp_path, ("low", "high"))
    upward = sorted(p for p in problems if p.startswith("upward"))
    assert len(upward) == 3, problems
    assert "low.plain (line 1) imports high.top" in upward[2]
    assert "low.late (line 2) imports high.top" in upward[1]
    assert "low.dynamic (line 4) imports high.top" in upward[0]
    # low.plain <-> high.top is also a cycle.
    assert any(p.startswith("import cycle between high.top, low.plain") for p in problems), problems


def test_the_check_finds_a_cycle_inside_a_package(tmp_path):
    _tree(tmp_path, {
        "pkg/__init__.py": "from pkg import a\n",  # a re-export: not a cycle
        "pkg/a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
        "pkg/b.py": "def g():\n    from pkg import a\n    return a\n",
        "pkg/c.py": "from pkg import a, b\n",
    })
    problems = layering.check(tmp_path, ("pkg",))
    assert problems == ["import cycle between pkg.a, pkg.b: pkg.a (line 1) imports pkg.b; "
                        "pkg.b (line 2) imports pkg.a"], problems
