"""The project's single Keras import point.

tfmot 0.8 works only with Keras 2 (``tf_keras``). TensorFlow picks its Keras
flavour when it is first imported, so ``TF_USE_LEGACY_KERAS=1`` must be in the
environment before that. This module sets it (the one documented import-time
side effect of ``gq_tf``) and exposes ``tf_keras`` as ``gq_tf.keras``.
"""

import os
import sys

# If TensorFlow was imported before us, ``tf.keras`` may already be Keras 3;
# gq_tf never uses ``tf.keras``, only ``tf_keras``, so that case still works.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf", "check_keras_model"]


def check_keras_model(model, what="model"):
    """Checks that ``model`` is a built tf_keras Sequential or Functional model.

    Args:
      model: the object to check.
      what: how to call it in error messages.

    Raises:
      TypeError: a Keras 3 model, or not a Keras model at all.
      ValueError: a subclassed model, or a model that is not built yet.
    """
    if not isinstance(model, keras.Model):
        module = type(model).__module__ or ""
        if module.split(".")[0] == "keras" or _is_keras3_model(model):
            raise TypeError(
                f"Expected a tf_keras model for `{what}`. Received a Keras 3 "
                f"model ({type(model).__module__}.{type(model).__name__}). "
                "tfmot only supports Keras 2: build the model with "
                "`from gq_tf import keras` (tf_keras) instead of `import keras`."
            )
        raise TypeError(
            f"Expected a tf_keras Sequential or Functional model for `{what}`. "
            f"Received an object of type {type(model).__name__}."
        )
    if not isinstance(model, keras.Sequential) and not model._is_graph_network:
        raise ValueError(
            f"Expected a Sequential or Functional model for `{what}`. Received "
            f"a subclassed model ({type(model).__name__}); tfmot cannot clone "
            "subclassed models. Rebuild it with the Functional API "
            "(keras.Input(...) -> layers -> keras.Model(inputs, outputs))."
        )
    if not model.built:
        raise ValueError(
            f"Expected a built model for `{what}`. Received model "
            f"'{model.name}', which is not built yet: call "
            "`model.build(input_shape)` or give its first layer an input shape."
        )


def _is_keras3_model(obj):
    keras3 = sys.modules.get("keras")
    if keras3 is None:
        return False
    model_cls = getattr(keras3, "Model", None)
    return isinstance(model_cls, type) and isinstance(obj, model_cls)
