"""Op-level profiles (``android_bench.opprofile``): benchmark_model's tables,
the host profiler on real models, the ``profile`` command and ``run --op-profile``."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from android_bench import __main__ as cli
from android_bench import opprofile
from android_bench.errors import BenchError
from android_bench.opprofile import OpProfile, format_profile, parse_benchmark_profile, profile_host
from converters import flatbuf
from converters.runtime import delegate_path, make_interpreter

# What TFLite's benchmark_model (2.1x, default verbosity) prints with
# --enable_op_profiling=true for a GQ streaming encoder step (RESHAPE, GQ_LSTM,
# RESHAPE, GQ_LSTM, GQ_FULLY_CONNECTED) run with our delegate: the GQ ops are
# GqDelegate nodes 5-7, XNNPACK took each RESHAPE (nodes 8, 9). Columns are
# tab-separated and right-aligned as its StatsCalculator writes them.
DEVICE_OUTPUT = (
    "INFO: STARTING!\n"
    "INFO: Log parameter values verbosely: [0]\n"
    "INFO: Min num runs: [100]\n"
    "INFO: Num threads: [1]\n"
    "INFO: Graph: [/data/local/tmp/gq_bench_x/m0_encoder.tflite]\n"
    "INFO: Enable op profiling: [1]\n"
    "INFO: External delegate path: [/data/local/tmp/gq_bench_x/libgq_delegate.so]\n"
    "INFO: Loaded model /data/local/tmp/gq_bench_x/m0_encoder.tflite\n"
    "INFO: EXTERNAL delegate created.\n"
    "INFO: Initialized session in 2.331ms.\n"
    "INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds "
    "but terminate if exceeding 150 seconds.\n"
    "INFO: count=11204 first=61 curr=39 min=35 max=170 avg=42.1 std=6\n"
    "INFO: Running benchmark for at least 100 iterations and at least 0 seconds "
    "but terminate if exceeding 150 seconds.\n"
    "INFO: count=100 first=57 curr=40 min=37 max=93 avg=41.85 std=6\n"
    "INFO: Inference timings in us: Init: 2331, First inference: 61, Warmup (avg): 42.1, Inference (avg): 41.85\n"
    "INFO: Profiling Info for Benchmark Initialization:\n"
    "============================== Run Order ==============================\n"
    "\t                             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]"
    "\t[Name]\n"
    "\t                 ModifyGraphWithDelegate\t    0.412\t    0.412\t 78.327%\t 78.327%\t  1024.000\t        1"
    "\tModifyGraphWithDelegate/0\n"
    "\t                         AllocateTensors\t    0.114\t    0.114\t 21.673%\t100.000%\t     0.000\t        1"
    "\tAllocateTensors/0\n"
    "\n"
    "Number of nodes executed: 2\n"
    "\n"
    "INFO: Operator-wise Profiling Info for Regular Benchmark Runs:\n"
    "============================== Run Order ==============================\n"
    "\t                             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]"
    "\t[Name]\n"
    "\t                   TfLiteXNNPackDelegate\t    0.005\t    0.002\t  5.405%\t  5.405%\t     0.000\t        1"
    "\t[encoder_step/encoder_input_stack/Reshape]:8\n"
    "\t                              GqDelegate\t    0.024\t    0.017\t 45.946%\t 51.351%\t     0.000\t        1"
    "\t[tfl.custom, PartitionedCall:1, PartitionedCall:0]:5\n"
    "\t                   TfLiteXNNPackDelegate\t    0.003\t    0.002\t  5.405%\t 56.757%\t     0.000\t        1"
    "\t[encoder_step/encoder_stack_0/Reshape]:9\n"
    "\t                              GqDelegate\t    0.015\t    0.012\t 32.432%\t 89.189%\t     0.000\t        1"
    "\t[tfl.custom1, PartitionedCall:3, PartitionedCall:2]:6\n"
    "\t                              GqDelegate\t    0.006\t    0.004\t 10.811%\t100.000%\t     0.000\t        1"
    "\t[PartitionedCall:4]:7\n"
    "\n"
    "============================== Top by Computation Time ==============================\n"
    "\t                             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]"
    "\t[Name]\n"
    "\t                              GqDelegate\t    0.024\t    0.017\t 45.946%\t 45.946%\t     0.000\t        1"
    "\t[tfl.custom, PartitionedCall:1, PartitionedCall:0]:5\n"
    "\t                              GqDelegate\t    0.015\t    0.012\t 32.432%\t 78.378%\t     0.000\t        1"
    "\t[tfl.custom1, PartitionedCall:3, PartitionedCall:2]:6\n"
    "\t                              GqDelegate\t    0.006\t    0.004\t 10.811%\t 89.189%\t     0.000\t        1"
    "\t[PartitionedCall:4]:7\n"
    "\t                   TfLiteXNNPackDelegate\t    0.005\t    0.002\t  5.405%\t 94.595%\t     0.000\t        1"
    "\t[encoder_step/encoder_input_stack/Reshape]:8\n"
    "\t                   TfLiteXNNPackDelegate\t    0.003\t    0.002\t  5.405%\t100.000%\t     0.000\t        1"
    "\t[encoder_step/encoder_stack_0/Reshape]:9\n"
    "\n"
    "Number of nodes executed: 5\n"
    "============================== Summary by node type ==============================\n"
    "\t                             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]"
    "\t[times called]\n"
    "\t                              GqDelegate\t        3\t     0.033\t   89.189%\t   89.189%\t     0.000\t        3\n"
    "\t                   TfLiteXNNPackDelegate\t        2\t     0.004\t   10.811%\t  100.000%\t     0.000\t        2\n"
    "\n"
    "Timings (microseconds): count=100 first=53 curr=36 min=35 max=88 avg=37.42 std=5\n"
    "Memory (bytes): count=0\n"
    "5 nodes observed\n"
)

# An older benchmark_model (a [start] column), a model with a WHILE loop
# (subgraph 1) and a delegate that reports the ops inside its partition.
OLD_OUTPUT = (
    "Operator-wise Profiling Info for Regular Benchmark Runs:\n"
    "Primary graph profile:\n"
    "============================== Run Order ==============================\n"
    "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]"
    "\t[times called]\t[Name]\n"
    "\t         FULLY_CONNECTED\t            0.000\t    0.130\t    0.120\t 60.000%\t 60.000%\t     0.000\t        1"
    "\t[dense/MatMul]:0\n"
    "\t                   WHILE\t            0.121\t    0.085\t    0.080\t 40.000%\t100.000%\t     0.000\t        1"
    "\t[while:1, while:2]:1\n"
    "\n"
    "============================== Top by Computation Time ==============================\n"
    "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]"
    "\t[times called]\t[Name]\n"
    "\t         FULLY_CONNECTED\t            0.000\t    0.130\t    0.120\t 60.000%\t 60.000%\t     0.000\t        1"
    "\t[dense/MatMul]:0\n"
    "\t                   WHILE\t            0.121\t    0.085\t    0.080\t 40.000%\t100.000%\t     0.000\t        1"
    "\t[while:1, while:2]:1\n"
    "\n"
    "Number of nodes executed: 2\n"
    "Timings (microseconds): count=10 first=215 curr=199 min=195 max=215 avg=200.5 std=6\n"
    "Memory (bytes): count=0\n"
    "2 nodes observed\n"
    "\n"
    "Subgraph (index: 1) profile:\n"
    "============================== Run Order ==============================\n"
    "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]"
    "\t[times called]\t[Name]\n"
    "\t                     ADD\t            0.125\t    0.007\t    0.006\t100.000%\t100.000%\t     0.000\t        4"
    "\t[while/add]:0\n"
    "\n"
    "Subgraph (index: 1) Timings (microseconds): count=10 curr=24(all same)\n"
    "Memory (bytes): count=0\n"
    "1 nodes observed\n"
    "\n"
    "Delegate internal: \n"
    "============================== Run Order ==============================\n"
    "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]"
    "\t[times called]\t[Name]\n"
    "\tFully Connected (NC, F32) GEMM\t            0.001\t    0.110\t    0.100\t100.000%\t100.000%\t     0.000"
    "\t        1\tDelegate/Fully Connected (NC, F32) GEMM:0\n"
    "\n"
    "Timings (microseconds): count=10 curr=100(all same)\n"
)

# The benchmark_model stand-in on the fake phone: hostbench's session output,
# then, with --enable_op_profiling=true, a profile of the model's nodes in the
# tool's table format (as with our delegate and XNNPACK: every GQ op one
# GqDelegate node, the other ops one TfLiteXNNPackDelegate partition).
PROFILING_STAND_IN = f"""#!{sys.executable}
import subprocess, sys
from converters import flatbuf
argv = sys.argv[1:]
profiling = "--enable_op_profiling=true" in argv
argv = [a for a in argv if a != "--enable_op_profiling=true"]
r = subprocess.run([sys.executable, "-m", "android_bench.hostbench"] + argv, capture_output=True, text=True)
sys.stdout.write(r.stdout + r.stderr)
if r.returncode or not profiling:
    sys.exit(r.returncode)
