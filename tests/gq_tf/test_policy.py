"""Policies: which weights get which quantizer, and the errors for bad policies."""

import logging

import pytest

import gq_tf
from gq_tf import keras
from gq_tf.codebooks import quantized_weights
from gq_tf.configs import LAYER_TABLE, WEIGHT_NAMES, register_layer, resolve_policy


def _plan(model, policy, **kw):
    return {
        layer: {w: (type(q).__name__, q.bits) for w, q in qs.items()}
        for layer, qs in resolve_policy(model, policy, **kw).items()
    }


def test_int_policy_quantizes_every_supported_weight(seq_model):
    plan = _plan(seq_model, 3)
    assert plan == {
        "embed": {"embeddings": ("GeneralQuantizer", 3)},
        "conv1d": {"kernel": ("GeneralQuantizer", 3)},
        "dwconv1d": {"depthwise_kernel": ("GeneralQuantizer", 3)},
        "lstm": {"kernel": ("GeneralQuantizer", 3), "recurrent_kernel": ("GeneralQuantizer", 3)},
        "mha": {w: ("GeneralQuantizer", 3) for w in ("query", "key", "value", "output")},
        "dense": {"kernel": ("GeneralQuantizer", 3)},
    }


def test_first_matching_pattern_wins_and_unmatched_stay_float(seq_model):
    policy = {
        "lstm": {"kernel": 4, "recurrent_kernel": gq_tf.Uniform(2)},
        "mha": {"query": 1, "output": None},
        "conv.*": 5,
        ".*conv.*": 8,  # never reached for conv1d: "conv.*" matched first
        "dense": None,
    }
    plan = _plan(seq_model, policy)
    assert plan == {
        "lstm": {"kernel": ("GeneralQuantizer", 4), "recurrent_kernel": ("Uniform", 2)},
        "mha": {"query": ("GeneralQuantizer", 1)},
        "conv1d": {"kernel": ("GeneralQuantizer", 5)},
        "dwconv1d": {"depthwise_kernel": ("GeneralQuantizer", 8)},
    }


def test_fullmatch_not_search(seq_model):
    # "lst" is a prefix of "lstm": fullmatch must not select it.
    with pytest.raises(ValueError, match="selects none"):
        resolve_policy(seq_model, {"lst": 4})


def test_norm_and_weightless_layers_pass_through(seq_model, img_model):
    assert "norm" not in _plan(seq_model, {".*": 4})
    assert "drop" not in _plan(seq_model, {".*": 4})
    assert set(_plan(img_model, {".*": 4})) == {"conv2d", "dwconv2d", "dense"}


def test_table_covers_the_issue_layer_list():
    # Keras' own types; register_layer may have added subclasses (the ASR package's CachedAttention).
    names = {cls.__name__ for cls in LAYER_TABLE if cls.__module__.startswith("tf_keras.")}
    assert names == {"Dense", "Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "LSTM",
                     "Embedding", "MultiHeadAttention"}
    assert set(WEIGHT_NAMES) == {"kernel", "recurrent_kernel", "depthwise_kernel", "embeddings",
                                 "query", "key", "value", "output"}


def test_unsupported_layer_selected_by_pattern_names_layer_and_class():
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4, name="gru"),
                              keras.layers.Dense(2, name="dense")])
    with pytest.raises(ValueError, match=r"'gru' of class GRU.*\{'gru': None\}"):
        resolve_policy(model, {".*": 4})
    # Mapping it to None first is the documented way out.
    assert set(_plan(model, {"gru": None, ".*": 4})) == {"dense"}


def test_int_policy_skips_unsupported_layers_with_a_warning(caplog):
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4, name="gru"), keras.layers.Dense(2, name="d")])
    with caplog.at_level(logging.WARNING, logger="gq_tf"):
        assert set(_plan(model, 4)) == {"d"}
    assert "gru (GRU)" in caplog.text


def test_subclass_of_supported_layer_is_not_silently_supported():
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.Conv1DTranspose(4, 3, name="deconv")])
    with pytest.raises(ValueError, match="class Conv1DTranspose"):
        resolve_policy(model, {".*": 4})


