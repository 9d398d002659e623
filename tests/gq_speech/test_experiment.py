"""Training recipes and the experiment runner: resume, decoding a trained model, the whole pipeline."""

import json

import numpy as np
import pytest

import gq_tf
from gq_speech import cli, experiment, models
from gq_speech import recipe as recipe_mod
from gq_speech.cli import check_recipe
from gq_speech.text import Tokenizer
from gq_speech.train import TrainConfig, annealing, batches, fit
from gq_tf._keras import keras, tf
from tests.support.asrmodels import toy_split


def _toy_split(n=6, n_mels=16, seed=0):
    """Utterances of two words whose features encode their labels (``asrmodels.toy_split``)."""
    return toy_split(n, n_mels=n_mels, seed=seed)


def test_parse_policy():
    p = recipe_mod.parse_policy({"encoder_lstm_.*": {"kernel": 4, "recurrent_kernel": "u2"}, ".*": 5})
    assert p["encoder_lstm_.*"]["kernel"] == 4
    assert isinstance(p["encoder_lstm_.*"]["recurrent_kernel"], gq_tf.Uniform)
    assert p["encoder_lstm_.*"]["recurrent_kernel"].bits == 2 and p[".*"] == 5
    for bad in (True, None, "x8", 4.5):
        with pytest.raises(ValueError, match="expected bits"):
            recipe_mod.parse_policy({".*": bad})


def test_recipes_load_and_name_real_configs():
    for name in ("demo", "full", "tiny", "allocation"):
        recipe = recipe_mod.load_recipe(name)
        for model in recipe["models"]:
            models.load_config(model)
            for stage in ("float", "finetune"):
                TrainConfig.from_dict(recipe_mod.stage_settings(recipe, stage, model))
        for name, spec in recipe["variants"].items():
            if spec.get("kind", "qat") == "qat":
                if "auto" in spec:
                    recipe_mod.auto_settings(recipe, name)
                else:
                    recipe_mod.parse_policy(spec["policy"])
    with pytest.raises(FileNotFoundError, match="one of"):
        recipe_mod.load_recipe("nope")


@pytest.mark.parametrize("auto, match", [
    ({"budget_kb": 10, "budget_like": "gq_mixed"}, "exactly one of budget_kb, budget_like, budget_bits"),
    ({}, "exactly one of budget_kb, budget_like, budget_bits"),
    ({"budget_bits": 0.5}, r"budget_bits \(the average bits a weight\) in \[1, 8\]. Received 0.5"),
    ({"budget_kb": -1}, "budget_kb > 0. Received -1"),
    ({"budget_like": "nope"}, "another variant with a 'policy'. Received 'nope'"),
    ({"budget_kb": 5, "min_bits": {"joint_out": 9}}, r"min_bits\['joint_out'\]: expected bits in 1..8"),
    ({"budget_kb": 5, "keep_float": "embed"}, "keep_float: expected a list of patterns"),
    ({"budget_kb": 5, "method": "hessian"}, "method: expected 'loss' or 'fisher'"),
    ({"budget_kb": 5, "calibration": 0}, "calibration: expected an int >= 1"),
    ({"budget_kb": 5, "candidates": [0, 4]}, "candidates: expected a non-empty list of bits in 1..8"),
    ({"budget_kb": 5, "budget": 3}, r"expected keys among .*Received \['budget'\]"),
])
def test_auto_settings_are_checked(auto, match):
    recipe = recipe_mod.load_recipe("tiny")
    recipe["variants"]["gq_auto"]["auto"] = auto
    with pytest.raises(ValueError, match=match):
        recipe_mod.auto_settings(recipe, "gq_auto")


def test_a_uniform_policy_is_no_budget_for_auto():
    recipe = recipe_mod.load_recipe("tiny")
    recipe["variants"]["gq_auto"]["auto"] = {"budget_like": "uniform8"}
    with pytest.raises(ValueError, match="GQ policy .*uniform 'uN' kernels have no packed size"):
        recipe_mod.auto_settings(recipe, "gq_auto")
    recipe["variants"]["gq_auto"]["auto"] = {"budget_like": "gq_mixed"}
    assert recipe_mod.auto_settings(recipe, "gq_auto")["calibration"] == 256


def test_variants_can_name_their_models_and_fine_tune_longer(tmp_path):
    recipe = recipe_mod.load_recipe("full")
    assert [n for n, _ in recipe_mod.variants_of(recipe, "conformer")] == [
        "float", "float_s1", "uniform8", "uniform4", "uniform4_s1", "cluster16", "gq8", "gq5", "gq4", "gq4_s1",
        "gq_mixed", "gq_mixed_s1", "gq2", "gq_auto", "gq_auto_s1", "gq_auto_low"]
    rnnt = dict(recipe_mod.variants_of(recipe, "rnnt"))
    assert {"gq_mixed_long", "uniform4_long", "gq_mixed_top1", "gq_mixed_in1"} <= set(rnnt)
    picked = recipe_mod.variants_of(recipe, "rnnt", ["gq4_s1", "gq_mixed_long"])
    assert [n for n, _ in picked] == ["gq4_s1", "gq_mixed_long"]
    base = recipe_mod.finetune_settings(recipe, rnnt["gq_mixed"], "rnnt")
    longer = recipe_mod.finetune_settings(recipe, rnnt["gq_mixed_long"], "rnnt")
    assert base["epoch_batches"] == 500 and longer == {**base, "epoch_batches": None}  # a whole epoch
    for bad, match in (({"models": ["nope"]}, "expected 'models'"), ({"models": "rnnt"}, "expected 'models'"),
                       ({"models": [[1, 2]]}, "expected 'models'"),  # was a TypeError (found by fuzzing)
                       ({"finetune": 3}, "expected 'finetune'")):
        broken = {**recipe, "variants": {"v": {"kind": "float", **bad}}}
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=match):
            recipe_mod.load_recipe(path)


