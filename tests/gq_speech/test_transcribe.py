"""``gq-tf asr transcribe`` and ``gq_speech.transcribe``: audio files through a streaming export.

One untrained ``rnnt_tiny`` GQ export per module (16 mel bins; feature stats
of the test signal and a joint network scaled so that greedy decoding emits
some tokens, not none, as in test_asr_models.py). Token sequences are
compared exactly; the only tolerance is the resampler's (see
``test_read_audio_downmixes_and_resamples``).
"""

import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import soundfile as sf

import gq_tf
from gq_speech import cli, deploy, features, models, transcribe
from gq_speech.librispeech import load_audio
from gq_speech.text import Tokenizer
from tests.support.asrmodels import emitting_net

RATE = 16000


def _signal(sr, seconds, seed=0):
    """Speech-like test audio at ``sr``: two glides whose level changes every 100 ms, plus noise bursts."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    f = 300 + 250 * np.sin(2 * np.pi * 1.3 * t) + 150 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f) / sr
    steps = int(seconds * 10) + 1
    env = np.repeat(rng.uniform(0.05, 1.0, steps), -(-n // steps))[:n]
    noise = np.repeat(rng.uniform(0.0, 1.0, steps), -(-n // steps))[:n] * rng.standard_normal(n)
    x = (0.3 * np.sin(phase) + 0.2 * np.sin(3 * phase)) * env + 0.05 * noise
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(export directory, recognizer, {name: wav path}) for an untrained rnnt_tiny GQ export (about 10 s)."""
    root = tmp_path_factory.mktemp("transcribe")
    cfg = models.load_config("rnnt_tiny")
    fc = features.FeatureConfig(n_mels=cfg.n_mels)
    stats = features.FeatureStats.compute(transcribe.audio_features(_signal(RATE, 2.0, s), fc) for s in range(3))
    cfg = cfg.with_feature_stats(stats)
    net = emitting_net(cfg)
    directory = root / "export"
    deploy.export_streaming(gq_tf.quantize_model(net, {".*": 4}), cfg, directory)

    wavs = {}
    x = _signal(8000, 1.5, seed=5)
    wavs["mono8k"] = root / "mono8k.wav"
    sf.write(wavs["mono8k"], x, 8000)
    x = _signal(44100, 1.2, seed=6)
    wavs["stereo44k"] = root / "stereo44k.wav"
    sf.write(wavs["stereo44k"], np.stack([x, 0.5 * x], axis=1), 44100)
    wavs["mono16k"] = root / "mono16k.flac"
    sf.write(wavs["mono16k"], _signal(RATE, 1.03, seed=7), RATE)  # 1.03 s: a partial last chunk
    return directory, transcribe.open_recognizer(directory), {k: str(v) for k, v in wavs.items()}


# ----------------------------------------------------------------- audio


def _sine_wav(path, sr, freq, seconds=0.5):
    t = np.arange(int(sr * seconds)) / sr
    s = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([s, 0.5 * s], axis=1), sr, subtype="FLOAT")


@pytest.mark.parametrize("sr, freq", [(8000, 1000.0), (44100, 440.0)])
def test_read_audio_downmixes_and_resamples(tmp_path, sr, freq):
    path = tmp_path / "sine.wav"
    _sine_wav(path, sr, freq)
    audio, rate, channels, duration = transcribe.read_audio(path, RATE)
    assert (rate, channels, duration) == (sr, 2, 0.5)
    assert audio.dtype == np.float32 and len(audio) == RATE // 2
    # The mean of (s, s / 2) at 16 kHz. 2e-3: the polyphase filter's passband
    # error (measured 3e-4 of this 0.375 amplitude); a one-channel "downmix"
    # is 0.125 off, a wrong rate or a missing resampling O(0.4). The first and
    # last 100 samples hold the filter's edge transients.
    ref = 0.75 * 0.5 * np.sin(2 * np.pi * freq * np.arange(len(audio)) / RATE)
    assert np.abs(audio - ref)[100:-100].max() < 2e-3
    if sr == 8000:
        # Anti-imaging: upsampling by sample repetition would leave 4% of the
        # energy in the 7 kHz image of the 1 kHz tone; the filter leaves ~3e-8.
        x = audio[100:-100] * np.hanning(len(audio) - 200)
        power = np.abs(np.fft.rfft(x)) ** 2
        hz = np.fft.rfftfreq(len(x), 1 / RATE)
        assert power[hz > 3800].sum() / power.sum() < 1e-5


