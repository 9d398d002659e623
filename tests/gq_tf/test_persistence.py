"""save_qat / load_qat, and serialization round trips of every registered class."""

import json
import os
import re

import numpy as np
import pytest

import gq_tf
from gq_tf import keras
from gq_tf.codebooks import quantized_weights
from gq_tf.configs import GQQuantizeConfig
from gq_tf.persistence import policy_from_json, policy_to_json
from gq_tf.quantizers import ClipConstraint
from tests.conftest import sequence_inputs, sequence_model

POLICY = {
    "lstm": {"kernel": gq_tf.GQ(4, mu=32.0, soft_window=2), "recurrent_kernel": gq_tf.Uniform(2)},
    "mha": {"query": 1, "value": gq_tf.GQ(8, trainable_mu=True)},
    "dense": None,
    ".*": 5,
}


def _train_a_little(qat):
    x = sequence_inputs(8)
    y = np.zeros((8, 12, 7), "float32")
    qat.compile(keras.optimizers.Adam(0.01), "mse")
    qat.fit(x, y, epochs=2, batch_size=4, verbose=0,
            callbacks=[gq_tf.GQAnnealing(anneal_every=1, tau_min=0.1)])


def test_save_and_load_restore_outputs_weights_and_annealing(tmp_path):
    qat = gq_tf.quantize_model(sequence_model(), POLICY)
    _train_a_little(qat)
    gq_tf.save_qat(qat, tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]
    restored = gq_tf.load_qat(tmp_path / "m")

    x = sequence_inputs()
    np.testing.assert_array_equal(qat(x, training=False), restored(x, training=False))
    a, b = quantized_weights(qat), quantized_weights(restored)
    assert [q.key for q in a] == [q.key for q in b]
    for qa, qb in zip(a, b):
        assert qa.quantizer == qb.quantizer
        np.testing.assert_array_equal(qa.variable.numpy(), qb.variable.numpy())
        for name in qa.qvars:
            np.testing.assert_array_equal(qa.qvars[name].numpy(), qb.qvars[name].numpy())
    assert a[0].qvars["state"].numpy()[0] == 4  # 2 epochs x 2 batches
    for k, book in gq_tf.extract_codebooks(qat).items():
        np.testing.assert_array_equal(book.decode(), gq_tf.extract_codebooks(restored)[k].decode())


def test_save_overwrites_an_existing_save(tmp_path):
    qat = gq_tf.quantize_model(sequence_model(), 3)
    gq_tf.save_qat(qat, tmp_path / "m")
    _train_a_little(qat)
    gq_tf.save_qat(qat, tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]
    x = sequence_inputs()
    np.testing.assert_array_equal(qat(x, training=False), gq_tf.load_qat(tmp_path / "m")(x, training=False))


