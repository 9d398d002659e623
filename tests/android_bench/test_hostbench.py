"""``python -m android_bench.hostbench``: benchmark_model's flags, loop protocol
and output format on the host, with LiteRT; every failure is an ERROR line
and exit status 1, never a traceback."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from android_bench import benchmark_output, hostbench
from android_bench.hostbench import Stat, format_float, main, parse_flags

ROOT = Path(__file__).resolve().parents[2]
STAT_LINE = re.compile(r"INFO: count=\d+")
# Quick loops: no warmup time floor, no timed-loop time floor.
FAST = ["--warmup_runs=1", "--warmup_min_secs=0", "--min_secs=0"]


@pytest.fixture(scope="module")
def delegate():
    from converters.runtime import delegate_path

    return delegate_path()


def _main(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr().out
    return code, out


def _lines(out):
    return out.splitlines()


def _stat_lines(out):
    return [line for line in _lines(out) if STAT_LINE.match(line)]


def _subprocess(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "android_bench.hostbench", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _assert_in_order(lines, prefixes):
    """Each prefix starts some line, after the line the previous one started."""
    at = -1
    for prefix in prefixes:
        later = [i for i, line in enumerate(lines) if i > at and line.startswith(prefix)]
        assert later, f"no line starting {prefix!r} after line {at}:\n" + "\n".join(lines)
        at = later[0]


STOCK_ORDER = [
    "INFO: STARTING!",
    "INFO: Log parameter values verbosely: [0]",
    "INFO: Num threads: [1]",
    "INFO: Graph: [",
    "INFO: External delegate path: [",
    "INFO: #threads used for CPU inference: [1]",
    "INFO: Loaded model ",
    "INFO: The input model file size (MB): ",
    "INFO: Initialized session in ",
    "INFO: Running benchmark for at least 1 iterations and at least 0 seconds but terminate if exceeding 150 seconds.",
    "INFO: count=",
    "INFO: Running benchmark for at least 2 iterations and at least 0 seconds but terminate if exceeding 150 seconds.",
    "INFO: count=2 ",
    "INFO: Inference timings in us: Init: ",
    "INFO: Memory footprint delta from the start of the tool (MB): init=",
    "INFO: Overall peak memory footprint (MB) via periodic monitoring: ",
    "INFO: Memory status at the end of exeution:",
    "INFO: - VmRSS              : ",
    "INFO: + RssAnnon           : ",
    "INFO: + RssFile + RssShmem : ",
]


def test_gq_model_with_delegate_prints_stock_lines_in_order(fc_models, delegate, capsys):
    code, out = _main(capsys, f"--graph={fc_models['gq']}", f"--external_delegate_path={delegate}",
                      "--num_threads=1", "--num_runs=2", "--report_peak_memory_footprint=true", *FAST)
    assert code == 0, out
    lines = _lines(out)
    _assert_in_order(lines, STOCK_ORDER)
    assert all(re.match(r"(INFO|WARN|ERROR): ", line) for line in lines), out
    assert f"INFO: Graph: [{fc_models['gq']}]" in lines
    assert f"INFO: External delegate path: [{delegate}]" in lines
    size = os.path.getsize(fc_models["gq"]) / 1e6
    assert f"INFO: The input model file size (MB): {format_float(size)}" in lines
    summary = next(line for line in lines if line.startswith("INFO: Inference timings in us:"))
    assert re.fullmatch(r"INFO: Inference timings in us: Init: \d+, First inference: \d+, "
                        r"Warmup \(avg\): [0-9.e+]+, Inference \(avg\): [0-9.e+]+", summary), summary


def test_two_timed_runs_give_both_samples(fc_models, capsys):
    code, out = _main(capsys, f"--graph={fc_models['float32']}", "--num_runs=2", *FAST)
    assert code == 0, out
    timed = _stat_lines(out)[1]
    m = re.fullmatch(r"INFO: count=2 first=(\d+) curr=(\d+) min=(\d+) max=(\d+) avg=(\S+) std=(\d+)", timed)
    if m is None:
        assert re.fullmatch(r"INFO: count=2 curr=\d+\(all same\)", timed), timed
    else:
        first, curr, low, high = map(int, m.groups()[:4])
        assert (low, high) == (min(first, curr), max(first, curr)) and low != high
        assert m[5] == format_float((first + curr) / 2)
        assert int(m[6]) == (high - low) // 2  # population std of two samples, truncated


def test_timed_loop_runs_exactly_num_runs_without_time_floor(fc_models, capsys):
    code, out = _main(capsys, f"--graph={fc_models['float32']}", "--num_runs=7", "--warmup_runs=3", *FAST[1:])
    assert code == 0, out
    warmup, timed = _stat_lines(out)
    assert timed.startswith("INFO: count=7 ")
    assert warmup.startswith("INFO: count=3 ")  # no time floor: exactly the runs asked for
    assert "INFO: Min num runs: [7]" in out and "INFO: Min warmup runs: [3]" in out


def test_warmup_honours_its_minimum_time(fc_models, capsys):
    start = time.perf_counter()
    code, out = _main(capsys, f"--graph={fc_models['float32']}", "--warmup_runs=1", "--warmup_min_secs=0.2",
                      "--num_runs=1", "--min_secs=0")
    elapsed = time.perf_counter() - start
    assert code == 0, out
    assert "at least 1 iterations and at least 0.2 seconds" in out
    warmup = int(re.match(r"INFO: count=(\d+)", _stat_lines(out)[0])[1])
    # A sub-millisecond model: 0.2 s of warmup is many runs, not the one asked for.
    assert warmup > 10
    assert elapsed >= 0.2


def test_max_secs_ends_a_loop_before_its_run_count(fc_models, capsys):
    start = time.perf_counter()
    code, out = _main(capsys, f"--graph={fc_models['float32']}", "--warmup_runs=0", "--warmup_min_secs=0",
                      "--num_runs=1000000000", "--min_secs=0", "--max_secs=0.1")
    assert code == 0, out
    assert time.perf_counter() - start < 30  # generous: a loaded CI machine; unbounded would be hours
    count = int(re.match(r"INFO: count=(\d+)", _stat_lines(out)[1])[1])
    assert 0 < count < 1_000_000_000


def test_unknown_flags_warn_and_the_run_continues(fc_models, capsys):
    code, out = _main(capsys, f"--graph={fc_models['float32']}", "--num_runs=2", "--use_xnnpack=true", "--foo",
                      "stray", *FAST)
    assert code == 0, out
    lines = _lines(out)
    assert "WARN: Unconsumed cmdline flags: --use_xnnpack=true --foo stray" in lines
    _assert_in_order(lines, ["INFO: STARTING!", "WARN: Unconsumed", "INFO: Log parameter values", "INFO: count=2 "])


def test_delegate_options_reach_the_delegate(fc_models, delegate, capsys):
    code, out = _main(capsys, f"--graph={fc_models['gq']}", f"--external_delegate_path={delegate}",
                      "--external_delegate_options=kernel:reference", "--num_runs=2", *FAST)
    assert code == 0, out
    assert "INFO: External delegate options: [kernel:reference]" in out
    # The delegate validates its options: a bad one proves they are passed on.
    code, out = _main(capsys, f"--graph={fc_models['gq']}", f"--external_delegate_path={delegate}",
                      "--external_delegate_options=kernel:no_such_kernel", *FAST)
    assert code == 1
    assert f"ERROR: Failed to load delegate from {delegate}: " in out and "no_such_kernel" in out


@pytest.mark.parametrize("case", ["missing_model", "not_a_model", "no_graph", "bad_number", "bad_bool",
                                  "negative_runs", "missing_delegate", "not_a_delegate", "bad_options",
                                  "gq_without_delegate"])
def test_failures_are_error_lines_and_status_1(case, fc_models, tmp_path, capsys):
    junk = tmp_path / "junk.bin"
    junk.write_text("not an ELF library nor a TFLite model\n")
    graph = f"--graph={fc_models['float32']}"
    args, expected = {
        "missing_model": (["--graph=/no/such/m.tflite"], "ERROR: Could not open '/no/such/m.tflite'."),
        "not_a_model": ([f"--graph={junk}"], f"ERROR: Failed to load model '{junk}'."),
        "no_graph": ([], "ERROR: Please specify the name of your TF Lite input file with --graph"),
        "bad_number": ([graph, "--num_runs=abc"],
                       "ERROR: Expected an integer for --num_runs. Received: --num_runs=abc"),
        "bad_bool": ([graph, "--report_peak_memory_footprint=maybe"],
                     "ERROR: Expected --report_peak_memory_footprint=true"),
        "negative_runs": ([graph, "--num_runs=-1"], "ERROR: Expected --num_runs >= 0. Received: --num_runs=-1"),
        "missing_delegate": ([graph, "--external_delegate_path=/no/such.so"],
                             "ERROR: Failed to load delegate from /no/such.so: no such file"),
        "not_a_delegate": ([graph, f"--external_delegate_path={junk}"],
                           f"ERROR: Failed to load delegate from {junk}: "),
        "bad_options": ([graph, f"--external_delegate_path={junk}", "--external_delegate_options=novalue"],
                        "ERROR: Expected --external_delegate_options as 'key1:value1;key2:value2'"),
        "gq_without_delegate": ([f"--graph={fc_models['gq']}"],
                                "ERROR: Encountered unresolved custom op: GQ_FULLY_CONNECTED"),
    }[case]
    code, out = _main(capsys, *args, *FAST)
    assert code == 1, out
    assert any(line.startswith(expected) for line in _lines(out)), out
    assert "Traceback" not in out and not _stat_lines(out)


def test_subprocess_output_parses_like_benchmark_model(fc_models, delegate):
    r = _subprocess(f"--graph={fc_models['gq']}", f"--external_delegate_path={delegate}", "--num_threads=1",
                    "--num_runs=2", "--report_peak_memory_footprint=true", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    _assert_in_order(r.stdout.splitlines(), STOCK_ORDER)
    parsed = benchmark_output.parse(r.stdout + r.stderr)
    assert parsed.inference.count == 2 and len(parsed.inference.samples()) == 2
    assert parsed.init_us > 0 and parsed.first_inference_us is not None
    assert parsed.peak_memory_mb > 0 and parsed.vm_rss_mb > 0


def test_subprocess_failures_have_no_traceback(fc_models, tmp_path):
    # LiteRT's Delegate.__del__ fails on a library that did not load and
    # Python reports that on stderr: the tool keeps it quiet.
    junk = tmp_path / "junk.so"
    junk.write_text("not an ELF library\n")
    for args in ([f"--graph={fc_models['float32']}", f"--external_delegate_path={junk}"],
                 [f"--graph={fc_models['gq']}"], ["--num_runs=abc"]):
        r = _subprocess(*args, *FAST)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "ERROR: " in r.stdout
        assert "Traceback" not in r.stdout + r.stderr


def test_import_is_light():
    code = ("import sys, android_bench.hostbench; "
            "print(sorted(m for m in ('numpy', 'ai_edge_litert', 'tensorflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ------------------------------------------------------------------ pure parts


def test_stat_lines_follow_the_stock_format():
    assert str(Stat.of([])) == "count=0"
    assert str(Stat.of([7])) == "count=1 curr=7"
    assert str(Stat.of([7, 7, 7])) == "count=3 curr=7(all same)"
    # std: the population standard deviation, truncated to an integer.
    samples = [1, 2, 4]
    std = float(np.std(samples))  # 1.247...
    assert str(Stat.of(samples)) == f"count=3 first=1 curr=4 min=1 max=4 avg=2.33333 std={int(std)}"
    assert str(Stat.of([1_400_000, 1_441_000])) == (
        "count=2 first=1400000 curr=1441000 min=1400000 max=1441000 avg=1.4205e+06 std=20500")


def test_stat_std_is_exact_for_large_samples():
    rng = np.random.default_rng(3)
    samples = rng.integers(10**6, 10**9, size=1000)
    assert Stat.of(samples).std == int(np.std(samples.astype(np.float64)))


@pytest.mark.parametrize("value, text", [(1420.5, "1420.5"), (1.4205e6, "1.4205e+06"), (1e6, "1e+06"),
                                         (0.5, "0.5"), (150.0, "150"), (3.456, "3.456"), (1234.5678, "1234.57"),
                                         (0.0, "0"), (1e-5, "1e-05")])
def test_floats_print_like_cpp_ostream(value, text):
    assert format_float(value) == text


def test_flag_syntax():
    params, unconsumed = parse_flags(["--graph", "m.tflite", "--num_runs=3", "--min_secs", "0.25",
                                      "--report_peak_memory_footprint", "--run_delay", "-1", "--x=1"])
    assert params["graph"] == "m.tflite" and params["num_runs"] == 3 and params["min_secs"] == 0.25
    assert params["report_peak_memory_footprint"] is True and params["run_delay"] == -1.0
    assert unconsumed == ["--x=1"]
    assert params.given == {"graph", "num_runs", "min_secs", "report_peak_memory_footprint", "run_delay"}
    defaults, _ = parse_flags([])
    assert (defaults["num_threads"], defaults["warmup_runs"], defaults["warmup_min_secs"], defaults["num_runs"],
            defaults["min_secs"], defaults["max_secs"], defaults["memory_footprint_check_interval_ms"]) == (
        -1, 1, 0.5, 50, 1.0, 150.0, 50)
    off, _ = parse_flags(["--report_peak_memory_footprint", "false"])
    assert off["report_peak_memory_footprint"] is False


def test_delegate_options_syntax():
    assert hostbench.parse_delegate_options("") == {}
    assert hostbench.parse_delegate_options("kernel:avx2;a:b:c;") == {"kernel": "avx2", "a": "b:c"}


def test_peak_memory_is_the_session_not_its_parent(fc_models):
    # Linux carries ru_maxrss over exec: a session started by a large process
    # (a training run calling android_bench) must still report its own peak.
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB resident in this process
    r = _subprocess(f"--graph={fc_models['float32']}", "--num_runs=2", *FAST, "--report_peak_memory_footprint=true")
    assert ballast.sum() > 0
    out = benchmark_output.parse(r.stdout)
    assert 0 < out.peak_memory_mb < 300, r.stdout