graph = next(a.split("=", 1)[1] for a in argv if a.startswith("--graph="))
runs = next(a.split("=", 1)[1] for a in argv if a.startswith("--num_runs="))
model = flatbuf.read(open(graph, "rb").read())
ops = model.subgraphs[0].operators
nodes = [("GqDelegate", f"[gq_out_{{i}}]:{{len(ops) + i}}") for i, op in enumerate(ops)
         if flatbuf.op_name(model, op).startswith("GQ_")]
if len(nodes) < len(ops):
    nodes.append(("TfLiteXNNPackDelegate", f"[xnn_out]:{{len(ops) + len(nodes)}}"))
print("INFO: Operator-wise Profiling Info for Regular Benchmark Runs:")
print("=" * 30 + " Run Order " + "=" * 30)
print("\\t" + "[node type]".rjust(40) + \
"\\t  [first]\\t [avg ms]\\t     [%]\\t  [cdf%]\\t  [mem KB]\\t[times called]\\t[Name]")
share = 100.0 / len(nodes)
for k, (kind, name) in enumerate(nodes):
    print(f"\\t{{kind:>40}}\\t{{0.02:9.3f}}\\t{{0.01 * (k + 1):9.3f}}\\t{{share:7.3f}}%\\t{{share * (k + 1):7.3f}}%"
          f"\\t{{0:10.3f}}\\t{{1:9d}}\\t{{name}}")
