"""The public API surface and model-type errors."""

import os

import pytest

import gq_tf
from gq_tf import keras
from tests.conftest import sequence_model

PUBLIC = [
    "keras", "quantize_model", "GQ", "GeneralQuantizer", "Uniform", "GQAnnealing", "Codebook",
    "extract_codebooks", "strip_quantization", "quantize_scope", "save_qat", "load_qat", "allocate_bits", "Allocation",
    "quantize_annotate_layer", "QuantizeScheme", "GQQuantizeConfig", "Tfmot8Bit",
]


def test_public_api_is_pinned():
    assert sorted(gq_tf.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(gq_tf, name), name


def test_keras_is_tf_keras_and_legacy_flag_set():
    import tf_keras

    assert gq_tf.keras is tf_keras
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"


def test_gq_is_the_general_quantizer():
    assert isinstance(gq_tf.GQ(3), gq_tf.GeneralQuantizer)


def test_keras3_model_is_rejected_with_a_hint():
    import keras as keras3

    assert keras3.__version__.startswith("3")
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match=r"Keras 3.*gq_tf import keras"):
        gq_tf.quantize_model(model, 4)


def test_non_model_is_rejected():
    with pytest.raises(TypeError, match="Received an object of type list"):
        gq_tf.quantize_model([1, 2], 4)


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net.build((None, 4))
    with pytest.raises(ValueError, match="subclassed model.*Functional API"):
        gq_tf.quantize_model(net, 4)


def test_unbuilt_model_is_rejected():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="built model.*model.build"):
        gq_tf.quantize_model(model, 4)


def test_qat_model_cannot_be_quantized_twice():
    qat = gq_tf.quantize_model(sequence_model(), 4)
    with pytest.raises(ValueError, match="already quantized"):
        gq_tf.quantize_model(qat, 4)


def test_cli_without_command_prints_usage(capsys):
    from gq_speech.__main__ import main

    with pytest.raises(SystemExit):
        main(["nonsense"])
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_at_build_time(bad):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    kernel = model.get_layer("dense").kernel
    kernel.assign(kernel.numpy() * 0 + 1)
    value = kernel.numpy()
    value[1, 2] = bad
    kernel.assign(value)
    with pytest.raises(ValueError, match=r"finite values in weight 'dense/kernel'.*1 non-finite"):
        gq_tf.quantize_model(model, {"dense": gq_tf.Uniform(8)})
    with pytest.raises(ValueError, match=r"finite values in weight 'dense/kernel'"):
        gq_tf.quantize_model(model, 4)
