"""``python -m android_bench run``: the device flow against a fake adb, and --host.

The fake adb (``tests/support/fake_adb.py``) keeps a local folder as the phone; its
``benchmark_model`` stand-in runs the model with LiteRT + our delegate and
prints benchmark_model's format (``android_bench.hostbench``). So the pushes,
taskset masks, parsing, reports and cleanup below are the real code paths; only
the phone is simulated.
"""

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from android_bench import __main__ as cli
from android_bench import adb as adb_mod
from android_bench import benchmark_output, targets
from android_bench.errors import BenchError
from converters.runtime import delegate_path

FAKE_ADB = Path(__file__).resolve().parents[1] / "support" / "fake_adb.py"

# A 4 little + 3 mid + 1 prime phone: the big cores are 4-7 (mask f0).
CLUSTERS_KHZ = [1800000] * 4 + [2400000] * 3 + [3000000]
PROPS = {
    "ro.product.manufacturer": "Acme",
    "ro.product.model": "Phone 9",
    "ro.product.device": "acme9",
    "ro.product.cpu.abi": "x86_64",  # the stand-in binary and the host delegate run here
    "ro.product.cpu.abilist": "x86_64",
    "ro.build.version.release": "15",
    "ro.build.version.sdk": "35",
    "ro.build.fingerprint": "acme/acme9/acme9:15/AP3A/1:user/release-keys",
    "ro.soc.model": "SM0000",
    "ro.hardware": "acme",
}

# The stand-in for TFLite's benchmark_model on the phone. Like the stock tool it
# writes a profile file when asked to (so the pull of written files is tested),
# then runs the model with LiteRT + the delegate through hostbench and prints
# benchmark_model's format; the run folder it was started in is its cwd.
STAND_IN = f"""#!{sys.executable}
import os, sys
args = []
for a in sys.argv[1:]:
    if a.startswith("--profiling_output_csv_file="):
        with open(a.split("=", 1)[1], "w") as f:
            f.write("node type,avg ms\\nGQ_FULLY_CONNECTED,0.01\\n")
    else:
        args.append(a)
os.execv(sys.executable, [sys.executable, "-m", "android_bench.hostbench"] + args)
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


class FakePhone:
    """Writes the fake adb's state: devices with their file systems."""

    def __init__(self, tmp: Path, monkeypatch):
        self.tmp = tmp
        self.state_path = tmp / "adb_state.json"
        self.log_path = tmp / "adb_log.jsonl"
        self.log_path.touch()
        self.devices = []
        self.adb = _script(tmp / "adb", f"#!{sys.executable}\n" + FAKE_ADB.read_text())
        monkeypatch.setenv("FAKE_ADB_STATE", str(self.state_path))
        self.save()

    def add(self, serial="ACME0001", state="device", props=None, clusters=CLUSTERS_KHZ, lose_after_shells=None):
        root = self.tmp / f"dev_{serial}"
        (root / "data/local/tmp").mkdir(parents=True)
        (root / "bin").mkdir()
        (root / "props").write_text("".join(f"{k}={v}\n" for k, v in (props or PROPS).items()))
        for i, khz in enumerate(clusters):
            cpu = root / f"sys/devices/system/cpu/cpu{i}"
            (cpu / "cpufreq").mkdir(parents=True)
            (cpu / "cpufreq/cpuinfo_max_freq").write_text(f"{khz}\n")
            (cpu / "cpufreq/scaling_governor").write_text("schedutil\n")
            (cpu / "online").write_text("1\n")
        _script(root / "bin/getprop",
                '#!/bin/sh\nsed -n "s/^$1=//p" "$FAKE_DEVICE_ROOT/props"\n')
        # taskset records the mask and the command, then runs it unpinned
        # (this machine has 2 CPUs, the phone 8).
        _script(root / "bin/taskset",
                '#!/bin/sh\necho "$*" >> "$FAKE_DEVICE_ROOT/taskset.log"\nshift\nexec "$@"\n')
        self.devices.append({"serial": serial, "state": state, "root": str(root),
                             "details": "product:acme9 model:Phone_9 device:acme9 transport_id:1",
                             "lose_after_shells": lose_after_shells})
        self.save()
        return root

    def save(self):
        self.state_path.write_text(json.dumps({"devices": self.devices, "log": str(self.log_path)}))

    def log(self):
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def taskset_calls(self, serial="ACME0001"):
        path = self.tmp / f"dev_{serial}" / "taskset.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def phone(tmp_path, monkeypatch):
    return FakePhone(tmp_path, monkeypatch)


@pytest.fixture
def stand_in(tmp_path):
    return _script(tmp_path / "benchmark_model", STAND_IN)