def test_seeds_run_a_variant_once_per_seed(tmp_path):
    recipe = recipe_mod.load_recipe("tiny")
    recipe["variants"]["float"]["seeds"] = [0, 3]
    recipe["variants"]["gq_mixed"]["seeds"] = [1, 0]
    recipe["variants"]["gq_auto"]["seeds"] = [0, 2]
    got = recipe_mod.variants_of(recipe, "rnnt_tiny")
    names = [n for n, _ in got]
    assert names == ["float", "float_s3", "uniform8", "cluster16", "gq_mixed_s1", "gq_mixed", "gq_auto", "gq_auto_s2"]
    path = tmp_path / "seeded.json"
    path.write_text(json.dumps(recipe))
    plan = check_recipe(str(path))  # a seeded automatic variant finds its group's settings
    assert "gq_auto_s2" in [v[0] for v in plan["models"]["rnnt_tiny"]["variants"]]
    by = dict(got)
    assert by["float_s3"]["float_seed"] == 3 and "float_seed" not in by["float"]
    assert recipe_mod.finetune_settings(recipe, by["gq_mixed_s1"], "rnnt_tiny")["seed"] == 1
    assert "seed" not in by["gq_mixed"].get("finetune", {})  # the stage's own seed keeps the name and the key
    assert {by[n]["group"] for n in ("gq_mixed", "gq_mixed_s1")} == {"gq_mixed"}
    assert [n for n, _ in recipe_mod.variants_of(recipe, "rnnt_tiny", ["gq_mixed"])] == ["gq_mixed_s1", "gq_mixed"]
    # =NAME is that run alone (what a worker process is given), not its other seeds.
    assert [n for n, _ in recipe_mod.variants_of(recipe, "rnnt_tiny", ["=float", "gq_auto_s2"])] == ["float",
                                                                                                    "gq_auto_s2"]
    for bad in ([], [1, 1], [-1], "0,1", [True]):
        broken = {**recipe, "variants": {"v": {"kind": "float", "seeds": bad}}}
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="expected 'seeds'"):
            recipe_mod.load_recipe(path)


def test_batches_pad_to_the_reduction_and_keep_everything():
    split = _toy_split(5)
    seen = []
    for x, x_len, y, y_len in batches(split, 2, shuffle=True, seed=3, frame_multiple=4):
        assert x.shape[1] % 4 == 0 and x.shape[1] >= x_len.max()
        for j in range(len(x)):
            seen.append(tuple(y[j, :y_len[j]]))
    assert sorted(seen) == sorted(tuple(lab) for lab in split.labels)


def test_fit_resumes_and_annealing_reaches_nested_quantizers(tmp_path):
    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(4)
    keras.utils.set_random_seed(0)
    net = gq_tf.quantize_model(models.build_training_model(cfg), {".*": 4})
    anneal = annealing(4)
    first = fit(net, cfg, split, None, TrainConfig(epochs=1, batch_size=2, warmup_steps=1), tmp_path,
                name="t", callbacks=[anneal], log=lambda m: None)
    assert first["resumed_from"] == 0
    from gq_tf.codebooks import quantized_weights

    # The callback reached the quantizers inside the trainer: their schedule step moved.
    steps = [int(np.ravel(qw.qvars["state"].numpy())[0]) for qw in quantized_weights(net)]
    assert steps and min(steps) > 0, steps
    # A fresh network in the same directory continues after epoch 1.
    net2 = gq_tf.quantize_model(models.build_training_model(cfg), {".*": 4})
    second = fit(net2, cfg, split, None, TrainConfig(epochs=2, batch_size=2, warmup_steps=1), tmp_path,
                 name="t", callbacks=[annealing(4)], log=lambda m: None)
    assert second["resumed_from"] == 1
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]


@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory):
    """rnnt_tiny trained on the toy task (600 steps, about 20 s).

    lr 5e-3 for 120 epochs reaches CER 0.0 for seeds 1 and 3 where lr 1e-2 for 80
    epochs ended between 0.03 and 0.19 from run to run (threaded float sums are not
    deterministic), too close to the 0.15 bound below.
    """
    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(30)
    keras.utils.set_random_seed(1)
    net = models.build_training_model(cfg)
    fit(net, cfg, split, None, TrainConfig(epochs=120, batch_size=6, lr=5e-3, warmup_steps=5),
        tmp_path_factory.mktemp("toy"), name="toy", log=lambda m: None)
    return cfg, split, net


def test_greedy_decoding_of_a_trained_model(trained_toy):
    from gq_speech import metrics

    cfg, split, net = trained_toy
    hyps = experiment.KerasDecoder(net, cfg).transcribe(split, Tokenizer(), batch_size=4)
    # Untrained, CER is about 1. The toy task is learnable exactly except that
    # a doubled letter ("off") looks like one long letter; 0.15 leaves room
    # for those and for the last letter before the utterance end.
    assert metrics.cer(split.texts, hyps) < 0.15, hyps


