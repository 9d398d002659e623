"""CI-sized fuzzing of the GQ delegate with mutated .tflite files.

The machinery (mutations, worker subprocesses that detect crashes, the long
run ``python -m tests.support.fuzz_delegate --cases 10000``) is in
``tests/support/fuzz_delegate.py``. Here: a few hundred cases in LiteRT, a few dozen
in tf.lite, and a batch against the delegate built with AddressSanitizer +
UBSan, loaded into the worker with gcc's libasan preloaded.
``GQ_FUZZ_CASES`` changes the LiteRT case count.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.support import fuzz_delegate as fz

CI_CASES = int(os.environ.get("GQ_FUZZ_CASES", "300"))
TFLITE_CASES = 200
ASAN_CASES = 150


@pytest.fixture(scope="module")
def bases():
    return fz.base_models()


def _check(result, count):
    crashes = "\n".join(f"case {n}: {d}\n{tail}" for n, d, tail in result.crashes)
    assert not result.crashes, f"{len(result.crashes)} crashing case(s):\n{crashes}"
    assert result.cases == count
    # Every error surfaced as a Python exception of the documented kinds.
    assert set(result.error_types) <= {"RuntimeError", "ValueError"}, result.error_types
    # The corpus exercises both sides: valid variants run, most edits are caught.
    assert result.status["ok"] > 0
    assert result.status["rejected"] > count // 2


def test_fuzz_litert(bases):
    cases = fz.generate(bases, seed=0, count=CI_CASES)
    result = fz.run(cases, runtime="litert", jobs=2)
    _check(result, CI_CASES)
    # The delegate's own messages (not only the runtime's) are what stop most cases.
    ours = sum(n for text, n in result.messages.items() if not text.startswith(("ValueError",
                                                                              "RuntimeError")))
    assert ours > CI_CASES // 3, result.messages.most_common(10)


def test_fuzz_tf_lite(bases):
    # tf.lite has its own failure modes (its graph partitioner crashed on
    # cyclic GQ inputs that LiteRT declines): it gets its own batch.
    cases = fz.generate(bases, seed=1, count=TFLITE_CASES)
    _check(fz.run(cases, runtime="tflite", jobs=2), TFLITE_CASES)


@pytest.fixture(scope="module")
def asan_env():
    env = fz.sanitizer_env()
    if env is None:
        pytest.fail("gcc's libasan is not available: the sanitizer fuzz run needs it (it comes with gcc)")
    return env


def test_sanitizer_setup_reports_an_overflow(asan_env, tmp_path):
    """The preload setup really runs ASan inside Python: a deliberate heap
    overflow in a sanitized library, called through ctypes, is reported."""
    src = tmp_path / "bad.c"
    src.write_text(textwrap.dedent("""
        #include <stdlib.h>
        int overflow(int n) { int* p = malloc(4 * sizeof(int)); int v = p[n]; free(p); return v; }
    """))
    lib = tmp_path / "libbad.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-fsanitize=address", "-o", str(lib), str(src)],
                   check=True, capture_output=True)
    code = f"import ctypes; ctypes.CDLL({str(lib)!r}).overflow(8); print('survived')"
    proc = subprocess.run([sys.executable, "-c", code], env=asan_env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "survived" not in proc.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr


def test_fuzz_litert_under_asan_and_ubsan(bases, asan_env, tmp_path):
    library = fz.build_sanitized_delegate(tmp_path)
    cases = fz.generate(bases, seed=2, count=ASAN_CASES)
    _check(fz.run(cases, runtime="litert", library=library, env=asan_env, jobs=2), ASAN_CASES)
