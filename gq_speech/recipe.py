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
from gq_tf.allocation import DEFAULT_CANDIDATES

__all__ = ["RECIPE_DIR", "auto_settings", "finetune_settings", "load_recipe", "multicondition_settings",
           "parse_policy", "stage_settings", "strategy_settings", "variants_of"]

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
    for name, spec in recipe["variants"].items():
        for model_name in spec.get("models", recipe["models"]):
            _seeded(recipe, name, spec, model_name, where=f"Recipe {path}")
    strategy_settings(recipe, where=f"Recipe {path}")
    multicondition_settings(recipe, where=f"Recipe {path}")
    return recipe


MULTICONDITION_DEFAULTS = {"share": 0.5, "seed": 1000, "rooms": 32}


def multicondition_settings(recipe: dict, where: str = "Recipe", model_name: str | None = None) -> dict | None:
    """The recipe's ``"multicondition"`` with defaults (for ``model_name``: with its
    ``per_model`` share, if any), or None when it has none.

    ``share``: the fraction of training utterances replaced by their far-field
    copy (simulated rooms and noise); ``seed``: the rooms, noise and which
    utterances (the dev copy uses ``seed + 1``); ``rooms``: the size of the
    room bank. The seeds must differ from the far-field test set's, so the
    training rooms are not the test rooms. ``per_model``: ``{model: {"share":
    s}}``, another share for that model (the models share one far-field copy
    of the training set, so only the share may differ).

    Raises:
      ValueError: unknown keys, a share outside (0, 1], a bad room count, a
        seed that would draw the test set's rooms, or a ``per_model`` entry for
        a model the recipe does not have or with other keys than ``share``.
    """
    mc = recipe.get("multicondition")
    if mc is None:
        return None
    if not isinstance(mc, dict):
        raise ValueError(f"{where}: expected 'multicondition' to be an object with keys "
                         f"{sorted(MULTICONDITION_DEFAULTS)}. Received {mc!r}.")
    mc = dict(mc)
    per_model = mc.pop("per_model", {})
    unknown = sorted(set(mc) - set(MULTICONDITION_DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: expected 'multicondition' keys {sorted(MULTICONDITION_DEFAULTS)} (and "
                         f"'per_model'). Received unknown {unknown}.")
    models = recipe.get("models")
    if not isinstance(per_model, dict) or any(
            not isinstance(v, dict) or set(v) != {"share"} or (models is not None and m not in models)
            for m, v in per_model.items()):
        raise ValueError(f"{where}: expected multicondition 'per_model' to map models of the recipe "
                         f"({models}) to {{\"share\": s}}. Received {per_model!r}.")
    for m, v in per_model.items():
        _check_multicondition({**MULTICONDITION_DEFAULTS, **mc, **v}, recipe, f"{where} (per_model {m!r})")
    out = {**MULTICONDITION_DEFAULTS, **mc, **per_model.get(model_name, {})}
    return _check_multicondition(out, recipe, where)


def _check_multicondition(out: dict, recipe: dict, where: str) -> dict:
    """``out`` (multicondition settings with every key) if valid, else ValueError naming the key."""
    if isinstance(out["share"], bool) or not isinstance(out["share"], (int, float)) or not 0 < out["share"] <= 1:
        raise ValueError(f"{where}: expected multicondition share in (0, 1]. Received {out['share']!r}.")
    for key in ("seed", "rooms"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < (1 if key == "rooms" else 0):
            raise ValueError(f"{where}: expected multicondition {key} to be an integer"
                             f"{' >= 1' if key == 'rooms' else ' >= 0'}. Received {out[key]!r}.")
    test_seed = (recipe.get("farfield") or {}).get("seed", 0)
    if test_seed in (out["seed"], out["seed"] + 1):
        raise ValueError(f"{where}: expected multicondition seeds ({out['seed']}, {out['seed'] + 1} for dev) to "
                         f"differ from the far-field test seed {test_seed}: the training rooms would be the "
                         "test rooms.")
    return out


STRATEGY_KEYS = {"name": str, "devices": int, "timeout_s": (int, float)}


def strategy_settings(recipe: dict, where: str = "Recipe") -> dict:
    """The recipe's ``"strategy"`` (``gq_speech.distribute``) as a dict of
    ``name``, ``devices``, ``timeout_s`` (those given): a name alone
    (``"mirrored"``) or an object. The name is checked by ``make_cluster``.

    Raises:
      ValueError: another form, an unknown key or a value of the wrong type.
    """
    conf = recipe.get("strategy") or {}
    conf = {"name": conf} if isinstance(conf, str) else conf
    if not isinstance(conf, dict):
        raise ValueError(f"{where}: expected 'strategy' to be a strategy name or an object with keys "
                         f"{sorted(STRATEGY_KEYS)}. Received {recipe.get('strategy')!r}.")
    for key, value in conf.items():
        if key not in STRATEGY_KEYS or isinstance(value, bool) or not isinstance(value, STRATEGY_KEYS[key]):
            raise ValueError(f"{where}: expected 'strategy' keys name (text), devices (integer), timeout_s "
                             f"(seconds). Received {key!r}: {value!r}.")
    return dict(conf)


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
    restricted to the names in ``only`` if given: a recipe variant's name
    selects all its seeds, ``=NAME`` exactly the run named (``=gq4`` is gq4's
    first seed alone).

    A variant with ``"seeds": [a, b, ...]`` is run once per seed: the seed of
    its stage (the float stage's for a float variant, else the fine-tune's)
    keeps the variant's name, every other seed ``s`` is the variant
    ``<name>_s<s>`` (a fine-tune with that seed; for a float variant, its own
    float model trained with that seed). Each gets ``"group"`` (the recipe's
    name) and ``"seed"``.
    """
    only = list(only or [])
    exact = {o[1:] for o in only if o.startswith("=")}
    named = {o for o in only if not o.startswith("=")}
    out = []
    for name, spec in recipe["variants"].items():
        if model_name not in spec.get("models", [model_name]):
            continue
        for vname, vspec in _seeded(recipe, name, spec, model_name):
            if not only or vname in exact or vname in named or name in named:
                out.append((vname, vspec))
    return out


def _seeded(recipe: dict, name: str, spec: dict, model_name: str, where: str = "Recipe") -> list[tuple[str, dict]]:
    seeds = spec.get("seeds")
    if seeds is None:
        return [(name, spec)]
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)):
        raise ValueError(f"{where}, variant {name!r}: expected 'seeds' to be a list of distinct integers >= 0. "
                         f"Received {seeds!r}.")
    is_float = spec.get("kind", "qat") == "float"
    base = (stage_settings(recipe, "float", model_name) if is_float
            else finetune_settings(recipe, spec, model_name)).get("seed", 0)
    out = []
    for seed in seeds:
        vspec = {**spec, "group": name, "seed": seed}
        if seed == base:
            out.append((name, vspec))
        elif is_float:
            out.append((f"{name}_s{seed}", {**vspec, "float_seed": seed}))
        else:
            out.append((f"{name}_s{seed}", {**vspec, "finetune": {**spec.get("finetune", {}), "seed": seed}}))
    return out


def finetune_settings(recipe: dict, spec: dict, model_name: str) -> dict:
    """A variant's fine-tune settings: the recipe's (see :func:`stage_settings`),
    updated by the variant's own ``"finetune"`` entry if any (e.g. a longer
    fine-tune, ``{"epoch_batches": null}``: whole epochs)."""
    return {**stage_settings(recipe, "finetune", model_name), **spec.get("finetune", {})}


# What a variant's ``"auto"`` entry may hold (gq_tf.allocate_bits' settings):
# the budget (``budget_kb``; ``budget_like``: the deployed size of another
# variant's hand-written GQ policy; or ``budget_bits``: at most this many bits
# a weight on average), the constraints, the estimator and the calibration set
# (utterances drawn from the training split).
BUDGETS = ("budget_kb", "budget_like", "budget_bits")
AUTO_DEFAULTS = {"min_bits": {}, "max_bits": {}, "fixed": {}, "keep_float": [],
                 "candidates": list(DEFAULT_CANDIDATES), "method": "loss", "calibration": 256, "batch_size": 16}


def _bits_map(value, where):
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}: expected an object of pattern: bits. Received {value!r}.")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 8:
            raise ValueError(f"{where}[{k!r}]: expected bits in 1..8. Received {v!r}.")
    return value


def auto_settings(recipe: dict, name: str) -> dict:
    """Variant ``name``'s ``"auto"`` entry, checked, with the defaults filled in.

    Example entry: ``{"budget_like": "gq_mixed", "min_bits": {"joint_out": 8}}``.

    Raises:
      ValueError: unknown keys, not exactly one budget, a ``budget_like``
        that names no variant with an all-GQ policy, bad values.
    """
    where = f"Recipe {recipe.get('name')!r}, variant {name!r}, auto"
    auto = recipe["variants"][name].get("auto")
    if not isinstance(auto, dict):
        raise ValueError(f"{where}: expected an object (budget_kb or budget_like, constraints). Received {auto!r}.")
    unknown = sorted(set(auto) - set(AUTO_DEFAULTS) - set(BUDGETS))
    if unknown:
        raise ValueError(f"{where}: expected keys among {sorted(set(AUTO_DEFAULTS) | set(BUDGETS))}."
                         f" Received {unknown}.")
    if sum(b in auto for b in BUDGETS) != 1:
        raise ValueError(f"{where}: expected exactly one of {', '.join(BUDGETS)}. Received keys {sorted(auto)}.")
    if "budget_kb" in auto:
        kb = auto["budget_kb"]
        if isinstance(kb, bool) or not isinstance(kb, (int, float)) or not kb > 0:
            raise ValueError(f"{where}: expected budget_kb > 0. Received {kb!r}.")
    elif "budget_bits" in auto:
        bits = auto["budget_bits"]
        if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not 1 <= bits <= 8:
            raise ValueError(f"{where}: expected budget_bits (the average bits a weight) in [1, 8]. "
                             f"Received {bits!r}.")
    else:
        like = auto["budget_like"]
        other = recipe["variants"].get(like) if isinstance(like, str) else None
        policy = other.get("policy") if isinstance(other, dict) else None
        if not isinstance(policy, dict) or like == name:
            raise ValueError(f"{where}: expected budget_like to name another variant with a 'policy'. "
                             f"Received {like!r}.")
        parsed = parse_policy(policy)

        def gq_only(spec):
            return isinstance(spec, int) or (isinstance(spec, dict) and all(map(gq_only, spec.values())))

        if not all(gq_only(v) for v in parsed.values()):
            raise ValueError(f"{where}: expected budget_like to name a GQ policy (bits only; uniform 'uN' kernels "
                             f"have no packed size). Received {like!r}, whose policy is {policy}.")
    out = {**AUTO_DEFAULTS, **auto}
    for key in ("min_bits", "max_bits", "fixed"):
        _bits_map(out[key], f"{where}.{key}")
    if not isinstance(out["keep_float"], list) or not all(isinstance(p, str) for p in out["keep_float"]):
        raise ValueError(f"{where}.keep_float: expected a list of patterns. Received {out['keep_float']!r}.")
    cands = out["candidates"]
    if not isinstance(cands, list) or not cands or not all(
            isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 8 for b in cands):
        raise ValueError(f"{where}.candidates: expected a non-empty list of bits in 1..8. Received {cands!r}.")
    if out["method"] not in ("loss", "fisher"):
        raise ValueError(f"{where}.method: expected 'loss' or 'fisher'. Received {out['method']!r}.")
    for key in ("calibration", "batch_size"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}.{key}: expected an int >= 1. Received {v!r}.")
    return out
