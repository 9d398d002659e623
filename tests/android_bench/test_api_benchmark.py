"""``android_bench.benchmark``: the library API behind ``python -m android_bench run``.

The host target runs for real (LiteRT + our delegate in fresh processes); the
phone is the fake adb of ``tests/support/fake_adb.py`` with the benchmark_model
stand-in of ``test_bench_run.py``, so pushes, masks, parsing and cleanup are
the real code paths.
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

import android_bench
from android_bench import __main__ as cli
from android_bench import run
from android_bench.errors import BenchArgumentError, BenchError
from converters.runtime import delegate_path
from tests.android_bench.test_bench_run import STAND_IN, FakePhone, _script

FAST = dict(warmup=1, warmup_secs=0)
REPORTS = {"results.json", "report.md", "report.png"}


@pytest.fixture
def phone(tmp_path, monkeypatch):
    return FakePhone(tmp_path, monkeypatch)


@pytest.fixture
def stand_in(tmp_path):
    return _script(tmp_path / "benchmark_model", STAND_IN)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A private temporary folder (to see what a run leaves there) and an empty working folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp, work


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------- the package


def test_api_is_exported_and_the_package_stays_light():
    assert sorted(android_bench.__all__) == ["BenchArgumentError", "BenchError", "Results", "benchmark"]
    assert android_bench.benchmark is run.benchmark and android_bench.Results is run.Results
    assert issubclass(android_bench.BenchArgumentError, ValueError)
    assert issubclass(android_bench.BenchArgumentError, android_bench.BenchError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        android_bench.nope  # noqa: B018
    code = ("import sys, android_bench; heavy = [m for m in ('numpy', 'android_bench.run', 'converters') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- host


def test_host_returns_results_and_writes_nothing(fc_models, private_tmp, capsys):
    tmp, work = private_tmp
    res = android_bench.benchmark([fc_models["gq"], str(fc_models["int8"])], runs=3, **FAST)
    assert isinstance(res, android_bench.Results)
    assert res.exit_status == 0 and res.complete and res.error is None and res.out_dir is None
    assert res.data["format"] == "android_bench.results/1" and res.data["target"] == "host"
    assert res.data["tools"]["delegate"]["path"] == delegate_path()
    assert res.baseline == "fc_int8" and res.failures == {}
    assert list(res.summaries) == ["fc_gq", "fc_int8"]
    for summary in res.summaries.values():
        # 3 runs: sessions of 2 and 1 timed runs.
        assert summary["runs"] == 3 and summary["sessions"] == 2
        assert summary["p90_us"] >= summary["p50_us"] > 0 and summary["peak_memory_mb"] > 0
    gq, int8 = res.models
    assert gq["uses_delegate"] and gq["custom_ops"] == ["GQ_FULLY_CONNECTED"] and not int8["uses_delegate"]
    assert gq["vs_baseline"]["p50_us"] == pytest.approx(gq["summary"]["p50_us"] / int8["summary"]["p50_us"])
    assert int8["vs_baseline"] is None
    assert "| fc_gq |" in res.table() and "fc_int8 (baseline)" in res.table()
    json.dumps(res.data)  # JSON-ready, as results.json
    assert repr(res) == ("Results(target='host', models=['fc_gq', 'fc_int8'], complete=True, exit_status=0, "
                         "out_dir=None)")
    # Silent, and nothing written: no report, no session logs left behind.
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    assert _files(work) == set() and _files(tmp) == set()


def test_out_dir_writes_what_the_cli_writes(fc_models, tmp_path, capsys):
    lines = []
    res = android_bench.benchmark((fc_models["int8"], fc_models["float32"]), runs=2, threads=1, cpu_mask=0x1,
                                  baseline=1, out_dir=tmp_path / "api", log=lines.append, **FAST)
    assert res.exit_status == 0 and res.out_dir == tmp_path / "api"
    assert res.data == json.loads((tmp_path / "api" / "results.json").read_text())
    assert res.baseline == "fc_float32" and res.data["protocol"]["mask"] == "1"
    assert res.data["protocol"]["mask_reason"] == "cpu_mask"
    assert any(line.startswith("host: ") and "taskset 1 = CPUs 0" in line for line in lines)
    assert sum(line.startswith("[1/1] ") for line in lines) == 2
    assert capsys.readouterr().err == ""  # progress only through log

    code = cli.main(["run", "--host", str(fc_models["int8"]), str(fc_models["float32"]), "--runs", "2",
                     "--cpu-mask", "1", "--baseline", "1", "--warmup", "1", "--warmup-secs", "0", "--quiet",
                     "--out", str(tmp_path / "cli")])
    printed = capsys.readouterr()
    assert code == 0
    # The tables of Results.table() (the numbers differ from run to run), then the report paths.
    assert printed.out.splitlines()[:2] == res.table().splitlines()[:2]
    assert len(printed.out.splitlines()) == len(res.table().splitlines())
    assert printed.out.startswith("| model | GQ ops |") and "| fc_float32 (baseline) |" in printed.out
    assert printed.err.strip() == (f"wrote {tmp_path / 'cli' / 'results.json'}, {tmp_path / 'cli' / 'report.md'}, "
                                   f"{tmp_path / 'cli' / 'report.png'}")
    assert _files(tmp_path / "api") == _files(tmp_path / "cli")
    assert REPORTS <= _files(tmp_path / "api")
    from_cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert sorted(from_cli) == sorted(res.data)
    for key in ("format", "target", "baseline", "baseline_index", "complete", "error"):
        assert from_cli[key] == res.data[key]
    same = ("runs", "warmup_runs", "warmup_secs", "threads", "mask", "cpus", "sessions_per_model")
    assert {k: from_cli["protocol"][k] for k in same} == {k: res.data["protocol"][k] for k in same}
    assert from_cli["protocol"]["mask_reason"] == "--cpu-mask"
    for a, b in zip(from_cli["models"], res.models):
        assert sorted(a) == sorted(b) and a["sha256"] == b["sha256"] and a["summary"]["runs"] == b["summary"]["runs"]


def test_a_failing_model_does_not_stop_the_others(fc_models, tmp_path):
    # A binary that cannot run the GQ model (benchmark_model without our delegate).
    binary = _script(tmp_path / "bm", f"""#!/bin/sh
