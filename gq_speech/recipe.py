"""Recipes: what ``gq-tf asr run`` trains and measures, as JSON.

A recipe names the corpus, the model configs, the float training and
fine-tune settings (with per-model overrides) and the variants (float,
uniform QAT, clustering, GQ policies); the built-in ones are in
``recipes/``. This module reads and validates them and answers what a
model's stage or variant uses; :mod:`gq_speech.experiment` runs them.
"""

from __future__ import annotations

from pathlib import Path

import gq_tf

__all__ = ["RECIPE_DIR", "finetune_settings", "load_recipe", "parse_policy", "stage_settings", "variants_of"]

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


def load_recipe(name_or_path) -> dict:
    """A recipe by name (``recipes/<name>.json``) or path.

    Raises:
      FileNotFoundError: neither exists (the message lists the known names).
    """
    from gq_speech.models import load_named_json

    recipe, path = load_named_json(name_or_path, RECIPE_DIR, "recipe")
    for key in ("corpus", "models", "float", "finetune", "variants"):
        if key not in recipe:
            raise ValueError(f"Recipe {path}: expected key {key!r}. Received keys {sorted(recipe)}.")
    if not isinstance(recipe["models"], list) or not all(isinstance(m, str) for m in recipe["models"]):
        raise ValueError(f"Recipe {path}: expected 'models' to be a list of model config names. "
                         f"Received {recipe['models']!r}.")
    for key in ("corpus", "float", "finetune", "variants"):
        if not isinstance(recipe[key], dict):
            raise ValueError(f"Recipe {path}: expected {key!r} to be a JSON object. Received {recipe[key]!r}.")
    for name, spec in recipe["variants"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"Recipe {path}, variant {name!r}: expected a JSON object (kind, policy, ...). "
                             f"Received {spec!r}.")
        only = spec.get("models")
        if only is not None and (not isinstance(only, list) or not all(isinstance(m, str) for m in only)
                                 or set(only) - set(recipe["models"])):
            raise ValueError(f"Recipe {path}, variant {name!r}: expected 'models' to be a list of the recipe's "
                             f"models {sorted(recipe['models'])}. Received {only!r}.")
        if not isinstance(spec.get("finetune", {}), dict):
            raise ValueError(f"Recipe {path}, variant {name!r}: expected 'finetune' to be a dict of training "
                             f"settings. Received {spec['finetune']!r}.")
    return recipe


def _spec(value, where):
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: expected bits (int), 'uN' or a dict. Received {value!r}.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value[:1] == "u" and value[1:].isdigit():
        return gq_tf.Uniform(int(value[1:]))
    if isinstance(value, dict):
        return {k: _spec(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where}: expected bits (int), 'uN' or a dict. Received {value!r}.")


def parse_policy(policy: dict) -> dict:
    """A recipe policy (JSON) as a ``gq_tf.quantize_model`` policy."""
    return {pattern: _spec(v, f"policy[{pattern!r}]") for pattern, v in policy.items()}


def stage_settings(recipe: dict, stage: str, model_name: str) -> dict:
    """A recipe's ``float`` or ``finetune`` settings for one model: the
    stage's keys, updated by its ``per_model[model_name]`` entry if any (e.g.
    ``"per_model": {"rnnt": {"ctc_weight": 0.3}}``)."""
    settings = dict(recipe[stage])
    per_model = settings.pop("per_model", {})
    return {**settings, **per_model.get(model_name, {})}


def variants_of(recipe: dict, model_name: str, only=None) -> list[tuple[str, dict]]:
    """The recipe's variants that apply to ``model_name`` (a variant with
    ``"models": [...]`` is run for those models only), in recipe order,
    restricted to the names in ``only`` if given."""
    return [(name, spec) for name, spec in recipe["variants"].items()
            if (not only or name in only) and model_name in spec.get("models", [model_name])]


def finetune_settings(recipe: dict, spec: dict, model_name: str) -> dict:
    """A variant's fine-tune settings: the recipe's (see :func:`stage_settings`),
    updated by the variant's own ``"finetune"`` entry if any (e.g. a longer
    fine-tune, ``{"epoch_batches": null}``: whole epochs)."""
    return {**stage_settings(recipe, "finetune", model_name), **spec.get("finetune", {})}
