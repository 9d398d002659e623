"""converters.deployed_sizes: the size model of gq_tf.allocate_bits is the exporter's bytes."""

import json
import re
import warnings

import numpy as np
import pytest

import converters
import gq_tf
from gq_tf import allocation, keras
from tests.conftest import image_model, sequence_model


def _rows(qat, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", converters.NotPackedWarning)  # embeddings, depthwise: decoded
        return {r.key: r for r in converters.export_tflite(qat, path).kernels}


def _odd_model():
    """Input widths that are not multiples of 64 (row padding) and a 4-D attention output."""
    keras.utils.set_random_seed(3)
    x = keras.Input((5, 70))
    h = keras.layers.Dense(33, name="d1")(x)
    h = keras.layers.LSTM(27, return_sequences=True, name="lstm")(h)
    a = keras.layers.MultiHeadAttention(num_heads=3, key_dim=5, name="mha")(h, h)
    y = keras.layers.Conv1D(9, 2, padding="causal", name="conv")(a)
    return keras.Model(x, y)


@pytest.mark.parametrize("make", [sequence_model, image_model, _odd_model], ids=["sequence", "image", "odd"])
def test_every_kernel_takes_the_bytes_the_export_writes(make, tmp_path):
    model = make()
    ks = allocation.kernels(model)
    cycle = [1, 3, 5, 8, 2, 6, 4, 7]
    policy = {}
    for i, k in enumerate(ks):
        policy.setdefault(k.layer_name, {})[k.weight_name] = cycle[i % len(cycle)]
    rows = _rows(gq_tf.quantize_model(model, policy), tmp_path / "m.tflite")
    sizes = converters.deployed_sizes(ks)
    for k in ks:
        assert rows[k.key].nbytes == sizes[k.key][policy[k.layer_name][k.weight_name]], k.key
        assert sizes[k.key][None] == 4 * k.size


def test_an_lstm_with_one_kernel_kept_float_is_decoded(tmp_path):
    model = _odd_model()
    ks = allocation.kernels(model)
    rows = _rows(gq_tf.quantize_model(model, {"lstm": {"kernel": 3}, "d1": 2}), tmp_path / "m.tflite")
    sizes = converters.deployed_sizes(ks, frozenset({"lstm/recurrent_kernel"}))
    assert rows["lstm/kernel"].nbytes == sizes["lstm/kernel"][3] == 4 * 33 * 4 * 27
    assert rows["d1/kernel"].nbytes == sizes["d1/kernel"][2]


def test_an_allocation_by_the_exporters_sizes_exports_to_its_total(tmp_path):
    model = _odd_model()
    model.compile(loss="mse")
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(32, 5, 70)).astype(np.float32), rng.normal(size=(32, 5, 9)).astype(np.float32))
    ks = allocation.kernels(model)
    sizes = converters.deployed_sizes(ks)
    budget = sum(sizes[k.key][3] for k in ks)
    alloc = gq_tf.allocate_bits(model, data, budget_bytes=budget, sizes=converters.deployed_sizes,
                                candidates=(1, 2, 4, 8), progress=False)
    rows = _rows(gq_tf.quantize_model(model, alloc.policy), tmp_path / "m.tflite")
    assert sum(r.nbytes for r in rows.values()) == alloc.total_bytes <= budget
    assert {c.key: c.nbytes for c in alloc.choices} == {k: r.nbytes for k, r in rows.items()}


def test_allocate_command_prints_the_table_and_writes_the_policy(tmp_path, capsys):
    from converters.allocate import main

    model = _odd_model()
    model.compile(loss="mse")
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(16, 5, 70)).astype(np.float32),
             y=rng.normal(size=(16, 5, 9)).astype(np.float32))
    sizes = converters.deployed_sizes(allocation.kernels(model))
    budget = sum(row[4] for row in sizes.values())
    rc = main([str(tmp_path / "m.keras"), str(tmp_path / "cal.npz"), "--budget-bytes", str(budget),
               "--min-bits", "conv=8", "--candidates", "2,4,8", "--out", str(tmp_path / "a.json")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "| kernel" in out and "conv/kernel" in out and f"of a {budget:,}-byte budget" in out
    assert re.search(r"sensitivity \d+/\d+: ", err)  # progress while it measures
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["policy"]["conv"] == 8 and saved["total_bytes"] <= budget
    gq_tf.quantize_model(model, saved["policy"])  # an ordinary policy


@pytest.mark.parametrize("argv, match", [
    (["nope.keras", "cal.npz", "--budget-kb", "4"], r"saved tf_keras model at 'nope.keras'. It does not exist"),
    (["m.keras", "bad.npz", "--budget-kb", "4"], r"arrays 'x' and 'y' in .*bad.npz. Received \['a'\]"),
    (["m.keras", "cal.npz", "--budget-bytes", "10"], r"budget_bytes >= [\d,]+, the smallest"),
    (["cal.npz", "cal.npz", "--budget-kb", "4"], r"Keras cannot load it"),
])
def test_allocate_command_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, match):
    from converters.allocate import main

    monkeypatch.chdir(tmp_path)
    model = _odd_model()
    model.compile(loss="mse")
    model.save("m.keras")
    np.savez("cal.npz", x=np.zeros((4, 5, 70), np.float32), y=np.zeros((4, 5, 9), np.float32))
    np.savez("bad.npz", a=np.zeros(3))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("gq-tf allocate: error: ") and re.search(match, err), err
