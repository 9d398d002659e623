"""The main job runs end to end (in its --quick mode) and writes readable results."""

import json
import os
import subprocess
import sys

import gq_tf
from gq_speech import demo


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert demo.main(["--quick", "--verbose", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for stage in range(1, 7):
        assert f"[{stage}/6]" in text
    assert "float KB -> packed KB" in text and "centroids used" in text
    for name in ("float", "uniform 8-bit QAT", "GQ mixed"):
        assert name in text
    res = json.loads((out / "results.json").read_text())
    kernels = {(k["layer"], k["weight"]): k for k in res["results"]["GQ mixed"]["kernels"]}
    assert kernels[("hidden", "kernel")]["bits"] == 1
    assert kernels[("head", "kernel")]["bits"] == 8
    assert kernels[("lstm", "recurrent_kernel")]["bits"] == 2
    for k in kernels.values():
        assert 1 <= k["used"] <= 2 ** k["bits"]
        assert k["packed_kb"] < k["float_kb"]
    for r in res["results"].values():
        assert 0.0 <= r["accuracy"] <= 1.0
    # The deployed files exist and run; with every GQ kernel packed (LSTM and
    # k=3 convolution included) GQ mixed is smaller than the int8 file too.
    tfl = {name: res["results"][name]["tflite"] for name in ("float", "uniform 8-bit QAT", "GQ mixed")}
    for r in tfl.values():
        assert os.path.getsize(r["path"]) == round(r["file_kb"] * 1024) and 0.0 <= r["accuracy"] <= 1.0
    assert tfl["GQ mixed"]["file_kb"] < tfl["float"]["file_kb"]
    assert tfl["uniform 8-bit QAT"]["file_kb"] < tfl["float"]["file_kb"]
    assert tfl["GQ mixed"]["file_kb"] < tfl["uniform 8-bit QAT"]["file_kb"]
    assert "Deployed .tflite files" in text
    qat = gq_tf.load_qat(out / "gq_mixed")
    assert len(gq_tf.extract_codebooks(qat)) == len(kernels)


def test_console_script_lists_commands():
    exe = os.path.join(os.path.dirname(sys.executable), "gq-tf")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "demo" in proc.stdout and "ablation" in proc.stdout


def test_ablation_quick_runs_the_quantization_frequency_grid(tmp_path, capsys, monkeypatch):
    from gq_speech import ablation

    monkeypatch.setattr(ablation, "HARD_EVERY", (0, 4))
    monkeypatch.setattr(ablation, "HARD_FRACTION", (0.3, 0.6))
    out = tmp_path / "ablation.json"
    assert ablation.main(["--quick", "--grids", "D", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    cells = {(r["hard_every"], r["hard_fraction"]) for r in res["frequency"]}
    assert cells == {(e, f) for e in ablation.HARD_EVERY for f in ablation.HARD_FRACTION}
    assert res["frequency_dev"] == 51 and not res["mu"]
    text = capsys.readouterr().out
    assert "D. quantization frequency (2 bits; dev accuracy %" in text and "| 60% of the steps |" in text