print()
print(f"Timings (microseconds): count={{runs}} curr={{sum(10 * (k + 1) for k in range(len(nodes)))}}(all same)")
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A float streaming-step-like graph with two inputs and five op types:
    RESHAPE, FULLY_CONNECTED, TANH, ADD, LOGISTIC (TFLite's converter)."""
    import gq_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    from gq_tf._keras import tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(32, 16)).astype(np.float32) / 6)
    b = tf.constant(rng.normal(size=16).astype(np.float32))

    class Step(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 4], tf.float32), tf.TensorSpec([1, 16], tf.float32)])
        def step(self, x, h):
            y = tf.tanh(tf.matmul(tf.reshape(x, [1, 32]), w) + b)
            return y + h, tf.sigmoid(y)

    module = Step()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.step.get_concrete_function()], module)
    path = tmp_path_factory.mktemp("op_profile") / "step.tflite"
    path.write_bytes(converter.convert())
    return path


def _op_names(path):
    model = flatbuf.read(Path(path).read_bytes())
    return [flatbuf.op_name(model, op) for op in model.subgraphs[0].operators]


# ---------------------------------------------------------------- benchmark_model's tables


def test_parse_device_profile():
    p = parse_benchmark_profile(DEVICE_OUTPUT)
    assert p.source == "benchmark_model --enable_op_profiling" and p.runs == 100
    # The run-order table, not the initialization profile printed before it.
    assert [(n.order, n.index, n.type) for n in p.nodes] == [
        (0, 8, "TfLiteXNNPackDelegate"), (1, 5, "GqDelegate"), (2, 9, "TfLiteXNNPackDelegate"),
        (3, 6, "GqDelegate"), (4, 7, "GqDelegate")]
    lstm = p.nodes[1]
    assert lstm.name == "[tfl.custom, PartitionedCall:1, PartitionedCall:0]:5"
    # ms in the table, us in the structure (the table has 3 decimals: exact to 1 us).
    assert (lstm.avg_us, lstm.first_us, lstm.percent, lstm.times_called) == (17.0, 24.0, 45.946, 1)
    assert [(t.type, t.count, t.avg_us, t.percent, t.times_called) for t in p.by_type] == [
        ("GqDelegate", 3, 33.0, 89.189, 3), ("TfLiteXNNPackDelegate", 2, 4.0, 10.811, 2)]
    assert p.nodes_total_us == 37.42  # the profiler's own total (Timings avg)
    assert p.whole_graph_us is None and p.delegate_internal == [] and p.notes == []