def test_deployed_streaming_model_decodes_like_keras(trained_toy, tmp_path):
    from gq_speech import deploy

    cfg, split, net = trained_toy
    deploy.export_streaming(net, cfg, tmp_path / "stream", kind="float")
    keras_hyps = experiment.KerasDecoder(net, cfg).transcribe(split, Tokenizer(), batch_size=2)
    tflite_hyps, timing = experiment.tflite_transcribe(tmp_path / "stream", split, Tokenizer(), limit=len(split))
    assert tflite_hyps == keras_hyps
    assert timing["encoder_step_ms_p50"] > 0


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path):
    """Every stage for real on the tiny corpus: TTS corpus, far field, features, float training,
    uniform/cluster/GQ fine-tunes, streaming export, WER on Keras and .tflite, host latency, reports;
    then a second call resumes from disk and does nothing again."""
    rows = experiment.run_recipe("tiny", tmp_path, log=lambda m: None)
    assert [r["variant"] for r in rows] == ["float", "uniform8", "cluster16", "gq_mixed", "gq_auto"]
    by = {r["variant"]: r for r in rows}
    for r in rows:
        for key in ("wer_keras_test", "wer_tflite_test", "wer_keras_test_far", "wer_tflite_test_far"):
            assert 0 <= r[key] <= 5
        assert r["encoder_p50_ms"] > 0 and r["prediction_p50_ms"] > 0
    assert by["gq_mixed"]["packed_bytes"] < by["uniform8"]["packed_bytes"] < by["float"]["packed_bytes"]
    assert by["gq_mixed"]["bits"] < 5
    # The automatic policy at the hand policy's deployed size: within the budget, joint_out kept at 8 bits.
    auto = json.loads((tmp_path / "rnnt_tiny" / "gq_auto" / "allocation.json").read_text())
    assert auto["total_bytes"] <= auto["budget_bytes"] and auto["policy"]["joint_out"] == 8
    assert by["gq_auto"]["file_bytes"] <= 1.01 * by["gq_mixed"]["file_bytes"]
    assert len(list((tmp_path / "rnnt_tiny" / "sensitivity").glob("*.json"))) == 1
    from gq_speech import allocation_study

    ranking = allocation_study.speech(tmp_path, "tiny", "rnnt_tiny")  # the estimators' ranking on this run
    assert sorted(r["variant"] for r in ranking["rows"]) == ["gq_auto", "gq_mixed"]
    assert set(ranking["spearman"]) == {"loss", "fisher"}
    assert json.loads((tmp_path / "allocation_ranking.json").read_text())["spearman"] == ranking["spearman"]
    md = (tmp_path / "results.md").read_text()
    assert "gq-tf asr run tiny" in md and "| gq_mixed |" in md
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    stamps = {p: p.stat().st_mtime for p in tmp_path.glob("rnnt_tiny/*/result.json")}
    again = experiment.run_recipe("tiny", tmp_path, log=lambda m: None)
    assert [r["wer_keras_test"] for r in again] == [r["wer_keras_test"] for r in rows]
    assert {p: p.stat().st_mtime for p in stamps} == stamps