def test_register_layer_quantizes_a_subclass_like_its_base():
    class MyConv(keras.layers.Conv1DTranspose):
        pass

    class KeepsDense(keras.layers.Dense):
        pass

    with pytest.raises(ValueError, match="LAYER_TABLE row.*Conv1DTranspose"):
        register_layer(MyConv, keras.layers.Conv1DTranspose)
    with pytest.raises(TypeError, match="subclass of Dense"):
        register_layer(MyConv, keras.layers.Dense)
    try:
        assert register_layer(KeepsDense, keras.layers.Dense) is KeepsDense
        model = keras.Sequential([keras.Input((3,)), KeepsDense(2, name="mine")])
        assert _plan(model, {".*": 4}) == {"mine": {"kernel": ("GeneralQuantizer", 4)}}
    finally:
        LAYER_TABLE.pop(KeepsDense, None)


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_bits_out_of_range(seq_model, bits):
    with pytest.raises(ValueError, match=rf"1\.\.8.*{bits}"):
        resolve_policy(seq_model, {"dense": bits})


@pytest.mark.parametrize("bits", [2.0, "4", True])
def test_bits_not_an_int(seq_model, bits):
    with pytest.raises(TypeError, match="Expected"):
        resolve_policy(seq_model, {"dense": bits})


def test_bits_out_of_range_in_weight_dict_and_int_policy(seq_model):
    with pytest.raises(ValueError, match=r"recurrent_kernel.*1\.\.8"):
        resolve_policy(seq_model, {"lstm": {"recurrent_kernel": 12}})
    with pytest.raises(ValueError, match=r"1\.\.8"):
        resolve_policy(seq_model, 0)


def test_unknown_weight_name(seq_model):
    with pytest.raises(ValueError, match=r"unknown weight name 'bias'"):
        resolve_policy(seq_model, {"dense": {"bias": 4}})


def test_weight_name_of_another_layer_type(seq_model):
    with pytest.raises(ValueError, match=r"Dense \['kernel'\].*'dense'.*\['recurrent_kernel'\]"):
        resolve_policy(seq_model, {"dense": {"recurrent_kernel": 4}})


def test_strict_pattern_matching_nothing(seq_model):
    with pytest.raises(ValueError, match=r"matching nothing: \['encoder_.\*'\]"):
        resolve_policy(seq_model, {"encoder_.*": 4, "dense": 4}, strict=True)
    assert set(_plan(seq_model, {"encoder_.*": 4, "dense": 4})) == {"dense"}


def test_malformed_policies(seq_model):
    with pytest.raises(TypeError, match="int .bits. or a dict"):
        resolve_policy(seq_model, [4])
    with pytest.raises(ValueError, match="valid regex"):
        resolve_policy(seq_model, {"(": 4})
    with pytest.raises(TypeError, match="regex strings"):
        resolve_policy(seq_model, {3: 4})
    with pytest.raises(ValueError, match="non-empty"):
        resolve_policy(seq_model, {})
    with pytest.raises(TypeError, match="nested dict"):
        resolve_policy(seq_model, {"lstm": {"kernel": {"x": 1}}})


def test_quantize_model_copies_float_weights_and_keeps_original(seq_model):
    before = [w.copy() for w in seq_model.get_weights()]
    qat = gq_tf.quantize_model(seq_model, {"lstm": 4, "dense": gq_tf.Uniform(8)})
    for qw in quantized_weights(qat):
        original = {"lstm/kernel": seq_model.get_layer("lstm").cell.kernel,
                    "lstm/recurrent_kernel": seq_model.get_layer("lstm").cell.recurrent_kernel,
                    "dense/kernel": seq_model.get_layer("dense").kernel}[qw.key]
        assert qw.variable is not original
        assert (qw.variable.numpy() == original.numpy()).all()
    for a, b in zip(before, seq_model.get_weights()):
        assert (a == b).all()
    assert [layer.name for layer in qat.layers if layer.name.startswith("quant_")] == ["quant_lstm", "quant_dense"]


def test_shared_spec_objects_give_independent_quantizers(seq_model):
    shared = gq_tf.GQ(3)
    qat = gq_tf.quantize_model(seq_model, {"conv1d|dense": shared})
    q = [qw.quantizer for qw in quantized_weights(qat)]
    assert len(q) == 2 and q[0] is not q[1] and q[0] is not shared
    names = [v.name for qw in quantized_weights(qat) for v in qw.qvars.values()]
    assert len(names) == len(set(names))