case "$*" in *fc_gq*) echo "ERROR: Encountered unresolved custom op: GQ_FULLY_CONNECTED."; exit 1;; esac
exec {sys.executable} -m android_bench.hostbench "$@"
""")
    res = android_bench.benchmark([fc_models["gq"], fc_models["int8"]], benchmark_binary=binary, runs=2, **FAST)
    assert res.exit_status == 1 and res.complete
    assert list(res.failures) == ["fc_gq"] and "unresolved custom op" in res.failures["fc_gq"]
    assert res.summaries["fc_gq"] is None and res.summaries["fc_int8"]["runs"] == 2


# ---------------------------------------------------------------- device (fake adb)


def test_device_target_and_serial(phone, fc_models, stand_in, tmp_path):
    root = phone.add()
    res = android_bench.benchmark([fc_models["gq"], fc_models["int8"]], target="device", adb=phone.adb,
                                  benchmark_binary=stand_in, delegate=delegate_path(), runs=4, **FAST)
    assert res.exit_status == 0 and res.complete and res.data["target"] == "device"
    assert res.data["device"]["serial"] == "ACME0001" and res.data["protocol"]["mask"] == "f0"
    assert [s["runs"] for s in res.summaries.values()] == [4, 4]
    calls = phone.taskset_calls()
    assert [c[0] for c in calls] == ["f0"] * 4
    assert os.listdir(root / "data/local/tmp") == []  # the run folder was removed

    # Two phones: target names the serial.
    second = phone.add("ACME0002")
    res = android_bench.benchmark([fc_models["int8"]], target="ACME0002", adb=phone.adb,
                                  benchmark_binary=stand_in, runs=2, cpu_mask="0x3", **FAST)
    assert res.exit_status == 0 and res.data["device"]["serial"] == "ACME0002"
    assert [c[0] for c in phone.taskset_calls("ACME0002")] == ["3"]
    assert len(phone.taskset_calls()) == 4  # the first phone ran nothing more
    assert os.listdir(second / "data/local/tmp") == []


def test_device_lost_returns_what_was_measured(phone, fc_models, stand_in, tmp_path):
    # Shells before the first session: facts, mkdir, chmod, ls; then per
    # session the run and an ls for written files. Lose it in round 2.
    phone.add(lose_after_shells=4 + 2 * 2)
    with pytest.warns(RuntimeWarning, match="android_bench: the device is gone: remove /data/local/tmp/gq_bench_"):
        res = android_bench.benchmark([fc_models["gq"], fc_models["int8"]], target="device", adb=phone.adb,
                                      benchmark_binary=stand_in, delegate=delegate_path(), runs=6,
                                      out_dir=tmp_path / "out", **FAST)
    assert res.exit_status == 3 and not res.complete
    assert "ACME0001 is gone" in res.error and "kept" in res.error
    assert res.data["cleanup_warning"].startswith("the device is gone")
    assert [s["runs"] for s in res.summaries.values()] == [2, 2]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["error"] == res.error


@pytest.mark.parametrize("setup, kwargs, error, message", [
    ("none", {}, BenchError, "No Android device found (`adb devices` lists none). Connect the phone"),
    ("none", {}, BenchError, "To measure on this machine instead, use target='host'."),
    ("two", {}, BenchError, "2 devices are connected; choose one with target=SERIAL:"),
    ("one", {"target": "NOPE"}, BenchError, "Device 'NOPE' (target) is not connected. Connected: ACME0001 (device)."),
    ("one", {"adb": "/nonexistent/adb"}, BenchError, "then put it on PATH or pass adb=PATH."),
    ("one", {"benchmark_binary": None}, ValueError,
     "A device run needs TFLite's benchmark_model built for the device: pass benchmark_binary=PATH."),
    ("one", {"benchmark_binary": None}, ValueError, "(Or use target='host'.)"),
    ("one", {"delegate": None}, ValueError,
     "Model(s) fc_gq use GQ custom ops and need our delegate built for the device: pass delegate=PATH"),
    ("one", {"cpu_mask": "1f0"}, ValueError,
     "cpu_mask 1f0 selects CPUs 4-8, but the target has 8 CPUs (0-7)."),
])
def test_device_errors_name_the_arguments(phone, fc_models, stand_in, tmp_path, setup, kwargs, error, message):
    if setup in ("one", "two"):
        phone.add()
    if setup == "two":
        phone.add("ACME0002")
    args = dict(target="device", adb=phone.adb, benchmark_binary=stand_in, delegate=delegate_path(), runs=2,
                out_dir=tmp_path / "out", **FAST)
    args.update(kwargs)
    with pytest.raises(error) as info:
        android_bench.benchmark([fc_models["gq"], fc_models["int8"]], **args)
    assert message in str(info.value)
    assert isinstance(info.value, BenchError)
    assert "--" not in str(info.value).replace("--config", "").replace("--ndk", "").replace("--abi", "")
    assert not (tmp_path / "out" / "results.json").exists()
    for d in phone.devices:
        assert os.listdir(Path(d["root"]) / "data/local/tmp") == []


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("models, kwargs, message", [
    ("MODEL", {}, "Expected models as a list of .tflite paths (str or os.PathLike); for one model pass ["),
    ([], {}, "Expected models as a list of at least one .tflite path. Received [] (list)."),
    (["MODEL", 3], {}, "Expected models as a list of .tflite paths (str or os.PathLike). Received ["),
    (["/nonexistent/m.tflite"], {}, "Model file not found: '/nonexistent/m.tflite'."),
    (["MODEL"], {"target": 5}, "Expected target 'host', 'device' (the one connected device) or a device serial. "
                               "Received 5 (int)."),
    (["MODEL"], {"target": " "}, "Expected target 'host', 'device'"),
    (["MODEL"], {"runs": 0}, "Expected runs >= 1. Received 0."),
    (["MODEL"], {"runs": "40"}, "Expected runs as an integer. Received '40' (str)."),
    (["MODEL"], {"threads": True}, "Expected threads as an integer. Received True (bool)."),
    (["MODEL"], {"threads": 0}, "Expected threads >= 1. Received 0."),
    (["MODEL"], {"warmup": -1}, "Expected warmup >= 0. Received -1."),
    (["MODEL"], {"warmup_secs": -0.5}, "Expected warmup_secs >= 0. Received -0.5."),
    (["MODEL"], {"timeout": 0}, "Expected timeout > 0. Received 0.0."),
    (["MODEL"], {"timeout": "10"}, "Expected timeout as a number of seconds. Received '10' (str)."),
    (["MODEL"], {"op_profile_runs": 0}, "Expected op_profile_runs >= 1. Received 0."),
    (["MODEL"], {"op_profile": "yes"}, "Expected op_profile as True or False. Received 'yes' (str)."),
    (["MODEL"], {"cpu_mask": "zz"}, "Expected cpu_mask as a hex taskset mask such as f0 or 0x0f. Received 'zz'."),
    (["MODEL"], {"cpu_mask": 0}, "Expected cpu_mask to select at least one CPU. Received '0'."),
    (["MODEL"], {"cpu_mask": 1.5}, "Expected cpu_mask as an int (e.g. 0xf0), hex text (e.g. 'f0') or None. "
                                   "Received 1.5 (float)."),
    (["MODEL"], {"baseline": "nope"}, "baseline 'nope' is not one of the models (fc_int8) or their indices."),
    (["MODEL"], {"baseline": 3}, "baseline '3' is not one of the models (fc_int8) or their indices."),
    (["MODEL"], {"baseline": 0.0}, "Expected baseline as a model's index, file name or stem, or None."),
    (["MODEL"], {"benchmark_args": "--use_xnnpack=false"},
     "Expected benchmark_args as a list of benchmark_model flags such as ['--use_xnnpack=false']. "
     "Received '--use_xnnpack=false' (str)."),
    (["MODEL"], {"benchmark_binary": "/nonexistent/bm"}, "benchmark_binary '/nonexistent/bm' does not exist."),
    (["MODEL"], {"delegate": "/nonexistent/d.so"}, "delegate '/nonexistent/d.so' does not exist."),
    (["MODEL"], {"delegate": 3}, "Expected delegate as a path (str or os.PathLike) or None. Received 3 (int)."),
    (["MODEL"], {"log": "print"}, "Expected log as a function of one str (e.g. print) or None. Received 'print'"),
])
def test_bad_arguments_are_value_errors(fc_models, private_tmp, models, kwargs, message):
    tmp, work = private_tmp
    if models == "MODEL":
        models = str(fc_models["int8"])
    elif isinstance(models, list):
        models = [str(fc_models["int8"]) if m == "MODEL" else m for m in models]
    with pytest.raises(ValueError) as info:
        android_bench.benchmark(models, **kwargs)
    assert message in str(info.value), str(info.value)
    assert isinstance(info.value, BenchArgumentError)
    assert _files(work) == set() and _files(tmp) == set()  # nothing measured, nothing written


def test_an_out_dir_with_results_is_refused(fc_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(ValueError, match=r"out_dir '.*out' already holds a results.json; choose another out_dir "
                                         r"\(nothing was overwritten\)"):
        android_bench.benchmark([fc_models["int8"]], out_dir=out)
    assert (out / "results.json").read_text() == "{}"


def test_a_model_the_checks_refuse_is_a_value_error(fc_models, tmp_path):
    bad = tmp_path / "not_a_model.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ValueError) as info:
        android_bench.benchmark([fc_models["int8"], bad])
    assert isinstance(info.value, BenchArgumentError) and str(info.value)


def test_the_cli_words_the_same_errors_as_flags(fc_models, capsys):
    assert cli.main(["run", "--host", str(fc_models["int8"]), "--runs", "0"]) == 2
    assert capsys.readouterr().err == "error: Expected --runs >= 1. Received 0.\n"
    assert cli.main(["run", "--host", str(fc_models["int8"]), "--baseline", "nope"]) == 2
    assert capsys.readouterr().err == "error: --baseline 'nope' is not one of the models (fc_int8) or their indices.\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI prints, never warns
        assert cli.main(["run", str(fc_models["int8"])]) == 2
    assert "pass --benchmark-binary PATH" in capsys.readouterr().err
