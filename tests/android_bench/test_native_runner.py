"""The native streaming runner (android_bench/native/gq_stream.c) against the TFLite C API.

On the host it runs with Debian's TFLite C library (``android_bench.tflite_c``,
fetched once into the cache) and our delegate, and must give the transcripts
of the Python recognizer (LiteRT + the same delegate) for the same features.
On aarch64 (cross-built runner and delegate, Debian's arm64 library, under
qemu-aarch64-static) the transcripts must equal the host's for the ``neon``
and ``neondot`` kernels (int8 activations, as the host's ``auto``) and for
``reference`` (exact float32, as the host's ``reference``). Timings under
qemu mean nothing: only results are checked.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gq_tf
from android_bench import recognizer, tflite_c
from converters import cbuild
from gq_speech import deploy, features, models
from tests.support.asrmodels import emitting_net
from tests.support.toolchain import AARCH64_PACKAGES, ensure_debian_packages

CROSS = "aarch64-linux-gnu-gcc"
LENGTHS = (40, 53, 61, 24, 8)  # with and without a partial last chunk (8 frames), and one chunk exactly


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(export directory, [feature files]) of an untrained rnnt_tiny that emits tokens, GQ mixed bits."""
    root = tmp_path_factory.mktemp("native")
    rng = np.random.default_rng(0)
    utts = [rng.normal(size=(n, 16)).astype(np.float32) for n in LENGTHS]
    cfg = models.load_config("rnnt_tiny").with_feature_stats(features.FeatureStats.compute(utts))
    deploy.export_streaming(gq_tf.quantize_model(emitting_net(cfg), {"encoder_lstm_.*": 4, "joint_out": 8, ".*": 3}),
                            cfg, root / "export")
    # TFLite's float and int8 graphs: the one-layer prediction LSTM gives its output and its h state one tensor.
    deploy.export_streaming(emitting_net(cfg), cfg, root / "float", kind="float")
    deploy.export_streaming(emitting_net(cfg), cfg, root / "int8", kind="int8")
    paths = []
    for i, u in enumerate(utts):
        paths.append(root / f"u{i}.npy")
        np.save(paths[-1], u)
    return root / "export", paths


@pytest.fixture(scope="module")
def host_sysroot():
    return tflite_c.fetch()


def _python_tokens(directory, paths, kernel):
    rec = deploy.StreamingRecognizer(directory, kernel=kernel)
    out = []
    for p in paths:
        rec.reset()
        rec.push(np.load(p))
        out.append(rec.finish())
    return out


