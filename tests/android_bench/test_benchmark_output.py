"""Tests of android_bench.benchmark_output against hand-written tool outputs.

The fixtures are written from the format described in the module docstring,
one per shape of output the tool produces (newer and older versions, the
ways a run fails), plus a seeded fuzz test of the "only BenchmarkOutputError
escapes" promise.
"""

import math
import random

import pytest

from android_bench import benchmark_output
from android_bench.benchmark_output import BenchmarkOutput, BenchmarkOutputError, RunStat, parse

NEWER = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [2]
INFO: Min runs duration (seconds): [0]
INFO: Num threads: [1]
INFO: Min warmup runs: [5]
INFO: Min warmup runs duration (seconds): [0.5]
INFO: Graph: [/data/local/tmp/gq_bench/m0_gq.tflite]
INFO: Input shapes: []
INFO: Report the peak memory footprint: [1]
INFO: External delegate path: [/data/local/tmp/gq_bench/libgq_delegate.so]
INFO: Loaded model /data/local/tmp/gq_bench/m0_gq.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: EXTERNAL delegate created.
WARN: Some delegate warning that is harmless.
INFO: Explicitly applied EXTERNAL delegate, and the model graph will be completely executed by the delegate.
INFO: The input model file size (MB): 0.842113
INFO: Initialized session in 4.211ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=371 first=2210 curr=1342 min=1301 max=2210 avg=1347.25 std=48
INFO: Running benchmark for at least 2 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=2 first=1355 curr=1338 min=1338 max=1355 avg=1346.5 std=8
INFO: Inference timings in us: Init: 4211, First inference: 2210, Warmup (avg): 1347.25, Inference (avg): 1346.5
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual \
memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=3.48047 overall=10.25
INFO: Overall peak memory footprint (MB) via periodic monitoring: 14.5625
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 45 MB
INFO: + RssAnnon           : 20 MB
INFO: + RssFile + RssShmem : 25 MB
"""

OLDER = """\
STARTING!
Min num runs: [50]
Num threads: [4]
Graph: [/tmp/mobilenet.tflite]
Loaded model /tmp/mobilenet.tflite
The input model file size (MB): 16.9005
Initialized session in 7.5 ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=20 first=31004 curr=25011 min=24890 max=31004 avg=25530.1 std=1290
Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=25102 curr=24987 min=24801 max=26020 avg=25101.7 std=201
Average inference timings in us: Warmup: 25530.1, Init: 7500, Inference: 25101.7
Peak memory footprint (MB): init=2.5 overall=30.75
"""


def run_log(warmup_stat, timed_stat, tail="", head="Graph: [m.tflite]\n"):
    """A minimal complete output with the given statistics lines."""
    return (
        f"{head}"
        "Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.\n"
        f"{warmup_stat}\n"
        "Running benchmark for at least 2 iterations and at least 0 seconds but terminate if exceeding 150 seconds.\n"
        f"{timed_stat}\n"
        f"{tail}"
    )


def test_public_api_is_pinned():
    assert sorted(benchmark_output.__all__) == ["BenchmarkOutput", "BenchmarkOutputError", "RunStat", "parse"]
    assert issubclass(BenchmarkOutputError, ValueError)


def test_newer_format_with_info_prefixes():
    out = parse(NEWER)
    assert isinstance(out, BenchmarkOutput)
    assert out.params["Graph"] == "/data/local/tmp/gq_bench/m0_gq.tflite"
    assert out.params["Num threads"] == "1"
    assert out.params["Min warmup runs duration (seconds)"] == "0.5"
    assert out.params["Input shapes"] == ""
    assert out.params["External delegate path"] == "/data/local/tmp/gq_bench/libgq_delegate.so"
    assert out.model_size_mb == 0.842113
    assert out.init_us == 4211.0  # the summary wins over `Initialized session in 4.211ms`
    assert out.first_inference_us == 2210.0
    assert out.warmup == RunStat(count=371, first_us=2210, curr_us=1342, min_us=1301, max_us=2210,
                                 avg_us=1347.25, std_us=48, all_same=False)
    assert out.inference == RunStat(count=2, first_us=1355, curr_us=1338, min_us=1338, max_us=1355,
                                    avg_us=1346.5, std_us=8, all_same=False)
    assert out.inference.samples() == [1355.0, 1338.0]
    assert out.warmup.samples() is None
    assert out.init_footprint_mb == 3.48047
    assert out.overall_footprint_mb == 10.25
    assert out.peak_memory_mb == 14.5625
    assert out.vm_rss_mb == 45.0
    assert out.warnings == ["Some delegate warning that is harmless."]
    assert out.errors == []


def test_older_format_without_prefixes():
    out = parse(OLDER)
    assert out.params == {"Min num runs": "50", "Num threads": "4", "Graph": "/tmp/mobilenet.tflite"}
    assert out.model_size_mb == 16.9005
    assert out.init_us == 7500.0
    # No "First inference" in the old summary: the warmup's first run is it.
    assert out.first_inference_us == 31004.0
    assert out.warmup.count == 20
    assert out.inference.count == 50 and out.inference.avg_us == 25101.7
    assert out.inference.samples() is None
    assert (out.init_footprint_mb, out.overall_footprint_mb) == (2.5, 30.75)
    assert out.peak_memory_mb is None and out.vm_rss_mb is None


def test_init_from_initialized_session_without_summary():
    out = parse(run_log("count=1 curr=900", "count=2 curr=800(all same)",
                        head="Graph: [m.tflite]\nINFO: Initialized session in 12.345ms.\n"))
    assert out.init_us == pytest.approx(12345.0)  # ms -> us through a float product
    assert out.first_inference_us == 900.0


def test_all_same_lines():
    out = parse(run_log("count=5 curr=1234(all same)", "count=2 curr=1200(all same)"))
    assert out.warmup == RunStat(count=5, curr_us=1234, all_same=True)
    assert out.warmup.samples() == [1234.0] * 5
    assert out.inference.all_same and out.inference.first_us is None
    assert out.inference.samples() == [1200.0, 1200.0]
    assert out.first_inference_us == 1234.0


def test_count_two_gives_exact_samples_in_run_order():
    out = parse(run_log("count=1 curr=5000", "count=2 first=1700 curr=1502 min=1502 max=1700 avg=1601 std=99"))
    assert out.inference.samples() == [1700.0, 1502.0]
    assert out.warmup.samples() == [5000.0]


def test_count_zero_warmup():
    out = parse(run_log("count=0", "count=2 first=10 curr=12 min=10 max=12 avg=11 std=1"))
    assert out.warmup == RunStat(count=0)
    assert out.warmup.samples() == []
    assert out.first_inference_us is None


def test_scientific_notation():
    out = parse(run_log(
        "count=3 first=1402000 curr=1420500 min=1402000 max=1439000 avg=1.4205e+06 std=15099",
        "count=2 first=1.41e+06 curr=1420000 min=1410000 max=1420000 avg=1.415e+06 std=5000",
        tail="Inference timings in us: Init: 1.2345e+05, First inference: 1.402e+06, "
             "Warmup (avg): 1.4205e+06, Inference (avg): 1.415e+06\n"))
    assert out.warmup.avg_us == 1420500.0
    assert out.inference.samples() == [1410000.0, 1420000.0]
    assert out.init_us == 123450.0
    assert out.first_inference_us == 1402000.0


def test_crlf_line_endings():
    out = parse(NEWER.replace("\n", "\r\n"))
    assert out == parse(NEWER)


def test_only_one_stat_line_is_the_timed_loop():
    out = parse("count=2 first=3 curr=4 min=3 max=4 avg=3.5 std=0\n")
    assert out.warmup is None
    assert out.inference.samples() == [3.0, 4.0]


@pytest.mark.parametrize("unknown", ["-1", "nan", "-nan"])
def test_unmeasured_memory_is_none(unknown):
    out = parse(run_log(
        "count=0", "count=1 curr=7",
        tail=f"Memory footprint delta from the start of the tool (MB): init={unknown} overall={unknown}\n"
             f"Overall peak memory footprint (MB) via periodic monitoring: {unknown}\n"
             "Memory status at the end of exeution:\n"
             f"- VmRSS : {unknown} MB\n"))
    assert out.init_footprint_mb is None
    assert out.overall_footprint_mb is None
    assert out.peak_memory_mb is None
    assert out.vm_rss_mb is None


def test_vm_rss_spacing():
    for line in ("- VmRSS: 45 MB", "-   VmRSS   :   45MB", "INFO: - VmRSS              : 45 MB  "):
        assert parse(run_log("count=0", "count=1 curr=7", tail=line + "\n")).vm_rss_mb == 45.0


def test_errors_of_a_successful_run_are_collected():
    out = parse(run_log("count=0", "count=1 curr=7", tail="ERROR: something odd\nWARNING: careful\n"))
    assert out.errors == ["something odd"]
    assert out.warnings == ["careful"]


UNRESOLVED_GQ = """\
INFO: STARTING!
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/gq_bench/m0_gq.tflite]
INFO: Loaded model /data/local/tmp/gq_bench/m0_gq.tflite
ERROR: Encountered unresolved custom op: GQ_FULLY_CONNECTED.
ERROR: Node number 3 (GQ_FULLY_CONNECTED) failed to prepare.
ERROR: Failed to allocate tensors!
ERROR: Benchmarking failed.
"""

DELEGATE_NOT_LOADED = """\
INFO: Graph: [/data/local/tmp/gq_bench/m0_gq.tflite]
INFO: External delegate path: [/data/local/tmp/gq_bench/libgq_delegate.so]
INFO: Loaded model /data/local/tmp/gq_bench/m0_gq.tflite
ERROR: Failed to load delegate from /data/local/tmp/gq_bench/libgq_delegate.so: dlopen failed: \
"libgq_delegate.so" is for EM_X86_64 (62) instead of EM_AARCH64 (183)
ERROR: Encountered unresolved custom op: GQ_CONV_2D.
ERROR: Benchmarking failed.
"""

MISSING_MODEL = """\
INFO: Graph: [/data/local/tmp/nope.tflite]
ERROR: Could not open '/data/local/tmp/nope.tflite'.
ERROR: Failed to mmap model /data/local/tmp/nope.tflite
"""


def failure(text):
    with pytest.raises(BenchmarkOutputError) as info:
        parse(text)
    return str(info.value)


def test_unresolved_gq_op_says_to_pass_the_delegate():
    message = failure(UNRESOLVED_GQ)
    assert "Expected the timed loop's statistics line" in message
    assert "GQ_FULLY_CONNECTED" in message
    assert "--delegate" in message and "build-delegate" in message
    assert "could not be loaded" not in message  # no spurious delegate or model hint
    assert "model file" not in message
    assert "Benchmarking failed." in message  # the tool's own words are quoted


def test_unresolved_gq_op_with_a_loaded_delegate_suggests_a_rebuild():
    text = UNRESOLVED_GQ.replace("INFO: Num threads: [1]", "INFO: External delegate path: [/d/libgq.so]")
    message = failure(text)
    assert "/d/libgq.so" in message and "build-delegate" in message


def test_gq_interpreter_failure_says_to_pass_the_delegate():
    message = failure("Graph: [m.tflite]\nDidn't find op for builtin opcode 'CUSTOM'\n"
                      "Failed to initialize the interpreter (GQ_EMBEDDING)\n")
    assert "GQ_EMBEDDING" in message and "--delegate" in message


def test_delegate_load_failure():
    message = failure(DELEGATE_NOT_LOADED)
    assert "delegate .so (/data/local/tmp/gq_bench/libgq_delegate.so) could not be loaded" in message
    assert "wrong ABI" in message and "host" in message
    assert message.index("could not be loaded") < message.index("GQ_CONV_2D")  # root cause first
    assert "--delegate PATH" not in message  # a delegate was given: the advice is to fix it
    assert "EM_X86_64" in message


def test_missing_model():
    message = failure(MISSING_MODEL)
    assert "model file (/data/local/tmp/nope.tflite) could not be read" in message


@pytest.mark.parametrize("text", ["", "\n\n", "\r\n   \r\n"])
def test_empty_output(text):
    assert "empty output" in failure(text)


def test_truncated_output():
    # The process was killed inside the timed loop: warmup done, no timed line.
    text = NEWER[: NEWER.index("INFO: count=2 ")]
    message = failure(text)
    assert "killed" in message
    assert "Running benchmark for at least 2 iterations" in message  # the last line is quoted


def test_killed_between_the_loops():
    # One announcement and its statistics line, no summary: that line is the warmup's.
    text = NEWER[: NEWER.index("INFO: Running benchmark for at least 2")]
    assert "killed" in failure(text)


def test_tail_is_limited_to_the_last_lines():
    text = "".join(f"line {i}\n\n" for i in range(100))
    message = failure(text)
    assert "line 99" in message and "line 85" in message and "line 84" not in message


def test_errors_list_is_in_the_message():
    message = failure("Graph: [m.tflite]\n" + "".join(f"ERROR: problem {i}\n" for i in range(30)) + "x\n" * 20)
    assert "problem 29" in message and "last 5 of 30" in message


@pytest.mark.parametrize("line, what", [
    ("count=2 first=12x curr=1", "`first`"),
    ("count=two curr=1", "run count"),
    ("count=2 first=1_000 curr=2", "`first`"),
    ("count=2 first=inf curr=2", "finite"),
    ("count=3 first=1", "`curr=`"),
    ("count=2 curr=1 junk", "`name=value`"),
    ("count=" + "9" * 5000 + " curr=1", "run count"),
    ("Initialized session in fast ms.", "init time"),
    ("Initialized session in 3 seconds", "Initialized session in"),
    ("The input model file size (MB): big", "model size"),
    ("Peak memory footprint (MB): init=1..5 overall=2", "`init`"),
    ("Overall peak memory footprint (MB) via periodic monitoring: 1e", "peak memory"),
    ("- VmRSS : many MB", "VmRSS"),
    ("Inference timings in us: Init: soon, First inference: 2", "`Init`"),
])
def test_numbers_that_do_not_parse_name_the_line(line, what):
    message = failure(run_log("count=0", "count=1 curr=1", tail=f"INFO: {line}\n"))
    assert what in message
    assert "line 6" in message  # 1 head line, 4 loop lines, then this one
    assert line[:40] in message


@pytest.mark.parametrize("stat, expected", [
    (RunStat(count=0), []),
    (RunStat(count=0, curr_us=5.0, all_same=True), []),
    (RunStat(count=1, curr_us=5.0), [5.0]),
    (RunStat(count=1, curr_us=5.0, all_same=True), [5.0]),
    (RunStat(count=2, first_us=4.0, curr_us=5.0, min_us=4.0, max_us=5.0, avg_us=4.5, std_us=0.5), [4.0, 5.0]),
    (RunStat(count=2, curr_us=5.0, all_same=True), [5.0, 5.0]),
    (RunStat(count=4, curr_us=5.0, all_same=True), [5.0] * 4),
    (RunStat(count=2, curr_us=5.0), None),  # first missing: the earlier run is unknown
    (RunStat(count=3, first_us=4.0, curr_us=5.0, min_us=4.0, max_us=6.0, avg_us=5.0, std_us=1.0), None),
    (RunStat(count=1), None),
])
def test_samples(stat, expected):
    assert stat.samples() == expected


def test_not_a_string():
    with pytest.raises(BenchmarkOutputError, match="Expected the output as str. Received: bytes"):
        parse(NEWER.encode())


def mutations(rng, text):
    """Random damage of a good output: the ways a log gets cut or corrupted."""
    lines = text.splitlines(keepends=True)
    kind = rng.randrange(6)
    if kind == 0:  # cut anywhere, also mid-line
        return text[: rng.randrange(len(text) + 1)]
    if kind == 1:  # lines out of order
        rng.shuffle(lines)
        return "".join(lines)
    if kind == 2:  # some lines dropped
        return "".join(line for line in lines if rng.random() < 0.7)
    if kind == 3:  # random characters overwritten, including control and non-ASCII ones
        chars = list(text)
        alphabet = "0123456789=:.,-+e[]() \r\n\t\x00\x0b\ufffdnaxINFOcount=curr=VmRSS"
        for _ in range(rng.randrange(1, 40)):
            pick = rng.choice(alphabet) if rng.random() < 0.8 else chr(rng.randrange(0x110000))
            chars[rng.randrange(len(chars))] = pick
        return "".join(chars)
    if kind == 4:  # bytes garbage decoded the way a log reader would
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        at = rng.randrange(len(text) + 1)
        return text[:at] + garbage.decode("utf-8", errors="replace") + text[at:]
    # lines duplicated and spliced together
    picked = [rng.choice(lines) for _ in range(rng.randrange(1, 40))]
    return "".join(line.rstrip("\n") if rng.random() < 0.3 else line for line in picked)


def test_fuzz_only_output_or_benchmark_output_error():
    rng = random.Random(20240611)
    outcomes = {"parsed": 0, "rejected": 0}
    for case in range(400):
        text = mutations(rng, NEWER if case % 2 else OLDER)
        try:
            out = parse(text)
        except BenchmarkOutputError as e:
            assert str(e)
            outcomes["rejected"] += 1
            continue
        assert isinstance(out, BenchmarkOutput) and isinstance(out.inference, RunStat)
        samples = out.inference.samples()
        assert samples is None or all(math.isfinite(s) for s in samples)
        outcomes["parsed"] += 1
    # Both branches must be exercised, or the test proves nothing.
    assert outcomes["parsed"] > 20 and outcomes["rejected"] > 20, outcomes


@pytest.mark.parametrize("line", [
    "count=" + " " * 200_000 + "x",
    "- VmRSS : " + "a" * 200_000,
    "Initialized session in " + "1" * 200_000 + "x",
    "count=2 first=" + "1" * 200_000 + "x curr=1",
    "A" * 200_000 + ": [" + "]" * 200_000,
])
def test_long_garbage_lines_are_linear(line):
    # A quadratic regular expression would take minutes on these lines.
    try:
        parse(line)
    except BenchmarkOutputError:
        pass
