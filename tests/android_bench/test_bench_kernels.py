"""``python -m android_bench kernels``: the kernel benchmark runs end to end on
a small selection, prints its table and writes JSON whose numbers are
consistent with each other; bad arguments give clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "android_bench", "kernels", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "kernels.json"
    r = _bench("--groups", "in-cache", "--bits", "2,4", "--batch", "1,3", "--seconds", "0.05", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return r, json.loads(out.read_text())


def test_table_lists_every_model_with_ratios(small_run):
    r, _ = small_run
    lines = [line for line in r.stdout.splitlines() if line.startswith("in-cache")]
    assert len(lines) == 2 * 4  # 2 batches x (float32, int8, gq 2, gq 4)
    assert "x int8" in r.stdout and "bound us" in r.stdout and "copy bandwidth" in r.stdout
    assert any("<= 1.0x int8" in line for line in lines)  # the in-cache batch-1 target is judged
    assert "building models" in r.stderr and "round 5/5" in r.stderr  # progress on stderr


def test_json_numbers_are_consistent(small_run):
    _, data = small_run
    from converters import layout
    from converters.runtime import auto_kernel

    assert data["gq_kernel"] == auto_kernel()
    assert data["copy_bandwidth_gbs"] > 0.5
    rows = data["rows"]
    for batch in (1, 3):
        mine = {row["model"]: row for row in rows if row["batch"] == batch}
        assert set(mine) == {"float32", "int8", "gq 2", "gq 4"}
        int8 = mine["int8"]["median_us"]
        for row in mine.values():
            assert row["samples"] >= 50
            assert 0 < row["min_us"] <= row["median_us"] <= row["p90_us"]
            assert row["ratio_int8"] == pytest.approx(row["median_us"] / int8)
            assert row["bound_us"] == pytest.approx(row["weight_bytes"] / (data["copy_bandwidth_gbs"] * 1e9) * 1e6)
        assert mine["float32"]["weight_bytes"] == 512 * 512 * 4
        assert mine["int8"]["weight_bytes"] == 512 * 512
        assert mine["gq 4"]["weight_bytes"] == layout.packed_size(4, 512, 512) + 4 * 16
        # The packed model files really are smaller than the int8 one.
        assert mine["gq 2"]["file_bytes"] < mine["gq 4"]["file_bytes"] < mine["int8"]["file_bytes"]


@pytest.mark.parametrize("args, message", [
    (("--groups", "l2"), "expected --groups among in-cache, lstm, stack"),
    (("--bits", "9"), "expected --bits in 1..8"),
    (("--bits", "four"), "expected comma-separated integers"),
    (("--batch", "0"), "expected --batch in 1..4096"),
    (("--seconds", "0"), "expected --seconds > 0"),
    (("--shapes", "70by33"), "expected --shapes as comma-separated INxOUT"),
])
def test_bad_arguments_are_reported(args, message):
    r = _bench(*args, timeout=120)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_shapes_time_a_model_for_a_latency_budget(tmp_path, capsys):
    """The kernel benchmark times the shapes gq-tf allocate asks for; the allocation meets a latency budget."""
    import numpy as np

    import gq_tf  # noqa: F401
    from converters import allocate
    from gq_tf import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((70,)), keras.layers.Dense(33, name="a"), keras.layers.Dense(9, name="b")])
    model.compile(loss="mse")
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(16, 70)).astype(np.float32),
             y=rng.normal(size=(16, 9)).astype(np.float32))
    table = tmp_path / "latency.json"
    base = [str(tmp_path / "m.keras"), str(tmp_path / "cal.npz"), "--budget-kb", "100", "--candidates", "1,2,4",
            "--latency-table", str(table)]
    table.write_text(json.dumps({"rows": []}))
    assert allocate.main(base + ["--latency-budget-us", "1000"]) == 1
    err = capsys.readouterr().err
    assert "shapes 33x9,70x33 in" in err and "android_bench kernels --shapes 33x9,70x33" in err
    r = _bench("--shapes", "70x33,33x9", "--bits", "1,2,4", "--seconds", "0.05", "--json", str(table))
    assert r.returncode == 0, r.stderr[-3000:]
    assert {row["group"] for row in json.loads(table.read_text())["rows"]} == {"70x33", "33x9"}
    lat = allocate.latency_table(table, gq_tf.allocation.kernels(model))
    fastest = sum(min(row.values()) for row in lat.values()) * 1e6
    assert allocate.main(base + ["--latency-budget-us", f"{fastest * 1.001:.4f}"]) == 0
    out = capsys.readouterr().out
    assert "latency of the quantized kernels:" in out
    assert allocate.main(base + ["--latency-budget-us", f"{fastest * 0.5:.4f}"]) == 1
    assert "latency_budget some allocation meets" in capsys.readouterr().err