FAST = ["--warmup", "1", "--warmup-secs", "0", "--quiet"]


def _run(args):
    return cli.main(["run", *map(str, args)])


def _results(out):
    return json.loads((Path(out) / "results.json").read_text())


# ---------------------------------------------------------------- device flow


def test_device_flow(phone, fc_models, stand_in, tmp_path, capsys):
    root = phone.add()
    out = tmp_path / "out"
    code = _run([fc_models["gq"], fc_models["int8"], "--adb", phone.adb, "--benchmark-binary", stand_in,
                 "--delegate", delegate_path(), "--runs", 4, *FAST, "--out", out,
                 "--benchmark-arg=--profiling_output_csv_file=profile.csv"])
    printed = capsys.readouterr()
    assert code == 0, printed.err

    # Pushed: binary, delegate and both models into one run folder, binary made executable.
    pushes = [e["argv"] for e in phone.log() if e.get("argv", [None])[0] == "push"]
    remote = [p[2] for p in pushes]
    run_dir = os.path.dirname(remote[0])
    assert run_dir.startswith("/data/local/tmp/gq_bench_")
    assert remote == [f"{run_dir}/benchmark_model", f"{run_dir}/libgq_delegate.so",
                      f"{run_dir}/m0_fc_gq.tflite", f"{run_dir}/m1_fc_int8.tflite"]
    assert pushes[1][1] == delegate_path()
    shells = [e["shell"] for e in phone.log() if "shell" in e]
    assert any(f"chmod 755 {root}{run_dir}/benchmark_model" in s for s in shells)

    # Every session under taskset f0 (the big cores), interleaved A B A B,
    # the delegate only for the GQ model.
    calls = phone.taskset_calls()
    assert [c[0] for c in calls] == ["f0"] * 4
    graphs = [next(a for a in c if a.startswith("--graph=")) for c in calls]
    assert [g.rsplit("/", 1)[1] for g in graphs] == ["m0_fc_gq.tflite", "m1_fc_int8.tflite"] * 2
    for c in calls:
        has_delegate = any(a.startswith("--external_delegate_path=") for a in c)
        assert has_delegate == ("m0_fc_gq" in " ".join(c))
        assert "--num_runs=2" in c and "--min_secs=0" in c and "--report_peak_memory_footprint=true" in c

    # The run folder is gone; the profile each session wrote was pulled.
    assert os.listdir(root / "data/local/tmp") == []
    pulled = sorted(p.name for p in (out / "files").iterdir())
    assert pulled == ["fc_gq.s000.profile.csv", "fc_gq.s001.profile.csv",
                      "fc_int8.s000.profile.csv", "fc_int8.s001.profile.csv"]

    res = _results(out)
    assert res["complete"] and res["error"] is None and res["target"] == "device"
    dev = res["device"]
    assert (dev["model"], dev["abi"], dev["android"], dev["cores"]) == ("Phone 9", "x86_64", "15", 8)
    assert dev["governors"] == ["schedutil"] and dev["big_core_mask"] == "f0"
    assert res["protocol"]["mask"] == "f0" and res["protocol"]["cpus"] == "4-7"
    gq, int8 = res["models"]
    assert gq["uses_delegate"] and gq["custom_ops"] == ["GQ_FULLY_CONNECTED"] and not int8["uses_delegate"]
    assert res["baseline"] == "fc_int8"
    for m in (gq, int8):
        assert len(m["sessions"]) == 2 and m["summary"]["runs"] == 4
        # The parsed numbers are the ones in the saved logs, sample for sample.
        for s in m["sessions"]:
            parsed = benchmark_output.parse((out / s["log"]).read_text())
            assert s["samples_us"] == [int(v) for v in parsed.inference.samples()]
            assert s["init_us"] == parsed.init_us and s["peak_memory_mb"] == parsed.peak_memory_mb
        samples = [v for s in m["sessions"] for v in s["samples_us"]]
        assert m["summary"]["p50_us"] == pytest.approx(np.percentile(samples, 50))
        assert m["summary"]["min_us"] == min(samples) and m["summary"]["max_us"] == max(samples)
        assert m["summary"]["peak_memory_mb"] > 0 and m["summary"]["init_us"] > 0
        assert len(m["sha256"]) == 64 and m["size_bytes"] == Path(m["path"]).stat().st_size
    assert gq["vs_baseline"]["p50_us"] == pytest.approx(gq["summary"]["p50_us"] / int8["summary"]["p50_us"])
    assert gq["vs_baseline"]["size_bytes"] == pytest.approx(gq["size_bytes"] / int8["size_bytes"])
    assert int8["vs_baseline"] is None
    assert dev["adb"].startswith("Android Debug Bridge")
    assert (out / "report.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Phone 9" in report and "| fc_gq |" in report and "fc_int8" in report
    assert "| fc_gq |" in printed.out  # the table is printed too


@pytest.mark.parametrize("setup, args, message", [
    ("none", [], "No Android device found"),
    ("two", [], "2 devices are connected; choose one with --serial"),
    ("two", ["--serial", "NOPE"], "'NOPE' (--serial) is not connected"),
    ("unauthorized", [], "accept the 'Allow USB debugging?' prompt"),
    ("offline", [], "is 'offline'"),
    ("one", ["--adb", "/nonexistent/adb"], "adb was not found at '/nonexistent/adb'"),
    ("one", ["--benchmark-binary", "/nonexistent/benchmark_model"], "does not exist"),
    ("one", ["--no-binary"], "pass --benchmark-binary PATH"),
    ("one", ["--no-delegate"], "need our delegate built for the device: pass --delegate PATH"),
    ("arm64", [], "built for x86-64, but the device runs arm64-v8a"),
])
def test_device_errors(phone, fc_models, stand_in, tmp_path, capsys, setup, args, message):
    if setup in ("one", "two", "arm64"):
        phone.add(props=dict(PROPS, **{"ro.product.cpu.abi": "arm64-v8a", "ro.product.cpu.abilist":
                                       "arm64-v8a,armeabi-v7a"}) if setup == "arm64" else None)
    if setup == "two":
        phone.add("ACME0002")
    if setup in ("unauthorized", "offline"):
        phone.add(state=setup)
    argv = [fc_models["gq"], fc_models["int8"], "--adb", phone.adb, "--benchmark-binary", stand_in,
            "--delegate", delegate_path(), *FAST, "--runs", 2, "--out", tmp_path / "out"]
    for flag, drop in (("--no-binary", "--benchmark-binary"), ("--no-delegate", "--delegate")):
        if flag in args:
            i = argv.index(drop)
            del argv[i:i + 2]
            args = [a for a in args if a != flag]
    for i in range(0, len(args), 2):
        if args[i] in argv:
            argv[argv.index(args[i]) + 1] = args[i + 1]
        else:
            argv += args[i:i + 2]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    # Nothing was measured, so nothing was written or left on a phone.
    assert not (tmp_path / "out" / "results.json").exists()
    for d in phone.devices:
        assert os.listdir(Path(d["root"]) / "data/local/tmp") == []


def test_bad_model_is_refused_before_any_push(phone, fc_models, stand_in, tmp_path, capsys):
    """A model the model checks refuse (here: graph input 0 names a constant,
    which would crash the benchmark binary on the phone) stops the run before
    adb is called at all, with check_model's message."""
    from converters import flatbuf
    from converters.modelcheck import check_model

    model = flatbuf.read(fc_models["gq"].read_bytes())
    sub = model.subgraphs[0]
    constant = next(i for i, t in enumerate(sub.tensors) if model.buffers[t.buffer].data is not None)
    sub.inputs = np.array([constant], np.int32)
    bad = tmp_path / "fc_gq_bad.tflite"
    bad.write_bytes(flatbuf.write(model))
    with pytest.raises(ValueError, match="graph input 0") as info:
        check_model(bad)

    root = phone.add()
    code = _run([fc_models["int8"], bad, "--adb", phone.adb, "--benchmark-binary", stand_in,
                 "--delegate", delegate_path(), "--runs", 2, *FAST, "--out", tmp_path / "out"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {info.value}" in err and "Traceback" not in err
    assert phone.log() == []  # no adb command: nothing pushed, no device touched
    assert os.listdir(root / "data/local/tmp") == []
    assert not (tmp_path / "out" / "results.json").exists()


def test_device_lost_mid_run(phone, fc_models, stand_in, tmp_path, capsys):
    # Shells before the first session: facts, mkdir, chmod, ls; then per
    # session the run and an ls for written files. Lose it in round 2.
    phone.add(lose_after_shells=4 + 2 * 2)
    out = tmp_path / "out"
    code = _run([fc_models["gq"], fc_models["int8"], "--adb", phone.adb, "--benchmark-binary", stand_in,
                 "--delegate", delegate_path(), "--runs", 6, *FAST, "--out", out])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "ACME0001 is gone" in err and "Traceback" not in err
    assert "remove /data/local/tmp/gq_bench_" in err  # cannot clean a phone that is gone: says so
    res = _results(out)
    assert not res["complete"] and "kept" in res["error"]
    for m in res["models"]:
        assert len(m["sessions"]) == 1 and m["summary"]["runs"] == 2
    assert (out / "report.md").exists() and (out / "report.png").exists()
    assert "INCOMPLETE" in (out / "report.md").read_text()


def test_ctrl_c_cleans_up_and_keeps_results(phone, fc_models, stand_in, tmp_path, monkeypatch, capsys):
    root = phone.add()
    real_session = targets.DeviceTarget.session
    calls = []

    def session(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_session(self, *a, **k)

    monkeypatch.setattr(targets.DeviceTarget, "session", session)
    out = tmp_path / "out"
    code = _run([fc_models["gq"], fc_models["int8"], "--adb", phone.adb, "--benchmark-binary", stand_in,
                 "--delegate", delegate_path(), "--runs", 6, *FAST, "--out", out])
    assert code == 130
    assert os.listdir(root / "data/local/tmp") == []
    res = _results(out)
    assert "Interrupted" in res["error"]
    assert [len(m["sessions"]) for m in res["models"]] == [1, 1]


# ---------------------------------------------------------------- host


def test_host_run_writes_all_three_reports(fc_models, tmp_path, capsys):
    out = tmp_path / "host"
    code = _run(["--host", fc_models["gq"], fc_models["int8"], "--runs", 4, *FAST, "--out", out])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    res = _results(out)
    assert res["complete"] and res["target"] == "host"
    assert res["tools"]["delegate"]["path"] == delegate_path()
    for m in res["models"]:
        assert m["summary"]["runs"] == 4 and m["summary"]["p90_us"] >= m["summary"]["p50_us"] > 0
    assert res["models"][0]["vs_baseline"]["p50_us"] > 0
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| fc_gq |" in (out / "report.md").read_text()


def test_host_failing_model_is_reported_and_others_measured(fc_models, tmp_path, capsys):
    # A binary that cannot run the GQ model (as benchmark_model without our
    # delegate): that model fails with the tool's words, the other is measured.
    binary = _script(tmp_path / "bm", f"""#!/bin/sh
case "$*" in *fc_gq*) echo "ERROR: Encountered unresolved custom op: GQ_FULLY_CONNECTED."; exit 1;; esac
exec {sys.executable} -m android_bench.hostbench "$@"
""")
    out = tmp_path / "out"
    code = _run(["--host", fc_models["gq"], fc_models["int8"], "--benchmark-binary", binary, "--runs", 2, *FAST,
                 "--out", out])
    err = capsys.readouterr().err
    assert code == 1
    assert "fc_gq" in err and "--delegate" in err
    gq, int8 = _results(out)["models"]
    assert gq["error"] and gq["summary"] is None and int8["summary"]["runs"] == 2
    assert "Failures:" in (out / "report.md").read_text()


def test_refuses_to_overwrite_results(fc_models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert _run(["--host", fc_models["int8"], "--out", out]) == 2
    assert "already holds a results.json" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


# ---------------------------------------------------------------- pieces


def test_parse_devices_states():
    text = ("List of devices attached\n"
            "R58M123\tdevice usb:1-1 product:a model:B device:c transport_id:2\n"
            "emulator-5554  offline\n"
            "0123ABC\tno permissions (missing udev rules? user is in the plugdev group); see [http://x]\n"
            "ZX1\tunauthorized usb:1-2 transport_id:3\n\n")
    devs = adb_mod.parse_devices(text)
    assert [(d.serial, d.state) for d in devs] == [
        ("R58M123", "device"), ("emulator-5554", "offline"), ("0123ABC", "no permissions"), ("ZX1", "unauthorized")]
    assert devs[0].details.startswith("usb:1-1")


@pytest.mark.parametrize("freqs, mask", [
    ([1800000] * 4 + [2400000] * 3 + [3000000], 0xF0),
    ([1700000] * 6 + [2200000] * 2, 0xC0),
    ([2000000] * 4, 0xF),
    ([None] * 2, 0x3),
])
def test_big_core_mask(freqs, mask):
    cpus = [targets.Cpu(i, f, None, True) for i, f in enumerate(freqs)]
    assert targets.big_core_mask(cpus)[0] == mask


def test_cpu_masks():
    assert targets.cpu_list(0xF0) == "4-7" and targets.cpu_list(0b1011) == "0-1,3"
    assert targets.parse_mask("0xF0", 8) == 0xF0
    for bad, msg in (("zz", "hex taskset mask"), ("0", "at least one CPU"), ("1f0", "has 8 CPUs")):
        with pytest.raises(BenchError, match=msg):
            targets.parse_mask(bad, 8)
