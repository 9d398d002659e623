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


def toy_split(n=6, n_mels=16, seed=0, words=(2,), hold=8):
    """Utterances whose features encode their labels: a learnable toy task.

    Each label gets a fixed random feature pattern held for ``hold`` frames;
    a model that learns the mapping transcribes them exactly. Utterance ``i``
    has ``words[i % len(words)]`` words.
    """
    from gq_speech.text import Tokenizer
    from gq_speech.train import Split

    rng = np.random.default_rng(seed)
    tok = Tokenizer()
    vocabulary = ["on", "off", "go", "stop", "up", "no"]
    patterns = rng.normal(size=(tok.vocab_size, n_mels)).astype(np.float32)
    texts, feats, labels = [], [], []
    for i in range(n):
        text = " ".join(vocabulary[(i + k) % len(vocabulary)] for k in range(words[i % len(words)]))
        ids = tok.encode(text)
        f = np.concatenate([np.repeat(patterns[t][None], hold, axis=0) for t in ids])
        f = f + 0.05 * rng.normal(size=f.shape).astype(np.float32)
        texts.append(text)
        feats.append(f.astype(np.float16))
        labels.append(np.asarray(ids, np.int32))
    return Split("toy", [f"u{i}" for i in range(n)], texts, feats, labels)