def test_parse_older_tool_subgraphs_and_delegate_internal():
    p = parse_benchmark_profile(OLD_OUTPUT)
    assert [(n.subgraph, n.index, n.type, n.avg_us, n.times_called) for n in p.nodes] == [
        (0, 0, "FULLY_CONNECTED", 120.0, 1), (0, 1, "WHILE", 80.0, 1), (1, 0, "ADD", 6.0, 4)]
    assert p.runs == 10 and p.nodes_total_us == 200.5
    # No summary table printed: the types are summed from subgraph 0's nodes.
    assert [(t.type, t.count, t.avg_us) for t in p.by_type] == [("FULLY_CONNECTED", 1, 120.0), ("WHILE", 1, 80.0)]
    [inner] = p.delegate_internal
    assert inner.type == "Fully Connected (NC, F32) GEMM" and inner.avg_us == 100.0 and inner.index == 0


def test_parse_tolerates_spaces_crlf_and_reads_csv():
    # Tabs turned into spaces and Windows line ends (a log copied from a terminal).
    copied = DEVICE_OUTPUT.replace("\t", "    ").replace("\n", "\r\n")
    assert parse_benchmark_profile(copied).to_dict() == parse_benchmark_profile(DEVICE_OUTPUT).to_dict()
    # The CSV file --profiling_output_csv_file writes.
    csv = ("Operator-wise Profiling Info for Regular Benchmark Runs:\n"
           "============================== Run Order ==============================\n"
           "node type, first, avg_ms, %, cdf%, mem KB, times called, name\n"
           "FULLY_CONNECTED, 0.05, 0.04, 80%, 80%, 0, 1, [y]:0\n"
           "TANH, 0.02, 0.01, 20%, 100%, 0, 1, [z]:1\n")
    p = parse_benchmark_profile(csv)
    assert [(n.type, n.avg_us, n.first_us, n.percent, n.name) for n in p.nodes] == [
        ("FULLY_CONNECTED", 40.0, 50.0, 80.0, "[y]:0"), ("TANH", 10.0, 20.0, 20.0, "[z]:1")]
    assert p.nodes_total_us == pytest.approx(50.0)


@pytest.mark.parametrize("text, message", [
    ("", "none: was --enable_op_profiling=true passed"),
    (DEVICE_OUTPUT.split("INFO: Operator-wise")[0], "only the initialization profile"),
    ("Operator-wise Profiling Info for Regular Benchmark Runs:\nsomething else\n", "'Run Order' table"),
    (DEVICE_OUTPUT.replace("    0.017\t 45.946%", "      abc\t 45.946%"), "Received 'abc'"),
])
def test_parse_errors_say_what_is_missing(text, message):
    with pytest.raises(BenchError, match=message):
        parse_benchmark_profile(text)


def test_format_profile_tables():
    p = parse_benchmark_profile(DEVICE_OUTPUT)
    p.whole_graph_us = 41.85
    text = format_profile(p)
    assert "sum of nodes 37.4 µs per run; whole graph 41.9 µs (outside the nodes: +4.4 µs" in text
    assert "| GqDelegate | 3 | 33.0 | 89.2% | 3 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and ":" in line.split("|")[-2]]
    # Nodes slowest first.
    assert [r.split("|")[1].strip() for r in rows] == ["5", "6", "7", "8", "9"]
    # The dict form (results.json) formats alike; max_nodes keeps the slowest.
    assert format_profile(dict(p.to_dict(), log="logs/x.txt")) == text
    assert "The 2 slowest of 5 nodes" in format_profile(p, max_nodes=2)
    assert OpProfile.from_dict(p.to_dict()) == p


# ---------------------------------------------------------------- host


def test_host_profile_gq_model(fc_models):
    p = profile_host(fc_models["gq"], runs=30)
    assert p.source.startswith("host") and p.runs == 30
    assert [n.type for n in p.nodes] == _op_names(fc_models["gq"]) == ["GQ_FULLY_CONNECTED"] * 2
    assert [n.index for n in p.nodes] == [0, 1]
    assert [(t.type, t.count, t.times_called) for t in p.by_type] == [("GQ_FULLY_CONNECTED", 2, 2)]
    # Two 64x64 layers do real work: each costs more than an empty invoke's noise.
    assert all(n.avg_us > 0 and n.first_us >= 0 for n in p.nodes)
    assert p.nodes_total_us == pytest.approx(sum(n.avg_us for n in p.nodes))
    assert sum(n.percent for n in p.nodes) == pytest.approx(100.0)
    assert p.whole_graph_us > 0 and p.baseline_us > 0
    assert "minus" in p.notes[0]


