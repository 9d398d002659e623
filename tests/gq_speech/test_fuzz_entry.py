"""CI-sized fuzzing of the public entry points with mutated files.

The machinery (bases, mutations, workers that detect crashes and hangs, the
long run ``python -m tests.support.fuzz_entry --target T --cases 2000``) is in
``tests/support/fuzz_entry.py``. Here: a few hundred cases over the four targets
(mutated step graphs through ``converters.make_interpreter``, mutated export
directories through ``deploy.StreamingRecognizer``, mutated ``save_qat``
directories through ``gq_tf.load_qat``, mutated recipes and model configs
through ``gq-tf asr run --check``), a batch of step graphs against the
delegate built with AddressSanitizer + UBSan, checks that the harness itself
sees crashes and hangs and tells our errors from accidents, and tests of
what the fuzzing led to: ``run --check`` and the manifest of an export whose
LSTM output is also its state. ``GQ_FUZZ_CASES`` scales the case counts.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest

from tests.support import fuzz_delegate as fz
from tests.support import fuzz_entry as fe

SCALE = float(os.environ.get("GQ_FUZZ_CASES", "300")) / 300
# Cheap targets get more cases: a tflite case takes milliseconds, a qat or
# recipe case that gets as far as building a model about a second.
CASES = {target: max(4, int(n * SCALE)) for target, n in
         {"tflite": 160, "recognizer": 80, "qat": 20, "recipe": 40}.items()}
ASAN_CASES = 60


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_bases")
    fe.build_bases(folder, kinds=("rnnt",), recipes=("tiny",), log=lambda msg: None)
    return folder


def _check(result, count):
    assert result.cases == count, result.status
    found = "\n".join(f"{status} case {n}: {d}\n  {m}" for status, n, d, m in result.findings)
    assert not result.findings, f"{len(result.findings)} finding(s):\n{found}\n{result.summary()}"
    # Both sides are exercised: some mutations still run, most are refused cleanly.
    assert result.status["ok"] > 0, result.summary()
    assert result.status["clean"] > count // 3, result.summary()


@pytest.mark.parametrize("target", fe.TARGETS)
def test_fuzz_entry_point(bases, target):
    _check(fe.run(target, bases, seed=0, cases=CASES[target], jobs=2), CASES[target])


def test_fuzz_tflite_under_asan_and_ubsan(bases):
    if fz.sanitizer_env() is None:
        pytest.fail("gcc's libasan is not available: the sanitizer fuzz run needs it (it comes with gcc)")
    # Cached under build/asan_delegate/: the first run after a change of the
    # C sources builds it (about two CPU minutes), later runs reuse it.
    library = fe.sanitized_delegate()
    _check(fe.run("tflite", bases, seed=1, cases=ASAN_CASES, jobs=2, library=library), ASAN_CASES)


def test_harness_sees_crashes_and_hangs(bases, monkeypatch):
    """A worker killed by a signal and one that stops answering are counted, named and replaced."""
    monkeypatch.setenv("GQ_FUZZ_SELFTEST_CRASH", "3")
    monkeypatch.setenv("GQ_FUZZ_SELFTEST_HANG", "7")
    result = fe.run("tflite", bases, seed=0, cases=10, jobs=1, limit=8)
    assert result.cases == 10 and result.status["crash"] == 1 and result.status["hang"] == 1
    assert [(status, n) for status, n, _, _ in result.findings] == [("crash", 3), ("hang", 7)]
    assert all(d.startswith("rnnt/") for _, _, d, _ in result.findings)  # the case was named


def test_classify_separates_our_errors_from_accidents():
    from gq_speech import deploy, models

    def caught(fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError(f"{fn} did not raise")

    assert fe.classify(caught(models.load_config, "no_such_config"))[0] == "clean"  # a raise of ours
    assert fe.classify(caught(json.loads, "{"))[0] == "clean"  # a JSON syntax error
    kind, text = fe.classify(caught(deploy.manifest_states, {"graphs": {}}, "encoder"))
    assert kind == "unexpected" and text.startswith("KeyError") and "gq_speech/deploy.py" in text
    assert fe.classify(caught(models.load_config, 123))[0] == "unexpected"  # pathlib's TypeError
    assert fe.classify(caught(int, "x"))[0] == "unexpected"  # a ValueError, not raised by us


def test_mutations_are_reproducible(bases):
    for target in fe.TARGETS:
        assert fe.make_case(target, bases, 5, 17) == fe.make_case(target, bases, 5, 17)
        assert fe.make_case(target, bases, 5, 17) != fe.make_case(target, bases, 5, 18)


# ------------------------------------------------------ what the fuzzing led to


def test_run_check_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    from gq_speech import cli

    assert cli.main(["run", "tiny", "--check", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "recipe 'tiny': valid" in out and "rnnt_tiny (rnnt, " in out
    for variant in ("float", "uniform8", "cluster16", "gq_mixed", "gq_auto"):
        assert f"    {variant} " in out
    assert "automatic policy for the size of variant 'gq_mixed' (loss sensitivity, 8 calibration" in out
    assert not (tmp_path / "out").exists()
    plan = cli.check_recipe("full", models=["conformer"], variants=["gq4"])  # both of its seeds
    assert list(plan["models"]) == ["conformer"]
    assert [v[0] for v in plan["models"]["conformer"]["variants"]] == ["gq4", "gq4_s1"]


@pytest.mark.parametrize("edit, message", [
    (lambda r, c: r["variants"]["gq_mixed"].update(policy={".*": 9}), r"Expected `policy\['\.\*'\]` in 1\.\.8"),
    (lambda r, c: r["variants"]["gq_mixed"].update(policy={"joint_out": {"bias": 4}}), "weight names"),
    (lambda r, c: r["variants"]["uniform8"].update(kind="qat8"), "expected kind float, qat or cluster"),
    (lambda r, c: r["variants"]["cluster16"].update(clusters="16"), "expected clusters to be an int >= 2"),
    (lambda r, c: r["float"].update(epochs="2"), "expected epochs to be an int. Received epochs='2'"),
    (lambda r, c: r["finetune"].update(lr=float("nan")), "expected lr to be a number"),
    (lambda r, c: r["float"].update(epoch=2), "unknown"),
    (lambda r, c: r.update(annealing={"tau": 1}), "expected 'annealing' keys"),
    (lambda r, c: r["eval"].update(bench_runs=0), "expected eval.bench_runs to be an int >= 1"),
    (lambda r, c: r["corpus"].update(preset="huge"), "Expected a preset in"),
    (lambda r, c: c["encoder"].update(lstm_layers=0), "encoder.lstm_layers"),
    (lambda r, c: r["variants"]["gq_auto"]["auto"].update(budget_like="nope"), "budget_like to name another"),
    (lambda r, c: r["variants"]["gq_auto"].update(policy={".*": 4}), "either 'policy' or 'auto'. Received both"),
    (lambda r, c: r["variants"]["gq_auto"].pop("auto"), r"a 'policy' \(or 'auto'\) for kind 'qat'"),
])
def test_run_check_names_what_is_wrong(tmp_path, capsys, edit, message):
    from gq_speech import cli, models

    recipe, _ = models.load_named_json("tiny", fe.ROOT / "gq_speech/recipes", "recipe")
    config, _ = models.load_named_json("rnnt_tiny", models.CONFIG_DIR, "model config")
    edit(recipe, config)
    (tmp_path / "rnnt_tiny.json").write_text(json.dumps(config))
    recipe["models"] = [str(tmp_path / "rnnt_tiny.json")]
    for spec in recipe["variants"].values():
        spec.pop("models", None)
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    assert cli.main(["run", str(tmp_path / "recipe.json"), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_run_without_out_or_check_is_a_usage_error(capsys):
    from gq_speech import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["run", "tiny"])
    assert info.value.code == 2 and "--out" in capsys.readouterr().err


def test_float_export_lists_an_output_shared_with_a_state_under_both_names(bases, tmp_path):
    """A one-layer float LSTM's output is its h state: one tensor, two signature names, two rows."""
    from gq_speech import deploy

    stream = bases / "rnnt" / "float_stream"
    manifest = deploy.load_manifest(stream)
    outputs = manifest["graphs"]["prediction"]["outputs"]
    assert sorted(r["name"] for r in outputs) == ["pred_lstm_0_c", "pred_lstm_0_h", "pred_out"]
    shared = {r["name"]: r["tensor"] for r in outputs}
    assert shared["pred_lstm_0_h"] == shared["pred_out"]
    # A manifest written before the fix (the shared tensor listed twice as
    # "pred_out", no "pred_lstm_0_h" row) still loads and runs.
    old = tmp_path / "old"
    shutil.copytree(stream, old)
    pred_out = next(r for r in outputs if r["name"] == "pred_out")
    manifest["graphs"]["prediction"]["outputs"] = [pred_out, pred_out, next(
        r for r in outputs if r["name"] == "pred_lstm_0_c")]
    (old / deploy.MANIFEST).write_text(json.dumps(manifest))
    features = np.load(bases / "features.npy")
    tokens = []
    for folder in (stream, old):
        rec = deploy.StreamingRecognizer(folder, kernel="reference")
        rec.push(features)
        tokens.append(rec.finish())
    assert tokens[0] == tokens[1] and tokens[0]


def test_recognizer_refuses_a_graph_that_disagrees_with_the_manifest(bases, tmp_path):
    from gq_speech import deploy

    bad = tmp_path / "bad"
    shutil.copytree(bases / "rnnt" / "stream", bad)
    manifest = json.loads((bad / deploy.MANIFEST).read_text())
    rows = manifest["graphs"]["encoder"]["inputs"]
    next(r for r in rows if r["name"] == "features")["shape"][1] += 1
    (bad / deploy.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"Expected the inputs of .*encoder\.tflite to be those streaming\.json "
                                         r"lists\. Received for \['features'\]"):
        deploy.StreamingRecognizer(bad, kernel="reference")
    rec = deploy.StreamingRecognizer(bases / "rnnt" / "stream", kernel="reference")
    with pytest.raises(ValueError, match=r"Expected log-mel frames \[k, n_mels=16\]\. Received an array of shape "
                                         r"\[3, 17\]"):
        rec.push(np.zeros((3, 17), np.float32))
