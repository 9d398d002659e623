"""GQ inside tfmot's own workflow: quantize_annotate_layer, QuantizeScheme, Tfmot8Bit,
strip and save/load of models that mix GQ with tfmot's default 8-bit scheme."""

import json

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import gq_tf
from gq_tf import keras

qk = tfmot.quantization.keras


def float_model():
    inp = keras.Input((20,), name="x")
    x = keras.layers.Dense(32, activation="relu", name="f0")(inp)
    x = keras.layers.Dense(32, activation="relu", name="a")(x)
    x = keras.layers.Dense(16, name="b")(x)
    out = keras.layers.Dense(8, name="c")(x)
    return keras.Model(inp, out)


def annotated_model():
    """The issue's example: GQ on 'a' with tfmot's own API, tfmot's default 8-bit on 'b'."""
    inp = keras.Input((20,), name="x")
    x = keras.layers.Dense(32, activation="relu", name="f0")(inp)
    x = qk.quantize_annotate_layer(keras.layers.Dense(32, activation="relu", name="a"),
                                   quantize_config=gq_tf.GQQuantizeConfig({"kernel": gq_tf.GeneralQuantizer(3)}))(x)
    x = qk.quantize_annotate_layer(keras.layers.Dense(16, name="b"))(x)
    out = keras.layers.Dense(8, name="c")(x)
    return keras.Model(inp, out)


def configs(qat):
    """{layer name: (wrapper's config class, output_range)}; QuantizeLayers by class."""
    out = {}
    for layer in qat.layers:
        config = getattr(layer, "quantize_config", None)
        if config is not None:
            out[layer.layer.name] = (type(config).__name__, getattr(config, "output_range", None))
        elif type(layer).__name__ == "QuantizeLayer":
            out.setdefault("QuantizeLayer", 0)
            out["QuantizeLayer"] = out["QuantizeLayer"] + 1
    return out


def test_public_names():
    for name in ("GQQuantizeConfig", "QuantizeScheme", "Tfmot8Bit", "quantize_annotate_layer"):
        assert name in gq_tf.__all__ and hasattr(gq_tf, name)


def test_quantize_scheme_puts_gq_and_8bit_where_annotated():
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(annotated_model(), gq_tf.QuantizeScheme())
    # f0 feeds only the GQ layer: no output quantization there; the GQ layer
    # feeds the 8-bit one: it gets an output range.
    assert configs(qat) == {"a": ("GQQuantizeConfig", True), "b": ("Default8BitQuantizeConfig", None)}


def test_tfmot_default_scheme_also_applies():
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(annotated_model())
    got = configs(qat)
    assert got["a"] == ("GQQuantizeConfig", False) and got["b"][0] == "Default8BitQuantizeConfig"
    assert got["f0"][0] == "OutputOnlyConfig"  # tfmot's own rule: inputs of annotated layers


def test_quantize_annotate_model_keeps_gq_annotations():
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(qk.quantize_annotate_model(annotated_model()), gq_tf.QuantizeScheme())
    got = configs(qat)
    assert got["a"][0] == "GQQuantizeConfig"
    assert {got[n][0] for n in ("f0", "b", "c")} == {"Default8BitQuantizeConfig"}


def test_gq_only_scheme_is_weight_only():
    inp = keras.Input((20,))
    x = gq_tf.quantize_annotate_layer(keras.layers.Dense(8, name="d"), {"kernel": gq_tf.GQ(2)})(inp)
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(keras.Model(inp, x), gq_tf.QuantizeScheme())
    assert configs(qat) == {"d": ("GQQuantizeConfig", False)}


def test_policy_with_tfmot8bit():
    qat = gq_tf.quantize_model(float_model(), {"f0": gq_tf.Tfmot8Bit(), "a": 3, "b": gq_tf.Tfmot8Bit()})
    got = configs(qat)
    assert got["f0"] == ("Default8BitQuantizeConfig", None) and got["b"] == ("Default8BitQuantizeConfig", None)
    assert got["a"] == ("GQQuantizeConfig", True) and got["QuantizeLayer"] == 1 and "c" not in got
    x = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32)
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((4, 8), np.float32), epochs=1, verbose=0, callbacks=[gq_tf.GQAnnealing(anneal_every=1)])
    assert set(gq_tf.extract_codebooks(qat)) == {"a/kernel"}


@pytest.mark.parametrize("spec,error,match", [
    ({"a": {"kernel": gq_tf.Tfmot8Bit()}}, TypeError, "whole layer"),
    ({"a": "8bit"}, TypeError, "Tfmot8Bit"),
])
def test_policy_errors(spec, error, match):
    with pytest.raises(error, match=match):
        gq_tf.quantize_model(float_model(), spec)


def test_tfmot8bit_on_a_layer_tfmot_cannot_quantize():
    inp = keras.Input((5, 4))
    model = keras.Model(inp, keras.layers.LSTM(6, name="rnn")(inp))
    with pytest.raises(ValueError, match="'rnn' of class LSTM.*no QuantizeConfig"):
        gq_tf.quantize_model(model, {"rnn": gq_tf.Tfmot8Bit()})