def test_save_needs_a_gq_model(tmp_path):
    from tensorflow_model_optimization.quantization.keras import quantize_model

    tfmot_qat = quantize_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="gq_tf.quantize_model.*plain tfmot QAT model"):
        gq_tf.save_qat(tfmot_qat, tmp_path / "m")
    with pytest.raises(ValueError, match="without any gq_tf layers|without any\\."):
        gq_tf.save_qat(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="gq_model.json"):
        gq_tf.load_qat(tmp_path)
    (tmp_path / "gq_model.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="gq_tf.qat/1.*other/9"):
        gq_tf.load_qat(tmp_path)


def test_policy_json_round_trip():
    back = policy_from_json(json.loads(json.dumps(policy_to_json(POLICY))))
    assert back == POLICY and list(back) == list(POLICY)
    assert policy_from_json(policy_to_json(6)) == 6


@pytest.mark.parametrize("obj", [
    gq_tf.GQ(3),
    gq_tf.GQ(8, mu=255.0, trainable_mu=True, soft_window=7),
    gq_tf.Uniform(1),
    gq_tf.Uniform(8),
    GQQuantizeConfig({"kernel": gq_tf.GQ(2, mu=0.0), "recurrent_kernel": gq_tf.Uniform(4)}),
    ClipConstraint(-1.0, 1.0),
])
def test_registered_classes_round_trip(obj):
    config = keras.utils.serialize_keras_object(obj)
    assert config["registered_name"].startswith("gq_tf>")
    with gq_tf.quantize_scope():
        back = keras.utils.deserialize_keras_object(json.loads(json.dumps(config)))
    assert type(back) is type(obj)
    assert back.get_config() == obj.get_config()
    assert type(obj).from_config(obj.get_config()).get_config() == obj.get_config()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved QAT model to damage (copied per test)."""
    folder = tmp_path_factory.mktemp("saved") / "m"
    gq_tf.save_qat(gq_tf.quantize_model(sequence_model(), {"lstm": 4, "dense": gq_tf.Uniform(8)}), folder)
    return folder


def _copy(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "m")


def _meta(folder):
    return json.loads((folder / "gq_model.json").read_text())


def _edit_meta(folder, **changes):
    (folder / "gq_model.json").write_text(json.dumps({**_meta(folder), **changes}))


@pytest.mark.parametrize("damage, error, match", [
    (lambda m: (m / "gq_model.json").write_text((m / "gq_model.json").read_text()[:300]), ValueError,
     r"gq_model.json to hold the JSON .* does not parse .*truncated"),
    (lambda m: (m / "gq_model.json").write_bytes(b"\xff\xfe garbage"), ValueError, r"gq_model.json .*does not parse"),
    (lambda m: (m / "gq_model.json").write_text("[1, 2]"), ValueError, r"JSON object in .*gq_model.json.*list"),
    (lambda m: (m / "gq_model.json").write_text(json.dumps({k: v for k, v in _meta(m).items() if k != "policy"})),
     ValueError,
     r"keys 'float_model' and 'policy' in .*gq_model.json. Received keys \['float_model', 'format', 'scheme'\]"),
    (lambda m: _edit_meta(m, float_model={"class_name": "Nope", "config": {}}), ValueError,
     r"Keras model config under 'float_model' in .*gq_model.json"),
    (lambda m: _edit_meta(m, policy={"rules": [["lstm"]]}), ValueError,
     r"policy as save_qat writes it under 'policy' in .*gq_model.json"),
    (lambda m: _edit_meta(m, policy="abc"), ValueError, r"policy as save_qat writes it .*\"abc\""),
    (lambda m: _edit_meta(m, policy={"rules": [["lstm", {"weights": {"nope": 4}}]]}), ValueError,
     r"policy in .*gq_model.json to fit its float model.*nope"),
    (lambda m: _edit_meta(m, policy={"rules": [["nothing", 4]]}), ValueError,
     r"policy in .*gq_model.json to fit its float model"),
    (lambda m: (m / "weights.index").unlink(), FileNotFoundError, r"weights.index and weights.data-\* .*in"),
    (lambda m: [f.unlink() for f in m.glob("weights.data-*")], FileNotFoundError, r"weights checkpoint"),
    (lambda m: [f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2]) for f in m.glob("weights.data-*")],
     ValueError, r"weights.index and .*weights.data-\* to be a whole checkpoint .*cannot be restored"),
    (lambda m: (m / "weights.index").write_bytes((m / "weights.index").read_bytes()[:50]), ValueError,
     r"whole checkpoint .*cannot be restored .*sstable"),
])
def test_load_of_a_damaged_save_names_the_file(saved, tmp_path, damage, error, match):
    folder = _copy(saved, tmp_path)
    damage(folder)
    with pytest.raises(error, match=match):
        gq_tf.load_qat(folder)


def test_load_of_weights_from_another_model_is_an_error(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    other = tmp_path / "other"
    gq_tf.save_qat(gq_tf.quantize_model(sequence_model(), {"dense": 4}), other)  # fewer quantizer variables
    for f in other.glob("weights.*"):
        (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="whole checkpoint of the model .*cannot be restored"):
        gq_tf.load_qat(folder)


def _edit_layer(folder, name, edit):
    meta = _meta(folder)
    # TFOpLambda names get a suffix when another model made the same op first in this process.
    edit(next(layer for layer in meta["float_model"]["config"]["layers"]
              if re.fullmatch(re.escape(name) + r"(_\d+)?", layer["name"])))
    (folder / "gq_model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, match", [
    # Keras looped forever on these (found by tests/support/fuzz_entry.py's qat target).
    (lambda layer: layer["inbound_nodes"].clear(), r"layer 'dense' reads node 0 of layer 'drop', which has 0"),
    (lambda layer: layer["inbound_nodes"][0][0].__setitem__(1, 1), r"layer 'drop' reads node 1 of layer 'norm'"),
    (lambda layer: layer["inbound_nodes"][0][0].__setitem__(0, "ghost"), r"reads layer 'ghost', which the model"),
    # A tensor passed as a keyword argument (attention's value), and a layer whose one node is a bare
    # reference (TFOpLambda's format, `x + a`): Keras waits for both.
    (("mha", lambda layer: layer["inbound_nodes"][0][0][3]["value"].__setitem__(1, 2)),
     r"layer 'mha' reads node 2 of layer 'lstm', which has 1"),
    (("tf.__operators__.add", lambda layer: layer["inbound_nodes"][0].__setitem__(1, 3)),
     r"layer 'tf.__operators__.add(_\d+)?' reads node 3 of layer 'lstm'"),
    # Keras reads any [str, x, y(, kwargs)] list as a reference and never finds a node x that is not an
    # index >= 0 (found by the qat fuzz target's 10,000-case run).
    (lambda layer: layer["inbound_nodes"][0][0].__setitem__(1, "norm"), r"reads node 'norm' of layer 'norm', "
     "which is not a node index"),
    (lambda layer: layer["inbound_nodes"][0][0].__setitem__(1, -1), r"reads node -1 of layer 'norm', which is not"),
    # Keras iterates a dict of inbound nodes as its keys: {} is a layer without nodes (qat fuzz target).
    (lambda layer: layer.__setitem__("inbound_nodes", {}), r"layer 'dense' reads node 0 of layer 'drop', which has 0"),
], ids=["inbound nodes deleted", "node index past the last", "unknown layer", "keyword tensor", "bare reference",
        "index a string", "index negative", "nodes an empty dict"])
def test_load_of_a_graph_keras_could_never_connect_is_an_error_not_a_hang(saved, tmp_path, edit, match):
    folder = _copy(saved, tmp_path)
    name, edit = edit if isinstance(edit, tuple) else ("drop", edit)  # default: the Dropout before the head
    _edit_layer(folder, name, edit)
    with pytest.raises(ValueError, match=r"Expected every inbound node of 'float_model' in .*gq_model.json.*" + match):
        gq_tf.load_qat(folder)


def test_load_of_a_config_keras_fails_on_is_a_clear_error(saved, tmp_path):
    """Keras raised UnboundLocalError on an empty inbound node (found by the qat fuzz target)."""
    folder = _copy(saved, tmp_path)
    _edit_layer(folder, "drop", lambda layer: layer["inbound_nodes"][0].__setitem__(0, []))
    with pytest.raises(ValueError, match=r"Keras model config under 'float_model' .*Received one Keras cannot build"):
        gq_tf.load_qat(folder)