def test_dev_only_selects_without_the_test_sets_and_seeds_are_summarized(tmp_path):
    """``dev_only`` trains and scores on the dev sets (clean and far) and leaves the test sets alone; the
    full run then reuses every trained stage and reports the seeds, the dev sets and how rows were chosen."""
    recipe = recipe_mod.load_recipe("tiny")
    recipe.update(name="tiny_seeds", variants={
        "float": {"kind": "float", "seeds": [0, 3], "chosen": "the reference"},
        "gq_mixed": {**recipe["variants"]["gq_mixed"], "seeds": [0, 1], "chosen": "by hand, before any run"}})
    recipe["eval"] = {**recipe["eval"], "stream_utterances": 2}
    path = tmp_path / "tiny_seeds.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "run"
    rows = experiment.run_recipe(path, out, dev_only=True, log=lambda m: None)
    assert [r["variant"] for r in rows] == ["float", "float_s3", "gq_mixed", "gq_mixed_s1"]
    for r in rows:
        assert 0 <= r["wer_keras_dev"] <= 5 and 0 <= r["wer_keras_dev_far"] <= 5 and "wer_keras_test" not in r
    assert not list(out.glob("rnnt_tiny/*/hyps_test*")) and not list(out.glob("rnnt_tiny/*/stream"))
    assert not (out / "results.md").exists()
    assert (out / "rnnt_tiny" / "float_model_s3" / "summary.json").is_file()  # its own float model
    # One recipe model: the variants ran side by side, one worker each, and each only its own run.
    assert "float_s3" not in (out / "logs" / "rnnt_tiny.float.log").read_text()
    assert "float_s3" in (out / "logs" / "rnnt_tiny.float_s3.log").read_text()
    dev_md = (out / "dev_results.md").read_text()
    assert "| gq_mixed_s1 |" in dev_md and "| gq_mixed | 0, 1 |" in dev_md and "were not touched" in dev_md
    # The runs so far, while nothing else is done: the dev-only rows, marked so.
    assert cli.main(["run", str(path), "--out", str(out), "--report"]) == 0
    so_far = (out / "results_so_far.md").read_text()
    assert "**So far: 4 of 4 runs**" in so_far and "4 scored on the dev sets only" in so_far
    assert "| gq_mixed_s1 |" in so_far and "## Dev sets (selection)" in so_far
    trained = {p: p.stat().st_mtime for p in out.glob("rnnt_tiny/*/ckpt/*")}
    full = experiment.run_recipe(path, out, log=lambda m: None)
    assert {p: p.stat().st_mtime for p in trained} == trained  # nothing trained again
    for dev_row, row in zip(rows, full):
        assert row["wer_keras_dev"] == dev_row["wer_keras_dev"] and 0 <= row["wer_tflite_test"] <= 5
    md = (out / "results.md").read_text()
    for part in ("## Seeds", "## Dev sets (selection)", "## How each row was chosen",
                 "- `gq_mixed`: by hand, before any run", "| gq_mixed | 0, 1 |", "## By voice engine",
                 "| clean: espeak (1 voice, 3 utt.) | clean: flite (1 voice, 3 utt.) |"):
        assert part in md
    # --report reads the finished runs back: the same intervals as results.md, nothing trained.
    so_far = experiment.report_so_far(path, out, log=lambda m: None)
    assert [r["wer_tflite_test"] for r in so_far] == [r["wer_tflite_test"] for r in full]
    section = lambda text: text.split("## How sure: intervals")[1].split("## How each row")[0]  # noqa: E731
    assert section((out / "results_so_far.md").read_text()) == section(md)
    # A recipe edited since: the fine-tunes made with the old settings count as not done.
    recipe["finetune"] = {**recipe["finetune"], "lr": recipe["finetune"]["lr"] / 2}
    path.write_text(json.dumps(recipe))
    assert [r["variant"] for r in experiment.report_so_far(path, out, log=lambda m: None)] == ["float", "float_s3"]
    assert "Not done yet: rnnt_tiny/gq_mixed, rnnt_tiny/gq_mixed_s1." in (out / "results_so_far.md").read_text()
    assert {p: p.stat().st_mtime for p in trained} == trained


@pytest.mark.slow
def test_two_models_train_side_by_side_in_workers(tmp_path):
    """A recipe with two models runs each in its own process (one CPU each when there
    are 2), then benchmarks and reports all rows once."""
    recipe = recipe_mod.load_recipe("tiny")
    recipe.update(name="tiny2", models=["rnnt_tiny", "conformer_tiny"], variants={"float": {"kind": "float"}},
                  float={**recipe["float"], "epochs": 1})
    path = tmp_path / "tiny2.json"
    path.write_text(json.dumps(recipe))
    said = []
    rows = experiment.run_recipe(path, tmp_path / "run", jobs=2, log=said.append)
    assert [(r["model"], r["variant"]) for r in rows] == [("rnnt_tiny", "float"), ("conformer_tiny", "float")]
    assert all(r["encoder_p50_ms"] > 0 for r in rows)
    for model in ("rnnt_tiny", "conformer_tiny"):
        assert any(m.startswith(f"[{model}] worker pid") for m in said)
        assert "WER test" in (tmp_path / "run" / "logs" / f"{model}.log").read_text()
    md = (tmp_path / "run" / "results.md").read_text()
    assert "**rnnt_tiny**" in md and "**conformer_tiny**" in md


def test_report_of_a_run_not_started(tmp_path, capsys):
    assert cli.main(["run", "tiny", "--out", str(tmp_path / "nowhere"), "--report"]) == 2
    assert "Expected a run directory of recipe 'tiny'" in capsys.readouterr().err
    said = []
    assert experiment.report_so_far("tiny", tmp_path, log=said.append) == []
    assert "none of the 5 runs" in said[0] and not (tmp_path / "results_so_far.md").exists()


def test_failed_workers_are_named_with_their_logs(tmp_path):
    with pytest.raises(RuntimeError, match=r"a \(exit 2, log .*a\.log\).*b \(exit 2"):
        tasks = [("a", ["--models", "a"]), ("b", ["--models", "b"])]
        experiment._run_workers(tmp_path / "missing.json", tmp_path, tasks, 2, log=lambda m: None)
    assert "error:" in (tmp_path / "logs" / "a.log").read_text()
    with pytest.raises(ValueError, match="Expected models of recipe 'tiny'"):
        experiment.run_recipe("tiny", tmp_path, models=["conformer"], log=lambda m: None)


def test_fit_resumes_inside_an_epoch_without_repeating_batches(tmp_path):
    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(8)  # 4 batches of 2 per epoch
    tcfg = TrainConfig(epochs=2, batch_size=2, warmup_steps=1, save_every_s=0.0)

    class Stop(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 3:  # in epoch 1, after its third batch was saved (the saver runs last at a batch's end)
                raise KeyboardInterrupt

    keras.utils.set_random_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t", callbacks=[Stop()],
            log=lambda m: None)
    seen = []
    net = models.build_training_model(cfg)
    fit(net, cfg, split, None, tcfg, tmp_path, name="t",
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))],
        log=lambda m: None)
    # 3 batches before the interruption + 1 left in epoch 1 + 4 in epoch 2.
    assert len(seen) == 1 + 4, seen
    ckpt = tf.train.Checkpoint(epoch=tf.Variable(-1, dtype=tf.int64), batch=tf.Variable(-1, dtype=tf.int64))
    ckpt.restore(tf.train.latest_checkpoint(str(tmp_path / "ckpt"))).expect_partial()
    assert (int(ckpt.epoch.numpy()), int(ckpt.batch.numpy())) == (2, 0)