def test_host_profile_every_node_of_a_multi_op_model(small_model, fc_models):
    names = _op_names(small_model)
    assert {"RESHAPE", "FULLY_CONNECTED", "TANH", "ADD", "LOGISTIC"} <= set(names)
    p = profile_host(small_model, runs=20, warmup=1)
    assert [n.type for n in p.nodes] == names and [n.order for n in p.nodes] == list(range(len(names)))
    assert all(n.avg_us >= 0 and n.name.endswith(f":{n.index}") for n in p.nodes)
    assert sorted(t.type for t in p.by_type) == sorted(set(names))
    assert sum(t.count for t in p.by_type) == len(names)
    assert p.nodes_total_us > 0 and p.whole_graph_us > 0
    int8 = profile_host(fc_models["int8"], runs=10, warmup=1)
    assert [n.type for n in int8.nodes] == _op_names(fc_models["int8"])


def test_isolated_nodes_compute_what_they_compute_in_the_graph(small_model):
    # Each one-node model, fed the captured inputs, gives the tensor values
    # the full model gives: the host profile times the real work.
    data = Path(small_model).read_bytes()
    model = flatbuf.read(data)
    sub = model.subgraphs[0]
    every = [t for op in sub.operators for t in list(op.inputs) + list(op.outputs)
             if t >= 0 and not opprofile._is_constant(model, sub.tensors[t])]
    full = make_interpreter(opprofile._capture_model(data, list(dict.fromkeys(every))))
    rng = np.random.default_rng(3)
    for d in full.get_input_details():
        full.set_tensor(d["index"], rng.normal(size=d["shape"]).astype(np.float32))
    full.invoke()
    for i, op in enumerate(sub.operators):
        single = make_interpreter(opprofile._single_op_model(data, model, i))
        live = opprofile._live_inputs(model, sub, op)
        assert [d["name"] for d in single.get_input_details()] == [sub.tensors[t].name.decode() for t in live]
        for d, t in zip(single.get_input_details(), live):
            single.set_tensor(d["index"], full.get_tensor(t))
        single.invoke()
        for d, t in zip(single.get_output_details(), op.outputs):
            # Same kernel, same inputs: equal up to float32 rounding.
            np.testing.assert_allclose(single.get_tensor(d["index"]), full.get_tensor(t), rtol=1e-6, atol=1e-6)


def test_host_profile_errors(tmp_path, fc_models):
    with pytest.raises(BenchError, match="Model file not found"):
        profile_host(tmp_path / "missing.tflite")
    (tmp_path / "bad.tflite").write_bytes(b"not a model at all")
    with pytest.raises(BenchError, match="Expected a TFLite model"):
        profile_host(tmp_path / "bad.tflite")
    with pytest.raises(BenchError, match="Expected runs to be an integer >= 1. Received runs=0"):
        profile_host(fc_models["gq"], runs=0)
    with pytest.raises(BenchError, match=r"Expected delegate options among \['kernel'\]"):
        profile_host(fc_models["gq"], delegate_options={"threads": "2"})


