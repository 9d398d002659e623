"""Untrained speech models that still decode to something, for tests and fuzzing."""

import numpy as np

from gq_speech import models
from gq_tf._keras import keras


def emitting_net(cfg, seed=0):
    """A random transducer of ``cfg`` whose greedy decoding emits some (not only) non-blank tokens."""
    keras.utils.set_random_seed(seed)
    net = models.build_training_model(cfg)
    # Larger joint weights: logits that depend on the frame and on the last
    # token, not only on the bias (which alone would emit on every frame or never).
    for name, gain in (("joint_enc", 10.0), ("joint_pred", 10.0), ("joint_out", 3.0)):
        layer = net.get_layer(name)
        layer.kernel.assign(layer.kernel * gain)
    bias = np.random.default_rng(seed).normal(0.0, 0.5, cfg.vocab_size).astype(np.float32)
    bias[0] = 2.5  # blank
    net.get_layer("joint_out").bias.assign(bias)
    return net