def test_quantize_annotate_layer_errors():
    with pytest.raises(TypeError, match="tf_keras layer"):
        gq_tf.quantize_annotate_layer("dense", 4)
    with pytest.raises(ValueError, match="Received None"):
        gq_tf.quantize_annotate_layer(keras.layers.Dense(3, name="d"), None)
    with pytest.raises(ValueError, match="weight names of Dense"):
        gq_tf.quantize_annotate_layer(keras.layers.Dense(3, name="d"), {"recurrent_kernel": 2})
    with pytest.raises(ValueError, match="'n' of class LayerNormalization"):
        gq_tf.quantize_annotate_layer(keras.layers.LayerNormalization(name="n"), 4)


def test_strip_quantization_of_a_mixed_model():
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(qk.quantize_annotate_model(annotated_model()))  # with an input QuantizeLayer
    assert any(type(layer).__name__ == "QuantizeLayer" for layer in qat.layers)
    stripped = gq_tf.strip_quantization(qat)
    assert [type(layer).__name__ for layer in stripped.layers] == ["InputLayer", "Dense", "Dense", "Dense", "Dense"]
    assert [layer.name for layer in stripped.layers[1:]] == ["f0", "a", "b", "c"]
    wrappers = {layer.layer.name: layer for layer in qat.layers if hasattr(layer, "quantize_config")}
    # tfmot 8-bit layers: the float (latent) kernel; GQ: the hard-quantized one.
    np.testing.assert_array_equal(stripped.get_layer("b").kernel.numpy(), wrappers["b"]._weight_vars[0][0].numpy())
    np.testing.assert_array_equal(stripped.get_layer("b").bias.numpy(), wrappers["b"].layer.bias.numpy())
    decoded = gq_tf.extract_codebooks(qat)["a/kernel"].decode()
    np.testing.assert_array_equal(stripped.get_layer("a").kernel.numpy(), decoded)


@pytest.mark.parametrize("scheme", ["gq", "tfmot"])
def test_save_load_round_trip_of_a_tfmot_built_model(tmp_path, scheme):
    with gq_tf.quantize_scope():
        if scheme == "gq":
            qat = qk.quantize_apply(annotated_model(), gq_tf.QuantizeScheme())
        else:
            qat = qk.quantize_apply(annotated_model())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 20)).astype(np.float32)
    qat.compile("adam", "mse")
    qat.fit(x, rng.normal(size=(32, 8)).astype(np.float32), epochs=2, batch_size=8, verbose=0,
            callbacks=[gq_tf.GQAnnealing(anneal_every=2)])
    gq_tf.save_qat(qat, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "gq_model.json").read_text())
    assert meta["scheme"] == scheme
    loaded = gq_tf.load_qat(tmp_path / "m")
    assert configs(loaded) == configs(qat)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), qat(x, training=False).numpy())
    gq_tf.save_qat(loaded, tmp_path / "again")  # a loaded model saves under the same scheme
    assert json.loads((tmp_path / "again" / "gq_model.json").read_text())["scheme"] == scheme


def test_save_load_of_a_policy_with_tfmot8bit(tmp_path):
    qat = gq_tf.quantize_model(float_model(), {"a": 3, "b": gq_tf.Tfmot8Bit()})
    gq_tf.save_qat(qat, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "gq_model.json").read_text())
    assert ["b", {"tfmot8bit": True}] in meta["policy"]["rules"]
    loaded = gq_tf.load_qat(tmp_path / "m")
    x = np.ones((2, 20), np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), qat(x).numpy())


def test_unknown_scheme_in_a_saved_file(tmp_path):
    gq_tf.save_qat(gq_tf.quantize_model(float_model(), 4), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "gq_model.json").read_text())
    meta["scheme"] = "n_bit"
    (tmp_path / "m" / "gq_model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'scheme'.*'n_bit'"):
        gq_tf.load_qat(tmp_path / "m")


def test_save_refuses_a_model_it_cannot_rebuild(tmp_path):
    inp = keras.Input((20,))
    x = qk.quantize_annotate_layer(keras.layers.Dense(8, name="d"),
                                   quantize_config=gq_tf.GQQuantizeConfig({"kernel": gq_tf.GQ(2)},
                                                                          output_range=True))(inp)
    with gq_tf.quantize_scope():
        qat = qk.quantize_apply(keras.Model(inp, x), gq_tf.QuantizeScheme())
    with pytest.raises(ValueError, match="does not reproduce"):
        gq_tf.save_qat(qat, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _nbit_model():
    inp = keras.Input((20,))
    x = keras.layers.Dense(8, name="d")(inp)
    model = qk.quantize_annotate_model(keras.Model(inp, x))
    with qk.quantize_scope():
        return qk.quantize_apply(model, qk.experimental.default_n_bit.DefaultNBitQuantizeScheme(
            num_bits_weight=4, num_bits_activation=4))


def _pruned_model():
    inp = keras.Input((20,))
    return tfmot.sparsity.keras.prune_low_magnitude(keras.Model(inp, keras.layers.Dense(8, name="d")(inp)))


def _clustered_model():
    inp = keras.Input((20,))
    return tfmot.clustering.keras.cluster_weights(keras.Model(inp, keras.layers.Dense(8, name="d")(inp)),
                                                  number_of_clusters=4)


@pytest.mark.parametrize("make,match", [
    (_nbit_model, "QuantizeLayer 'quantize_layer.*num_bits=4"),
    (_pruned_model, "'prune_low_magnitude_d'.*PruneLowMagnitude.*strip_pruning"),
    (_clustered_model, "'cluster_d'.*ClusterWeights.*strip_clustering"),
])
def test_other_tfmot_models_get_a_clear_error_on_save(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        gq_tf.save_qat(make(), tmp_path / "m")