def test_epoch_batches_trains_a_partial_pass_and_resumes_inside_it(tmp_path):
    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(12)  # 6 batches of 2 per full epoch; 3 per limited epoch
    tcfg = TrainConfig(epochs=2, batch_size=2, warmup_steps=1, save_every_s=0.0, epoch_batches=3)
    assert tcfg.steps_per_epoch(split) == 3
    assert TrainConfig(batch_size=2, epoch_batches=100).steps_per_epoch(split) == 6

    class Stop(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:  # after the second batch was saved
                raise KeyboardInterrupt

    keras.utils.set_random_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t", callbacks=[Stop()],
            log=lambda m: None)
    seen, said = [], []
    fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t",
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))],
        log=said.append)
    # 2 batches before the interruption + 1 left of epoch 1's 3 + 3 in epoch 2.
    assert len(seen) == 1 + 3, seen
    assert any("epoch 2/2" in m for m in said), said


def test_epoch_batches_limit_keeps_the_order_and_is_checked():
    from gq_speech.train import tf_batches

    split = _toy_split(12)

    def labels(ds):
        return [tuple(map(tuple, y.numpy())) for _, _, y, _ in ds]

    full = labels(tf_batches(split, 2, shuffle=True, seed=1))
    assert labels(tf_batches(split, 2, shuffle=True, seed=1, limit=4)) == full[:4]
    assert labels(tf_batches(split, 2, shuffle=True, seed=1, limit=4, skip=1)) == full[1:4]
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="epoch_batches"):
            TrainConfig.from_dict({"epoch_batches": bad})


def test_ctc_auxiliary_loss_trains_the_encoder_and_resumes_with_its_head(tmp_path):
    from gq_speech.train import RNNTTrainer

    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(8)
    net = models.build_training_model(cfg)
    trainer = RNNTTrainer(net, cfg, ctc_weight=0.5)
    batch = next(batches(split, 4, shuffle=False, frame_multiple=models.reduction(cfg)))
    with tf.GradientTape() as tape:
        rnnt, ctc = trainer._loss(batch, training=False)[:2]
    assert np.isfinite(float(rnnt)) and float(ctc) > 0
    enc_vars = [v for v in net.trainable_variables if "encoder" in v.name]
    grads = tape.gradient(ctc, enc_vars + trainer.ctc_head.trainable_variables)
    assert enc_vars and all(g is not None for g in grads)  # CTC reaches the encoder and its head only
    pred_vars = [v for v in net.trainable_variables if v.name.startswith("pred")]
    with tf.GradientTape() as tape:
        ctc = trainer._loss(batch, training=False)[1]
    assert all(g is None for g in tape.gradient(ctc, pred_vars))
    assert len(trainer.train_variables) == len(net.trainable_variables) + 2

    tcfg = TrainConfig(epochs=2, batch_size=2, warmup_steps=1, save_every_s=0.0, ctc_weight=0.3)

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):
            if b == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(models.build_training_model(cfg), cfg, split, None, tcfg, tmp_path, name="t", callbacks=[Stop()],
            log=lambda m: None)
    fit(models.build_training_model(cfg), cfg, split, split, tcfg, tmp_path, name="t", log=lambda m: None)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in logged] == [1, 2]
    assert all(e["ctc_loss"] > 0 and e["val_ctc_loss"] > 0 for e in logged)


def test_spec_augment_masks_bands_inside_each_utterance():
    from gq_speech.train import spec_augment

    x = np.ones((3, 100, 80), np.float32)
    y = spec_augment(x, [100, 50, 10], np.zeros(80, np.float32), freq_masks=2, freq_width=0.2, time_masks=2,
                     time_width=0.1, rng=np.random.default_rng(1))
    assert (x == 1).all()  # the input is not changed
    for i, length in enumerate([100, 50, 10]):
        masked = y[i] == 0
        bins = np.flatnonzero(masked.all(axis=0))
        frames = np.flatnonzero(masked.all(axis=1))
        assert len(bins) <= 2 * 16  # two masks of at most 20% of 80 bins
        assert len(frames) <= 2 * int(0.1 * length) and (frames < length).all()
        # Everything else is untouched.
        partial = masked & ~masked.all(axis=0)[None, :] & ~masked.all(axis=1)[:, None]
        assert not partial.any()
    assert (y == 0).any()


