"""Shared model factories: every layer type gq_tf supports, at small sizes."""

import numpy as np
import pytest

import gq_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from gq_tf import keras


def sequence_model(seed=0):
    """Embedding -> Conv1D -> DepthwiseConv1D -> LSTM -> attention -> norm -> Dense."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 16, name="embed")(tokens)
    x = keras.layers.Conv1D(24, 3, padding="same", activation="relu", name="conv1d")(x)
    x = keras.layers.DepthwiseConv1D(3, padding="same", name="dwconv1d")(x)
    x = keras.layers.LSTM(20, return_sequences=True, name="lstm")(x)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(x, x)
    x = keras.layers.LayerNormalization(name="norm")(x + a)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    outputs = keras.layers.Dense(7, name="dense")(x)
    return keras.Model(tokens, outputs, name="seq")


def image_model(seed=0):
    """Conv2D -> DepthwiseConv2D -> BatchNorm -> Dense."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2d"),
            keras.layers.DepthwiseConv2D(3, padding="same", name="dwconv2d"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(5, name="dense"),
        ],
        name="img",
    )


def sequence_inputs(n=3, seed=1):
    return np.random.default_rng(seed).integers(0, 50, size=(n, 12)).astype("int32")


def image_inputs(n=3, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype("float32")


@pytest.fixture
def seq_model():
    return sequence_model()


@pytest.fixture
def img_model():
    return image_model()


@pytest.fixture(scope="session")
def fc_models(tmp_path_factory):
    """Two 64x64 GQ 4-bit fully connected layers as .tflite files: ``gq``
    (GQ_FULLY_CONNECTED) and its ``int8`` and ``float32`` peers with the same
    weights (the kernel benchmark's builders; TF conversion is slow, so once)."""
    from android_bench.kernels import _convert, _gq_layers

    folder = tmp_path_factory.mktemp("fc_models")
    layers = _gq_layers(np.random.default_rng(0), 64, 64, 2, 4)
    paths = {}
    for kind in ("gq", "int8", "float32"):
        paths[kind] = folder / f"fc_{kind}.tflite"
        paths[kind].write_bytes(_convert(layers, 1, kind))
    return paths
