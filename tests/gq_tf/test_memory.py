"""Training memory of an 8-bit GQ layer with 1M weights (the soft window at work)."""

import numpy as np

import gq_tf
from gq_tf import keras

GIB = 1024**3


def _rss_peak_bytes():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024


def _reset_peak():
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _step_growth(model, x, y):
    _reset_peak()
    _, before = _rss_peak_bytes()
    model.train_on_batch(x, y)
    peak, _ = _rss_peak_bytes()
    return peak - before


def test_8bit_gq_layer_with_1m_weights_trains_in_well_under_2gb():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, name="big")])
    qat = gq_tf.quantize_model(model, {"big": 8})
    qat.compile(keras.optimizers.Adam(1e-3), "mse")
    x = np.random.default_rng(0).normal(size=(32, 1024)).astype("float32")
    y = np.zeros((32, 1024), "float32")
    first = _step_growth(qat, x, y)  # includes tracing the train step
    second = _step_growth(qat, x, y)
    print(f"extra peak RSS: first step {first / 2**20:.0f} MiB, next step {second / 2**20:.0f} MiB")
    # A full 256-way softmax would hold several [1M, 256] float32 tensors
    # (1 GiB each); the window keeps it to a few [1M, 8] ones.
    assert second < 0.5 * GIB
    assert first < 1.5 * GIB  # the first step also traces and optimizes the graph