def test_vtlp_moves_formants_by_the_warp_factor_on_the_mel_scale():
    from gq_speech.features import FeatureConfig, _mel_matrix
    from gq_speech.train import TrainConfig, mel_centers_hz, spec_augment, vtlp_warp

    cfg = FeatureConfig(n_mels=80)
    centers = mel_centers_hz(80, cfg.fmin, cfg.fmax)
    # The centres are the front-end's: each mel filter peaks there (to the FFT's 7.8 Hz bins).
    peaks = np.linspace(0, cfg.sample_rate / 2, cfg.fft_length // 2 + 1)[_mel_matrix(cfg).numpy().argmax(0)]
    assert np.abs(peaks - centers).max() < 16
    x = np.random.default_rng(0).normal(size=(2, 30, 80)).astype(np.float32)
    np.testing.assert_allclose(vtlp_warp(x, [1.0, 1.0], centers, cfg.fmax), x, atol=1e-6)
    # A formant at bin 20 (657 Hz) moves to about 1.1 x / 0.9 x its frequency; the band's top stays put.
    one = np.zeros((2, 1, 80), np.float32)
    one[:, 0, 20] = 1.0
    moved = vtlp_warp(one, [1.1, 0.9], centers, cfg.fmax)[:, 0]
    assert abs(centers[moved[0].argmax()] / (1.1 * centers[20]) - 1) < 0.06
    assert abs(centers[moved[1].argmax()] / (0.9 * centers[20]) - 1) < 0.06
    top = np.zeros((1, 1, 80), np.float32)
    top[0, 0, 79] = 1.0
    assert 0.5 < vtlp_warp(top, [1.1], centers, cfg.fmax)[0, 0, 79] <= 1.0  # moves by less than a bin
    # Off by default, and off draws the same masks as before it existed; on, every utterance is warped.
    masks = spec_augment(x, [30, 20], np.zeros(80), rng=np.random.default_rng(3))
    same = spec_augment(x, [30, 20], np.zeros(80), rng=np.random.default_rng(3), vtlp=0.0, mel_band=(20, 7600))
    warped = spec_augment(x, [30, 20], np.zeros(80), rng=np.random.default_rng(3), vtlp=0.2, mel_band=(20, 7600))
    assert np.array_equal(masks, same) and np.array_equal(warped == 0, masks == 0) and not np.allclose(warped, masks)
    assert TrainConfig().vtlp == 0.0
    with pytest.raises(ValueError, match=r"Expected vtlp .* in \[0, 0.5\)\. Received 0.7"):
        TrainConfig.from_dict({"vtlp": 0.7})


def test_reports_give_wer_intervals_and_differences_to_float(tmp_path):
    rows = []
    refs = [f"turn on light {i % 7}".replace("0", "zero") for i in range(60)]
    for variant, kind, wrong in (("float", "float", 6), ("gq4", "qat", 12), ("gq8", "qat", 6)):
        vdir = tmp_path / "m" / variant
        vdir.mkdir(parents=True)
        hyps = ["turn off light" if i < wrong else r for i, r in enumerate(refs)]
        (vdir / "hyps_test.txt").write_text("".join(f"u{i}\t{r}\t{h}\t{h}\n" for i, (r, h) in
                                                    enumerate(zip(refs, hyps))))
        rows.append({"model": "m", "variant": variant, "kind": kind, "stream_dir": str(vdir / "stream"),
                     "tflite_utterances_test": len(refs)})
    experiment.statistics(rows)
    by = {r["variant"]: r["stats"]["test"] for r in rows}
    assert "vs_float" not in by["float"] and by["gq8"]["vs_float"]["relative"] == 0.0
    assert by["gq4"]["vs_float"]["relative"] == pytest.approx(1.0)  # twice the errors
    assert by["gq4"]["wer"]["low"] < by["gq4"]["wer"]["wer"] < by["gq4"]["wer"]["high"]
    text = experiment.statistics_table(rows)
    assert "| gq4 | 10.00 [" in text and "| +100.0 [" in text and "| float | 5.00 [" in text


def test_multicondition_training_takes_a_share_of_far_field_copies_from_other_rooms(tmp_path):
    recipe = {**recipe_mod.load_recipe("tiny"), "multicondition": {"share": 0.5, "seed": 7, "rooms": 4}}
    ctx = experiment.prepare(recipe, tmp_path, "rnnt_tiny", log=lambda m: None)
    info = {sub: json.loads((tmp_path / "corpus" / f"farfield-{sub}.json").read_text())
            for sub in ("train_far", "dev_far", "test_far")}
    assert [info[s]["seed"] for s in ("train_far", "dev_far", "test_far")] == [7, 8, 0]
    # The training rooms are drawn from other ranges than the test rooms.
    assert info["train_far"]["config"]["rt60"] != info["test_far"]["config"]["rt60"]
    assert info["train_far"]["config"]["n_rooms"] == 4
    clean = experiment.prepare({**recipe, "multicondition": None}, tmp_path, "rnnt_tiny", log=lambda m: None)
    train, base = ctx.data["train"], clean.data["train"]
    far = [i for i, uid in enumerate(train.ids) if uid != base.ids[i]]
    assert len(far) == round(0.5 * len(base)) and train.texts == base.texts
    assert all(np.array_equal(a, b) for a, b in zip(train.labels, base.labels))
    assert all(int(train.ids[i].split("-")[1]) >= 100 for i in far)  # far-field chapters: 100 + room
    assert all(not np.array_equal(train.features[i], base.features[i]) for i in far)
    # Validation loss on dev clean + far; the two dev sets are scored apart.
    assert len(ctx.val) == 2 * len(clean.data["dev"]) and ctx.val.ids[:len(ctx.data["dev"])] == ctx.data["dev"].ids
    assert len(ctx.data["dev_far"]) == len(ctx.data["dev"]) and clean.val is clean.data["dev"]
    # Without multicondition the dev far field is still made (far-field selection), with the default seed.
    assert "dev_far" in clean.data and "train_far" not in clean.data
    assert json.loads((tmp_path / "corpus" / "farfield-dev_far.json").read_text())["seed"] == 1001
    assert experiment._float_key(ctx)["multicondition"] == {"share": 0.5, "seed": 7, "rooms": 4}
    assert "multicondition" not in experiment._float_key(clean)  # earlier runs keep their key
    for bad, match in (({"share": 0}, "share in"), ({"seed": 0}, "test seed 0"), ({"seed": -1}, ">= 0"),
                       ({"rooms": 0}, ">= 1"), ({"mix": 1}, "unknown")):
        with pytest.raises(ValueError, match=match):
            recipe_mod.multicondition_settings({"multicondition": bad, "farfield": {"seed": 0}})


def test_multicondition_share_per_model():
    recipe = {"models": ["rnnt", "conformer"], "farfield": {"seed": 0},
              "multicondition": {"share": 0.5, "seed": 1000, "per_model": {"rnnt": {"share": 0.25}}}}
    settings = recipe_mod.multicondition_settings
    assert settings(recipe, model_name="rnnt") == {"share": 0.25, "seed": 1000, "rooms": 32}
    # The other model's settings (and so its stamps) are those of a recipe without per_model.
    plain = {**recipe, "multicondition": {"share": 0.5, "seed": 1000}}
    assert settings(recipe, model_name="conformer") == settings(plain, model_name="conformer") == settings(plain)
    for per_model, match in (({"lstm": {"share": 0.2}}, "per_model"), ({"rnnt": {"seed": 5}}, "per_model"),
                             ({"rnnt": {"share": 0}}, r"per_model 'rnnt'.*share in \(0, 1\]"),
                             ({"rnnt": 0.2}, "per_model")):
        with pytest.raises(ValueError, match=match):
            settings({**recipe, "multicondition": {"share": 0.5, "per_model": per_model}})


def test_recipe_on_a_librispeech_tree(tmp_path):
    from gq_speech.librispeech import write_utterance

    root = tmp_path / "LibriSpeech"
    rng = np.random.default_rng(0)
    for subset in ("train-clean-100", "dev-clean", "test-clean"):
        for i in range(2):
            write_utterance(root, subset, 19, 198, i, (0.1 * rng.normal(size=8000)).astype(np.float32),
                            "TURN ON THE LIGHTS")
    recipe = {"corpus": {"librispeech": str(root)}, "models": ["rnnt_tiny"], "float": {}, "finetune": {},
              "variants": {}}
    ctx = experiment.prepare(recipe, tmp_path / "run", "rnnt_tiny", log=lambda m: None)
    assert sorted(ctx.data) == ["dev", "test", "train"]  # no far-field set for LibriSpeech
    assert ctx.data["train"].texts == ["turn on the lights"] * 2
    assert ctx.data["train"].features[0].shape == (48, 16)  # 0.5 s at 10 ms, 16 mel bins
    assert ctx.cfg.feature_mean is not None


def test_changed_settings_start_a_stage_again(tmp_path):
    folder = tmp_path / "gq4"
    experiment._forget_if_changed(folder, {"spec": {"policy": {".*": 4}}}, log=lambda m: None)
    (folder / "ckpt").mkdir()
    experiment._forget_if_changed(folder, {"spec": {"policy": {".*": 4}}}, log=lambda m: None)
    assert (folder / "ckpt").exists()  # same settings: kept, so the run resumes
    said = []
    experiment._forget_if_changed(folder, {"spec": {"policy": {".*": 5}}}, log=said.append)
    assert not (folder / "ckpt").exists() and "other settings" in said[0]



def test_reordering_policy_patterns_is_a_change(tmp_path):
    """First match wins: the same patterns in another order are another model."""
    folder = tmp_path / "mixed"
    key = {"spec": {"kind": "qat", "policy": {"encoder_.*": {"recurrent_kernel": 2, "kernel": 4}, ".*": 5}},
           "finetune": {"lr": 1e-4, "epochs": 2}}
    experiment._forget_if_changed(folder, key, log=lambda m: None)
    stamp = json.loads((folder / "settings.json").read_text())
    # Rebuilt from its stamp, the variant gets the same policy, in the same order.
    assert list(recipe_mod.parse_policy(stamp["spec"]["policy"])) == ["encoder_.*", ".*"]
    (folder / "ckpt").mkdir()
    said = []
    # Other settings in another key order, or a weight dict reordered: the same settings.
    same = {"finetune": {"epochs": 2, "lr": 1e-4},
            "spec": {"policy": {"encoder_.*": {"kernel": 4, "recurrent_kernel": 2}, ".*": 5}, "kind": "qat"}}
    experiment._forget_if_changed(folder, same, log=said.append)
    assert (folder / "ckpt").exists() and not said
    swapped = {**key, "spec": {"kind": "qat", "policy": {".*": 5, "encoder_.*": {"recurrent_kernel": 2, "kernel": 4}}}}
    experiment._forget_if_changed(folder, swapped, log=said.append)
    assert not (folder / "ckpt").exists() and "other settings" in said[0]


def test_a_sorted_stamp_of_an_older_version_is_kept_and_rewritten(tmp_path):
    """Runs made before the order was kept (every key sorted, '.*' first) are not thrown away."""
    folder = tmp_path / "mixed"
    key = {"spec": {"kind": "qat", "policy": {"encoder_.*": 2, ".*": 5}}, "finetune": {"lr": 1e-4, "epochs": 2}}
    (folder / "ckpt").mkdir(parents=True)
    old = json.dumps(key, sort_keys=True, default=str)  # what the previous version wrote
    assert old.index('".*"') < old.index('"encoder_.*"')
    (folder / "settings.json").write_text(old)
    said = []
    experiment._forget_if_changed(folder, key, log=said.append)
    assert (folder / "ckpt").exists() and "older version" in said[0]
    new = (folder / "settings.json").read_text()
    assert new != old and list(json.loads(new)["spec"]["policy"]) == ["encoder_.*", ".*"]
    said.clear()
    experiment._forget_if_changed(folder, key, log=said.append)  # rewritten: now plainly the same
    assert (folder / "ckpt").exists() and not said
    # An old stamp with other content is still a change.
    (folder / "settings.json").write_text(json.dumps({**key, "finetune": {"lr": 1e-3, "epochs": 2}}, sort_keys=True))
    experiment._forget_if_changed(folder, key, log=said.append)
    assert not (folder / "ckpt").exists() and "other settings" in said[0]
    # A stage without a policy (the float model) keeps the old form: its stamps are unchanged.
    float_key = {"train": {"lr": 1e-3, "epochs": 4}, "model": {"kind": "rnnt", "units": [4, 8]}}
    assert experiment._stamp_text(float_key) == json.dumps(float_key, sort_keys=True)


@pytest.mark.parametrize("kind", ["float", "gq"])
def test_a_resumed_fit_trains_exactly_the_weights_of_an_uninterrupted_one(tmp_path, kind):
    """SpecAugment's masks are drawn per batch from a generator seeded by the
    recipe's seed, the epoch and the batch (with TensorFlow's global generator
    two runs differed, even without a kill), and each fit call takes exactly
    its batches' optimizer steps (a dataset that ended with each pass cost one
    more step per call: the learning-rate schedule of a resumed run drifted
    from the run's). GQ: the checkpoint holds the annealing step of the batch it
    was written after (it was written before the annealing callback counted
    the batch: a resumed run annealed one step behind)."""
    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(8)  # 4 batches of 2 per epoch
    tcfg = TrainConfig(epochs=3, batch_size=2, warmup_steps=1, save_every_s=0.0)
    assert tcfg.freq_masks and tcfg.time_masks

    def weights(run_dir, callbacks=()):
        keras.utils.set_random_seed(0)
        net = models.build_training_model(cfg)
        if kind == "gq":  # a schedule that changes the temperature at every step
            net = gq_tf.quantize_model(net, {".*": 2})
            callbacks = [*callbacks, annealing(12, hard_fraction=0.7)]
        fit(net, cfg, split, None, tcfg, run_dir, name="t", callbacks=callbacks, log=lambda m: None)
        steps = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "ckpt")))
        assert steps.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3 * 4
        return net.get_weights()

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    reference = weights(tmp_path / "a")
    tf.random.get_global_generator().normal([7])  # moves the global generator: must not matter
    assert all(np.array_equal(x, y) for x, y in zip(reference, weights(tmp_path / "b")))
    with pytest.raises(KeyboardInterrupt):
        weights(tmp_path / "c", callbacks=[Stop()])
    tf.random.get_global_generator().normal([7])
    assert all(np.array_equal(x, y) for x, y in zip(reference, weights(tmp_path / "c")))