def test_profile_command(fc_models, tmp_path, capsys):
    out = tmp_path / "p.json"
    code = cli.main(["profile", str(fc_models["gq"]), str(fc_models["float32"]), "--runs", "10",
                     "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "## fc_gq" in printed and "## fc_float32" in printed
    assert "| GQ_FULLY_CONNECTED | 2 |" in printed and "| FULLY_CONNECTED | 2 |" in printed
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["models"]] == ["fc_gq", "fc_float32"]
    assert len(data["models"][0]["op_profile"]["nodes"]) == 2
    assert cli.main(["profile", str(tmp_path / "nope.tflite")]) == 2
    assert "Model file not found" in capsys.readouterr().err


# ---------------------------------------------------------------- run --op-profile


@pytest.fixture
def phone(tmp_path, monkeypatch):
    from tests.android_bench.test_bench_run import FakePhone

    return FakePhone(tmp_path, monkeypatch)


def _results(out):
    return json.loads((Path(out) / "results.json").read_text())


FAST = ["--warmup", "1", "--warmup-secs", "0", "--quiet"]


def test_run_op_profile_on_device(phone, fc_models, tmp_path, capsys):
    phone.add()
    binary = _script(tmp_path / "benchmark_model", PROFILING_STAND_IN)
    out = tmp_path / "out"
    code = cli.main(["run", str(fc_models["gq"]), str(fc_models["int8"]), "--adb", phone.adb,
                     "--benchmark-binary", binary, "--delegate", delegate_path(), "--runs", "4", *FAST,
                     "--op-profile", "--op-profile-runs", "7", "--out", str(out),
                     "--benchmark-arg=--profiling_output_csv_file=prof.csv"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # The timed sessions (2 per model) ran without the profiler, then one
    # profiled session per model with its own run count; the CSV flag, which
    # would send the tables to a file, is left out of it.
    calls = phone.taskset_calls()
    profiled = [c for c in calls if "--enable_op_profiling=true" in c]
    assert len(calls) == 6 and calls[4:] == profiled
    assert all("--num_runs=2" in c for c in calls[:4])
    for c in profiled:
        assert "--num_runs=7" in c and not any(a.startswith("--profiling_output_csv_file") for a in c)
    assert any(a.startswith("--external_delegate_path=") for a in profiled[0])
    assert not any(a.startswith("--external_delegate_path=") for a in profiled[1])

    gq, int8 = _results(out)["models"]
    assert [n["type"] for n in gq["op_profile"]["nodes"]] == ["GqDelegate", "GqDelegate"]
    assert [n["type"] for n in int8["op_profile"]["nodes"]] == ["TfLiteXNNPackDelegate"]
    assert gq["op_profile"]["runs"] == 7 and gq["op_profile"]["nodes_total_us"] == 30.0
    assert gq["op_profile"]["whole_graph_us"] > 0  # the profiled session's own mean run
    assert gq["op_profile"]["log"] == "logs/fc_gq.profile.txt" and (out / gq["op_profile"]["log"]).exists()
    assert len(gq["sessions"]) == 2  # the profiled session is not a latency sample
    report = (out / "report.md").read_text()
    assert "## Op profiles" in report and "### fc_gq" in report and "### fc_int8" in report
    assert "| GqDelegate | 2 | 30.0 | 100.0% | 2 |" in report
    assert "GqDelegate" in printed.out  # the tables are printed too


def test_run_op_profile_failure_is_reported_per_model(phone, fc_models, tmp_path, capsys):
    # The stand-in without a profiler (hostbench ignores the flag): the run
    # still measures, the op profile says why it is missing.
    phone.add()
    binary = _script(tmp_path / "benchmark_model",
                     f"#!{sys.executable}\nimport os, sys\n"
                     "os.execv(sys.executable, [sys.executable, '-m', 'android_bench.hostbench'] + sys.argv[1:])\n")
    out = tmp_path / "out"
    code = cli.main(["run", str(fc_models["int8"]), "--adb", phone.adb, "--benchmark-binary", binary,
                     "--runs", "2", *FAST, "--op-profile", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    [m] = _results(out)["models"]
    assert "was --enable_op_profiling=true passed" in m["op_profile"]["error"]
    assert m["summary"]["runs"] == 2
    assert "FAILED: op-profile session failed" in (out / "report.md").read_text()


def test_run_op_profile_on_host(fc_models, tmp_path, capsys):
    out = tmp_path / "host"
    code = cli.main(["run", "--host", str(fc_models["gq"]), "--runs", "2", *FAST, "--op-profile",
                     "--op-profile-runs", "10", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    [m] = _results(out)["models"]
    p = m["op_profile"]
    assert p["source"].startswith("host") and p["runs"] == 10
    assert [n["type"] for n in p["nodes"]] == ["GQ_FULLY_CONNECTED"] * 2
    assert all(n["avg_us"] > 0 for n in p["nodes"])
    assert p["log"] == "logs/fc_gq.profile.json"
    report = (out / "report.md").read_text()
    assert "### fc_gq" in report and "isolated single-node models" in report


def test_profile_session_flags_and_delegate_kernel():
    from android_bench.run import Protocol

    p = Protocol(runs=4, op_profile=True, op_profile_runs=50,
                 extra_args=["--profiling_output_csv_file=x.csv", "--external_delegate_options=kernel:scalar;x:1"])
    flags = p.profile_flags("/d/m.tflite", "/d/libgq_delegate.so")
    assert flags[:2] == ["--graph=/d/m.tflite", "--external_delegate_path=/d/libgq_delegate.so"]
    assert "--num_runs=50" in flags and flags[-1] == "--enable_op_profiling=true"
    assert not any(f.startswith("--profiling_output_csv_file") for f in flags)
    assert p.delegate_kernel() == "scalar" and Protocol().delegate_kernel() is None