def test_read_audio_reads_ogg_vorbis(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, np.stack([_signal(22050, 0.4), _signal(22050, 0.4, seed=1)], axis=1), 22050,
             format="OGG", subtype="VORBIS")
    audio, rate, channels, duration = transcribe.read_audio(path, RATE)
    assert (rate, channels) == (22050, 2) and duration == pytest.approx(0.4)
    assert len(audio) == round(0.4 * RATE) and np.abs(audio).max() > 0.1


def test_16k_mono_audio_and_features_are_the_training_path(export):
    _, rec, wavs = export
    audio, rate, channels, _ = transcribe.read_audio(wavs["mono16k"], RATE)
    assert (rate, channels) == (RATE, 1)
    np.testing.assert_array_equal(audio, load_audio(wavs["mono16k"]))  # what train.load_split reads
    fc = features.FeatureConfig(n_mels=rec.cfg.n_mels)
    feats = transcribe.audio_features(audio, fc)
    # train.load_split keeps features as float16.
    want = np.asarray(features.log_mel(audio, fc), np.float16).astype(np.float32)
    np.testing.assert_array_equal(feats, want)
    assert feats.shape == (features.num_frames(len(audio)), 16)


# ----------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", ["mono8k", "stereo44k", "mono16k"])
def test_transcribe_file_equals_the_evaluation_path_and_reports_latency(export, name):
    _, rec, wavs = export
    res = transcribe.transcribe_file(rec, wavs[name])
    info = sf.info(wavs[name])
    assert (res.sample_rate, res.channels) == (info.samplerate, info.channels)
    assert res.duration_s == pytest.approx(info.frames / info.samplerate)
    audio = transcribe.read_audio(wavs[name], RATE)[0]
    feats = transcribe.audio_features(audio, features.FeatureConfig(n_mels=16))
    assert res.frames == len(feats) == features.num_frames(len(audio))
    # experiment.tflite_transcribe's path: every frame at once, then finish().
    rec.reset()
    rec.push(feats)
    assert res.tokens == rec.finish()
    assert res.text == Tokenizer().decode(res.tokens)
    assert res.tokens, "the fixture's model should emit tokens"
    assert res.chunks == -(-res.frames // rec.chunk_frames)
    assert all(ms > 0 for ms in res.chunk_ms)
    assert 0 < res.chunk_ms_p50 <= res.chunk_ms_p90 <= max(res.chunk_ms)
    assert res.upl_ms > 0 and res.features_ms > 0
    assert res.processing_ms >= sum(res.chunk_ms) > 0
    assert res.rtf == pytest.approx(res.processing_ms / 1000 / res.duration_s)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["chunks"] == res.chunks and d["rtf"] == res.rtf and d["text"] == res.text


def test_stream_partials_are_prefixes_of_the_final_transcript(export):
    _, rec, wavs = export
    seen = []
    res = transcribe.transcribe_file(rec, wavs["stereo44k"], stream_callback=lambda t, text: seen.append((t, text)))
    assert seen == res.partials and len(seen) >= 2
    times = [t for t, _ in seen]
    assert times == sorted(set(times)) and 0 < times[0] and times[-1] <= res.duration_s
    texts = [text for _, text in seen]
    for a, b in zip(texts, texts[1:]):
        assert b.startswith(a) and len(b) > len(a)
    assert texts[-1] == res.text


class _SlowRecognizer:
    """A recognizer stub whose every chunk costs ``cost`` seconds of a fake clock (no TFLite)."""

    def __init__(self, clock, cost, finish_cost):
        self.cfg = models.load_config("rnnt_tiny")
        self.chunk_frames = self.cfg.chunk_frames
        self.clock, self.cost, self.finish_cost = clock, cost, finish_cost
        self.tokens, self.chunk_timings = [], []

    def reset(self):
        self.tokens, self._buffered = [], 0

    def clear_timings(self):
        self.chunk_timings = []

    def push(self, frames):
        self._buffered += len(frames)
        new = []
        while self._buffered >= self.chunk_frames:
            self._buffered -= self.chunk_frames
            self.clock[0] += self.cost
            self.chunk_timings.append(self.cost)
            new.append(2)
        self.tokens += new
        return new

    def finish(self):
        self.clock[0] += self.finish_cost
        return list(self.tokens)


@pytest.mark.parametrize("cost, want_upl", [(0.001, 0.011), (0.1, 0.15)])
def test_upl_is_what_is_pending_when_the_audio_ends(tmp_path, monkeypatch, cost, want_upl):
    # 4080 samples (255 ms): 24 frames, 3 whole chunks complete at 95, 175
    # and 255 ms (last frame j at (160 j + 400) / 16000 s). At 1 ms a chunk,
    # the first two are done before the audio ends; the last one completes
    # with the audio, so the UPL is that chunk + finish() (10 ms) = 11 ms. At
    # 100 ms a chunk (slower than the 80 ms of audio in one) a backlog
    # builds: done at 195, 295, 395 ms, + finish = 405 ms, 150 ms after the end.
    path = tmp_path / "a.wav"
    sf.write(path, _signal(RATE, 4080 / RATE), RATE, subtype="FLOAT")
    clock = [0.0]
    monkeypatch.setattr(deploy, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    res = transcribe.transcribe_file(_SlowRecognizer(clock, cost, 0.01), path)
    assert res.frames == 24 and res.chunk_ms == pytest.approx([1000 * cost] * 3)
    assert res.upl_ms == pytest.approx(1000 * want_upl)
    assert res.processing_ms == pytest.approx(1000 * (3 * cost + 0.01))


# ----------------------------------------------------------------- the command


def _run(argv, capsys):
    code = cli.main(["transcribe", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _file_blocks(out):
    """{header line: [its indented lines]} of the command's output."""
    blocks, current = {}, None
    for line in out.splitlines():
        if line.startswith("  "):
            blocks[current].append(line[2:])
        else:
            current = line
            blocks[current] = []
    return blocks


def test_command_prints_and_writes_what_the_library_returns(export, capsys, tmp_path):
    directory, rec, wavs = export
    paths = [wavs["mono8k"], wavs["stereo44k"]]
    code, out, err = _run([directory, *paths, "--stream", "--json", tmp_path / "out.json"], capsys)
    assert code == 0, err
    with open(tmp_path / "out.json") as f:
        written = json.load(f)
    assert written["model"] == "rnnt_tiny" and written["kind"] == "gq" and written["kernel"] == "auto"
    blocks = _file_blocks(out)
    assert list(blocks) == paths
    for path, got in zip(paths, written["files"]):
        lib = transcribe.transcribe_file(rec, path).to_dict()
        for key in ("path", "text", "tokens", "frames", "chunks", "sample_rate", "channels", "duration_s", "partials"):
            assert got[key] == lib[key], key
        for key in ("chunk_ms_p50", "chunk_ms_p90", "upl_ms", "rtf"):
            assert got[key] > 0, key
        lines = blocks[path]
        assert lines[:-2] == [f"[{p['time_s']:.2f} s] {p['text']}" for p in lib["partials"]]
        assert lines[-2] == f"transcript: {lib['text']}"
        assert lines[-1].startswith(f"chunks {lib['chunks']}, chunk latency P50 ")
        assert " ms, UPL " in lines[-1] and ", RTF " in lines[-1]
        assert lines[-1].endswith(f"({lib['duration_s']:.2f} s of {lib['sample_rate']} Hz, "
                                  f"{lib['channels']} channel{'s' if lib['channels'] > 1 else ''})")


def test_command_without_stream_prints_the_transcript_and_one_line(export, capsys):
    directory, rec, wavs = export
    code, out, _ = _run([directory, wavs["mono16k"], "--kernel", "reference", "--threads", "2"], capsys)
    assert code == 0
    lines = _file_blocks(out)[wavs["mono16k"]]
    ref = transcribe.open_recognizer(directory, kernel="reference")
    assert lines[0] == f"transcript: {transcribe.transcribe_file(ref, wavs['mono16k']).text}"
    assert len(lines) == 2 and lines[1].startswith("chunks ")


def _bad_audio(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not audio\n")
    elif case == "empty":
        sf.write(path, np.zeros((0, 2), np.float32), 8000)
    elif case == "short":
        sf.write(path, np.zeros(100, np.float32), 8000)  # 12.5 ms: less than one 25 ms frame
    elif case == "directory":
        path = tmp_path
    return path


@pytest.mark.parametrize("case, message", [
    ("text", r"Expected an audio file soundfile reads \(wav, flac, ogg, \.\.\.\)\. Received '.*notes\.txt': "
             r".*Format not recognised"),
    ("empty", r"Expected audio samples\. Received '.*empty\.wav': 0 samples \(8000 Hz, 2 channel"),
    ("missing", r"Expected an audio file\. Received '.*missing\.wav': no such file"),
    ("short", r"Expected at least 25 ms of audio \(one feature frame\)\. Received '.*short\.wav': 12\.5 ms"),
    ("directory", r"Expected an audio file\. Received '.*': a directory"),
])
def test_bad_audio_is_reported_and_the_other_files_still_transcribed(export, capsys, tmp_path, case, message):
    directory, _, wavs = export
    bad = _bad_audio(tmp_path, case)
    code, out, err = _run([directory, wavs["mono16k"], bad, wavs["mono8k"], "--json", tmp_path / "o.json"], capsys)
    assert code == 2
    assert list(_file_blocks(out)) == [wavs["mono16k"], wavs["mono8k"]]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines[0]
    assert lines[1] == f"error: 1 of 3 files failed: {bad}"
    with open(tmp_path / "o.json") as f:
        files = json.load(f)["files"]
    assert [f["path"] for f in files] == [wavs["mono16k"], str(bad), wavs["mono8k"]]
    assert files[1]["error"] == lines[0][len("error: "):] and files[0]["text"] is not None


def _bad_export(tmp_path, directory, case):
    bad = tmp_path / "bad_export"
    if case == "missing":
        return tmp_path / "nowhere"
    bad.mkdir()
    if case == "no_manifest":
        return bad
    for name in os.listdir(directory):
        (bad / name).write_bytes((directory / name).read_bytes())
    manifest = bad / deploy.MANIFEST
    if case == "format":
        data = json.loads(manifest.read_text())
        data["format"] = "something/else"
        manifest.write_text(json.dumps(data))
    elif case == "not_json":
        manifest.write_text("{not json")
    elif case == "json_list":
        manifest.write_text("[]")
    elif case == "bad_config":
        data = json.loads(manifest.read_text())
        del data["config"]["n_mels"]
        manifest.write_text(json.dumps(data))
    elif case == "no_tflite":
        (bad / "joint.tflite").unlink()
    return bad


@pytest.mark.parametrize("case, extra, message", [
    ("missing", [], r"Expected an export directory \(deploy\.export_streaming\)\. Received '.*nowhere': no such"),
    ("no_manifest", [], r"Expected streaming\.json in .*bad_export \(written by export_streaming\)"),
    ("format", [], r"Expected streaming\.json of format 'gq_tf\.asr\.streaming/1'\. Received format 'something/else'"),
    ("not_json", [], r"Expected streaming\.json in '.*bad_export' to be JSON\. Received invalid JSON"),
    ("json_list", [], r"Expected streaming\.json in '.*bad_export' to hold a JSON object\. Received a JSON list"),
    ("bad_config", [], r"Expected a model config in '.*streaming\.json'\. Received: ValueError: "
                       r"Expected the model config to have the keys \['n_mels'\]"),
    ("no_tflite", [], r"Expected the joint graph '.*joint\.tflite' named by streaming\.json\. Received: no such file"),
    ("ok", ["--kernel", "fastest"], r"Expected kernel in \['auto', .*'reference'.*\] \(the variants this CPU runs\)\. "
                                      r"Received: kernel='fastest'"),
    ("ok", ["--threads", "0"], r"Expected num_threads >= 1\. Received: num_threads=0"),
])
def test_bad_export_or_options_exit_2_with_the_reason(export, capsys, tmp_path, case, extra, message):
    directory, _, wavs = export
    target = directory if case == "ok" else _bad_export(tmp_path, directory, case)
    code, out, err = _run([target, wavs["mono16k"], *extra], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert re.search("^error: " + message, err), err


def test_installed_command_exits_2_without_traceback(export, tmp_path):
    directory, _, wavs = export
    bad = _bad_audio(tmp_path, "text")
    r = subprocess.run([sys.executable, "-m", "gq_speech.__main__", "asr", "transcribe", str(directory), str(bad),
                        wavs["mono16k"]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Format not recognised" in r.stderr and "transcript: " in r.stdout