def test_a_checkpoint_of_a_run_without_spec_augment_resumes_with_it(tmp_path):
    """SpecAugment keeps nothing in checkpoints (its masks are a function of seed, epoch and batch)."""
    cfg = models.load_config("rnnt_tiny")
    split = _toy_split(4)
    plain = TrainConfig(epochs=1, batch_size=2, warmup_steps=1, freq_masks=0, time_masks=0)
    fit(models.build_training_model(cfg), cfg, split, None, plain, tmp_path, name="t", log=lambda m: None)
    messages = []
    summary = fit(models.build_training_model(cfg), cfg, split, None,
                  TrainConfig(epochs=2, batch_size=2, warmup_steps=1), tmp_path, name="t", log=messages.append)
    assert summary["resumed_from"] == 1 and any("resuming after epoch 1" in m for m in messages)


def test_bench_measures_a_model_named_by_a_config_path(tmp_path):
    """Found by the recipe fuzz target's real runs: a recipe may name a model by its
    config file's path, and the benchmark's per-model file name had its slashes."""
    from gq_speech import deploy

    cfg = models.load_config("rnnt_tiny")
    deploy.export_streaming(models.build_training_model(cfg), cfg, tmp_path / "stream", kind="float")
    rows = [{"model": "configs/rnnt_tiny.json", "variant": "float", "stream_dir": str(tmp_path / "stream")}]
    experiment.bench(rows, tmp_path / "out", runs=2, log=lambda m: None)
    assert rows[0]["encoder_p50_ms"] > 0 and rows[0]["prediction_p50_ms"] > 0
    assert (tmp_path / "out/bench/encoder/models/configs_rnnt_tiny.json.float.tflite").is_symlink()