@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_the_host_runner_transcribes_as_the_python_recognizer(export, host_sysroot, kernel):
    directory, paths = export
    out = recognizer.run(directory, paths, sysroot=host_sysroot, kernel=kernel)
    expected = _python_tokens(directory, paths, kernel)
    assert [u["tokens"] for u in out["utterances"]] == expected
    assert any(expected), "the test model must emit tokens"
    vocab = json.loads((directory / "streaming.json").read_text())["vocabulary"]
    for u, tokens, n in zip(out["utterances"], expected, LENGTHS):
        assert u["text"] == "".join(vocab[t] for t in tokens)
        assert u["frames"] == n and u["chunks"] == -(-n // 8) == len(u["chunk_ms"]) == u["calls"]["encoder"]
        assert u["upl_ms"] >= 0 and u["busy_ms"] > 0
        # Every emitted token runs the prediction graph once, every joint call decides one symbol.
        assert u["calls"]["prediction"] == len(tokens)
    s = out["summary"]
    assert s["utterances"] == len(paths) and s["chunks"] == sum(-(-n // 8) for n in LENGTHS)
    assert 0 < s["chunk_p50_ms"] <= s["chunk_p90_ms"] and s["peak_rss_kb"] > 0
    assert out["runtime"].startswith("2.14") and out["kernel"] == kernel


def test_the_host_runner_runs_tflites_float_graphs_and_names_what_an_old_runtime_lacks(export, host_sysroot):
    directory, paths = export
    float_dir = directory.parent / "float"
    outputs = json.loads((float_dir / "streaming.json").read_text())["graphs"]["prediction"]["outputs"]
    assert len({row["tensor"] for row in outputs}) < len(outputs)  # a shared output tensor
    out = recognizer.run(float_dir, paths, sysroot=host_sysroot)
    assert [u["tokens"] for u in out["utterances"]] == _python_tokens(float_dir, paths, "auto")
    # TF 2.21 writes int8 FULLY_CONNECTED as version 12, which Debian's TFLite 2.14 does not have.
    with pytest.raises(recognizer.RunnerError, match="FULLY_CONNECTED' version '12'.*Registration failed"):
        recognizer.run(directory.parent / "int8", paths, sysroot=host_sysroot)


def test_bad_input_is_a_clear_error_not_a_crash(export, host_sysroot, tmp_path):
    directory, paths = export
    bad = tmp_path / "bad"
    shutil.copytree(directory, bad)
    manifest = (bad / "streaming.json").read_text()
    cases = {
        "not json": ('{"format": ', "to be JSON"),
        "no graphs": (json.dumps({**json.loads(manifest), "graphs": []}), "'graphs'"),
        "a wrong tensor": (manifest.replace("serving_default_pred:0", "nope:0"), "'nope:0'"),
        "deep nesting": ("[" * 100 + "]" * 100, "nesting too deep"),
    }
    for name, (text, match) in cases.items():
        (bad / "streaming.json").write_text(text)
        with pytest.raises(recognizer.RunnerError, match=match):
            recognizer.run(bad, paths[:1], sysroot=host_sysroot)
    np.save(tmp_path / "f64.npy", np.zeros((8, 16)))
    np.save(tmp_path / "wide.npy", np.zeros((8, 17), np.float32))
    (tmp_path / "cut.npy").write_bytes(paths[0].read_bytes()[:-7])
    (tmp_path / "text.npy").write_text("not numpy")
    for name, match in (("f64", "float32"), ("wide", r"\[frames, 16\]"), ("cut", "bytes of data"),
                        ("text", "NumPy .npy")):
        with pytest.raises(recognizer.RunnerError, match=match):
            recognizer.run(directory, [tmp_path / f"{name}.npy"], sysroot=host_sysroot)
    # A library that is not there: the runner says which, with exit status 2.
    cmd = host_sysroot.command(recognizer.host_runner(), "--tflite", tmp_path / "missing.so", "--delegate", "x.so",
                               directory, paths[0])
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.startswith("error\tcannot load the TFLite C library") and not r.stdout


def test_the_parser_refuses_what_is_not_the_runners_output():
    with pytest.raises(recognizer.RunnerError, match="start with"):
        recognizer.parse("hello\n")
    with pytest.raises(recognizer.RunnerError, match="summary line"):
        recognizer.parse("gq_stream\t1\nruntime\t2.14.1\tkernel\tauto\tthreads\t1\n")
    with pytest.raises(recognizer.RunnerError, match="runtime, utterance"):
        recognizer.parse("gq_stream\t1\nsomething\t1\n")


def test_an_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GQ_TF_CACHE", str(tmp_path))
    monkeypatch.setattr(tflite_c, "MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(tflite_c.FetchError, match=r"against http://127.0.0.1:9/debian sid.*retry"):
        tflite_c.fetch("arm64", log=lambda m: None)
    assert not list((tmp_path / "tflite-c").glob("arm64*")), "nothing half-made is left in the cache"


# ----------------------------------------------------------------- aarch64 under qemu


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory):
    """(runner, delegate) cross-built for aarch64 with the build table's flags."""
    ensure_debian_packages(AARCH64_PACKAGES)
    out = tmp_path_factory.mktemp("arm")
    root = Path(__file__).resolve().parents[2]
    objects = []
    for src in cbuild.DELEGATE_SOURCES:
        obj = out / (src.replace("/", "_")[:-2] + ".o")
        subprocess.run([CROSS, *cbuild.C_FLAGS, *cbuild.source_flags(src, "aarch64"), "-fvisibility=hidden",
                        "-c", str(root / src), "-o", str(obj)], check=True, capture_output=True, text=True)
        objects.append(str(obj))
    delegate = out / "libgq_delegate.so"
    subprocess.run([CROSS, "-shared", *objects, "-lm", "-lpthread", "-o", str(delegate)], check=True)
    return recognizer.build_runner(out / "gq_stream", cc=CROSS), delegate


@pytest.mark.slow
@pytest.mark.parametrize("kernel, host_kernel", [("neon", "auto"), ("neondot", "auto"), ("reference", "reference")])
def test_aarch64_runner_and_delegate_under_qemu_transcribe_as_the_host(export, arm_build, kernel, host_kernel):
    directory, paths = export
    runner, delegate = arm_build
    arm = tflite_c.fetch("arm64")
    out = recognizer.run(directory, paths, sysroot=arm, runner=runner, delegate=delegate, kernel=kernel, warmup=0,
                         timeout=900)
    assert out["kernel"] == kernel and out["runtime"].startswith("2.14")
    assert [u["tokens"] for u in out["utterances"]] == _python_tokens(directory, paths, host_kernel)


def test_the_sysroot_runs_host_programs_with_its_own_loader(host_sysroot):
    cmd = host_sysroot.command("/bin/true")
    assert cmd[:3] == [str(host_sysroot.loader), "--library-path", str(host_sysroot.lib_dir)]
    assert subprocess.run(cmd, check=False).returncode == 0
    assert os.access(host_sysroot.library, os.R_OK)


# ----------------------------------------------------------------- the phone flow (fake adb)


@pytest.fixture
def phone(tmp_path, monkeypatch, host_sysroot):
    """A fake phone (x86_64) whose taskset runs programs with the sysroot's loader and libraries:
    the real runner, delegate and TFLite C library run 'on the phone'."""
    from tests.android_bench.test_bench_run import FakePhone, _script

    p = FakePhone(tmp_path, monkeypatch)
    root = p.add()
    _script(root / "bin/taskset",
            '#!/bin/sh\necho "$*" >> "$FAKE_DEVICE_ROOT/taskset.log"\nshift\n'
            f'exec {host_sysroot.loader} --library-path {host_sysroot.lib_dir} "$@"\n')
    return p, root


def test_run_recognizer_on_a_phone_pushes_runs_interleaved_and_reports(export, phone, host_sysroot, tmp_path,
                                                                        capsys):
    from android_bench import __main__ as cli
    from converters.runtime import delegate_path

    directory, paths = export
    fake, root = phone
    out = tmp_path / "out"
    code = cli.main(["run", "--adb", fake.adb, "--recognizer", str(directory), "--recognizer",
                     str(directory.parent / "float"), *(a for p in paths for a in ("--features", str(p))),
                     "--runner", str(recognizer.host_runner()), "--delegate", delegate_path(), "--tflite-c",
                     str(host_sysroot.library), "--rounds", "2", "--baseline", "float", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    res = json.loads((out / "results.json").read_text())
    assert list(res["variants"]) == ["export", "float"] and res["baseline"] == "float"
    for name, d in (("export", directory), ("float", directory.parent / "float")):
        v = res["variants"][name]
        assert v["rounds"] == 2 and v["transcripts_stable"]
        assert [u["tokens"] for u in v["utterances"]] == _python_tokens(d, paths, "auto")
        assert 0 < v["chunk_p50_ms"] <= v["chunk_p90_ms"] and v["peak_mb"] > 0
    # Pinned to the big cores (f0), interleaved: round 1 of both variants, then round 2.
    calls = [line.split() for line in (root / "taskset.log").read_text().splitlines()]
    assert [c[0] for c in calls] == ["f0"] * 4 and [c[-len(paths) - 1] for c in calls] == ["e0", "e1", "e0", "e1"]
    assert not list((root / "data/local/tmp").iterdir()), "the run folder is removed"
    assert "| export |" in printed.out and "| float |" in (out / "report.md").read_text()


def test_run_recognizer_checks_the_libraries_before_pushing(export, phone, host_sysroot, tmp_path, capsys):
    from android_bench import __main__ as cli
    from converters.runtime import delegate_path

    directory, paths = export
    fake, root = phone
    common = ["run", "--adb", fake.adb, "--recognizer", str(directory), "--features", str(paths[0]), "--runner",
              str(recognizer.host_runner()), "--delegate", delegate_path(), "--out", str(tmp_path / "o"), "--quiet"]
    arm = tflite_c.fetch("arm64")
    assert cli.main([*common, "--tflite-c", str(arm.library)]) == 2
    assert "built for aarch64" in capsys.readouterr().err
    assert cli.main([*common, "--tflite-c", delegate_path()]) == 2  # an x86-64 library without the C API
    assert "exports the C API" in capsys.readouterr().err
    assert cli.main(["run", "--recognizer", str(directory), "--host", "--quiet"]) == 2
    assert "go together" in capsys.readouterr().err
    assert not list((root / "data/local/tmp").iterdir()), "nothing was pushed"


def test_the_runner_builds_for_another_linux_target_from_the_command_line(tmp_path, capsys):
    ensure_debian_packages(AARCH64_PACKAGES)
    assert recognizer.main(["--cc", CROSS, "--out", str(tmp_path / "gq_stream")]) == 0
    assert (tmp_path / "gq_stream").read_bytes()[18] == 183  # ELF e_machine: aarch64
    assert recognizer.main(["--cc", "no-such-cc", "--out", str(tmp_path / "x")]) == 2
    assert "Expected a C compiler 'no-such-cc'" in capsys.readouterr().err
