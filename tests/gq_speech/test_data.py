"""ASR data: tokenizer, domain sentences, LibriSpeech layout, the built-in corpus, far field.

The corpus tests generate the ``tiny`` preset (27 utterances from all three
engines) once per session; the first run may install espeak-ng, flite and
sox (gq_speech.debian).
"""

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gq_speech import audio, debian, farfield, librispeech, text, tts, voices
from gq_speech import corpus as corpus_mod
from gq_speech.corpus import make_corpus, plan_corpus
from gq_speech.farfield import make_farfield, reverberate
from gq_speech.librispeech import Manifest, load_audio, read_librispeech, write_utterance
from gq_speech.text import Tokenizer, domain_sentences, domain_vocabulary, normalize


def QUIET(*a):
    return None


def test_public_names_are_pinned():
    expected = {
        text: {"Tokenizer", "normalize", "domain_sentences", "domain_vocabulary", "MIN_WORDS", "MAX_WORDS"},
        librispeech: {"Utterance", "read_librispeech", "load_audio", "write_utterance", "list_subsets",
                      "AUDIO_EXTENSIONS", "SAMPLE_RATE", "Manifest", "MANIFEST"},
        # corpus defines plan_corpus, make_corpus and CORPUS_VERSION and re-exports the rest.
        corpus_mod: {"Voice", "CorpusConfig", "PRESETS", "all_voices", "preset_voices", "plan_corpus",
                     "make_corpus", "synthesize", "tool_versions", "CORPUS_VERSION", "check_voices_differ"},
        voices: {"Voice", "CorpusConfig", "PRESETS", "all_voices", "preset_voices"},
        tts: {"synthesize", "tool_versions", "same_sounding"},
        audio: {"colored_noise", "mix_at_snr", "to_int16", "trim_silence"},
        farfield: {"FarfieldConfig", "make_farfield", "rir_bank", "reverberate", "FARFIELD_VERSION", "TRAINING_ROOMS"},
        debian: {"ensure_debian_packages", "DebianPackageError", "install_command"},
    }
    for module, names in expected.items():
        assert set(module.__all__) == names, module.__name__
        for name in names:
            assert hasattr(module, name), (module.__name__, name)


# ----------------------------------------------------------------- text


def test_tokenizer_round_trip_and_vocabulary():
    tok = Tokenizer()
    assert tok.blank_id == 0 and tok.vocab_size == 29
    assert tok.vocab[1] == " " and tok.vocab[2] == "a" and tok.vocab[27] == "z" and tok.vocab[28] == "'"
    ids = tok.encode("What's the Weather in Boston?")
    assert 0 not in ids and max(ids) < 29
    assert tok.decode(ids) == "what's the weather in boston"
    assert tok.decode([0, *tok.encode("hi"), 0, 0]) == "hi"  # blanks are skipped
    assert Tokenizer.from_config(json.loads(json.dumps(tok.to_config()))).vocab == tok.vocab
    with pytest.raises(ValueError, match="Expected the character tokenizer config"):
        Tokenizer.from_config({"kind": "char", "vocab": ["a"], "blank_id": 0})
    with pytest.raises(ValueError, match=r"Expected ids in 0\.\.28. Received: 29"):
        tok.decode([29])
    # Every word of the domain is spelled with the vocabulary, losslessly.
    for word in domain_vocabulary():
        assert tok.decode(tok.encode(word)) == word


def test_normalize():
    assert normalize("  Hello,   WORLD -- it's me!") == "hello world it's me"
    assert normalize("Wi-Fi\ton\nCafé") == "wi fi on cafe"
    assert normalize("don\u2019t") == "don't"
    assert normalize("...") == ""
    with pytest.raises(ValueError, match=r"without digits.*seven thirty.*Received digits '037'"):
        normalize("wake me at 7:30 or 3")
    with pytest.raises(TypeError, match="Expected a str"):
        normalize(None)


def test_domain_sentences_are_deterministic_varied_and_closed():
    a = domain_sentences(1000, seed=3)
    assert a == domain_sentences(1000, seed=3)
    assert a != domain_sentences(1000, seed=4)
    assert len(set(a)) >= 900
    vocab = domain_vocabulary()
    assert 300 <= len(vocab) <= 500 and vocab == sorted(set(vocab))
    words = Counter(w for s in domain_sentences(20000, seed=0) for w in s.split())
    assert set(words) == set(vocab)  # nothing outside it, and nothing listed that never occurs
    for s in a:
        assert text.MIN_WORDS <= len(s.split()) <= text.MAX_WORDS
        assert normalize(s) == s
    text._check_grammar()
    with pytest.raises(ValueError, match="n >= 0"):
        domain_sentences(-1)


# ----------------------------------------------------------------- LibriSpeech layout


def _write_flac(path, seconds=0.5, sr=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(str(path), np.stack([x] * channels, 1) if channels > 1 else x, sr, format="FLAC")


def _tree(root):
    """train-clean/{19,26}/{198,495} with 2 utterances each, and dev-clean with one."""
    for subset, speakers in (("train-clean", ("19", "26")), ("dev-clean", ("84",))):
        for spk in speakers:
            for ch in ("198", "495")[: 2 if subset == "train-clean" else 1]:
                d = root / subset / spk / ch
                lines = []
                for u in range(2):
                    uid = f"{spk}-{ch}-{u:04d}"
                    _write_flac(d / f"{uid}.flac", seconds=0.25 * (u + 1))
                    lines.append(f"{uid} THE DOG'S NUMBER BARK\n")
                (d / f"{spk}-{ch}.trans.txt").write_text("".join(lines))
    return root


def test_read_librispeech(tmp_path):
    root = _tree(tmp_path / "LibriSpeech")
    utts = read_librispeech(root)
    assert len(utts) == 10
    assert [u.subset for u in utts] == ["dev-clean"] * 2 + ["train-clean"] * 8
    assert [u.id for u in utts] == sorted(u.id for u in utts[:2]) + sorted(u.id for u in utts[2:])
    u = utts[2]
    assert (u.id, u.speaker, u.chapter, u.subset) == ("19-198-0000", "19", "198", "train-clean")
    assert u.text == "the dog's number bark" and Path(u.path).exists() and u.meta == {}
    assert u.duration_s == pytest.approx(0.25) and utts[3].duration_s == pytest.approx(0.5)
    assert len(read_librispeech(root, ["dev-clean"])) == 2
    assert librispeech.list_subsets(root) == ["dev-clean", "train-clean"]
    audio = load_audio(u.path)
    assert audio.dtype == np.float32 and audio.shape == (4000,) and 0.25 < np.abs(audio).max() <= 0.31


def test_read_librispeech_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_librispeech(tmp_path / "nope")
    root = _tree(tmp_path / "LS")
    with pytest.raises(FileNotFoundError, match=r"\['test-clean'\].*it has \['dev-clean', 'train-clean'\]"):
        read_librispeech(root, ["test-clean"])
    chapter = root / "train-clean" / "19" / "198"
    trans = chapter / "19-198.trans.txt"
    good = trans.read_text()

    (chapter / "19-198-0000.flac").rename(chapter / "moved.bin")  # a transcript line without audio
    with pytest.raises(ValueError, match=r"19-198.trans.txt:1: no audio file for '19-198-0000'"):
        read_librispeech(root)
    (chapter / "moved.bin").rename(chapter / "19-198-0000.flac")

    _write_flac(chapter / "19-198-0007.flac")  # audio without a transcript line
    with pytest.raises(ValueError, match=r"no transcript line for audio file\(s\) \['19-198-0007.flac'\]"):
        read_librispeech(root)
    (chapter / "19-198-0007.flac").unlink()

    for bad, pattern in [("19-198-0000\n", r"trans.txt:1: expected '<speaker>-<chapter>-<utt> TEXT'"),
                         ("19-198-0000 A\nnonsense\n", r"trans.txt:2: expected"),
                         ("26-198-0000 A\n", r"trans.txt:1: expected an id starting with 19-198-"),
                         ("19-198-0000 A\n19-198-0000 B\n", r"trans.txt:2: duplicate id"),
                         ("19-198-0000 CALL 911\n19-198-0001 B\n", r"19-198-0000: Expected text without digits")]:
        trans.write_text(bad)
        with pytest.raises(ValueError, match=pattern):
            read_librispeech(root)
    trans.unlink()
    with pytest.raises(ValueError, match="audio files without a transcript: expected 19-198.trans.txt"):
        read_librispeech(root)
    trans.write_text(good)
    assert len(read_librispeech(root)) == 10


def test_load_audio_refuses_other_formats_and_write_utterance(tmp_path):
    _write_flac(tmp_path / "a.flac", sr=8000)
    with pytest.raises(ValueError, match="Expected 16000 Hz mono audio .* Received: 8000 Hz, 1 channel"):
        load_audio(tmp_path / "a.flac")
    _write_flac(tmp_path / "b.flac", channels=2)
    with pytest.raises(ValueError, match="Received: 16000 Hz, 2 channel"):
        load_audio(tmp_path / "b.flac")

    x = np.linspace(-1.2, 1.2, 1600).astype(np.float32)
    uid, path = write_utterance(tmp_path / "c", "train", 7, 3, 0, x, "Call maria")
    write_utterance(tmp_path / "c", "train", 7, 3, 1, x[:800], "Play jazz")
    assert uid == "7-3-0000" and path == tmp_path / "c" / "train" / "7" / "3" / "7-3-0000.flac"
    assert (tmp_path / "c/train/7/3/7-3.trans.txt").read_text() == "7-3-0000 CALL MARIA\n7-3-0001 PLAY JAZZ\n"
    utts = read_librispeech(tmp_path / "c")
    assert [(u.id, u.text) for u in utts] == [("7-3-0000", "call maria"), ("7-3-0001", "play jazz")]
    y = load_audio(path)
    # 16-bit storage: one quantization step (1/32768) of error; the input is clipped to [-1, 1].
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=1 / 32768 + 1e-7)
    with pytest.raises(ValueError, match="non-empty transcript"):
        write_utterance(tmp_path / "c", "train", 7, 3, 2, x, "!!")
    with pytest.raises(ValueError, match="letters, digits or '_'"):
        write_utterance(tmp_path / "c", "train", "a-b", 3, 2, x, "hi")


# ----------------------------------------------------------------- the corpus plan (no audio)


@pytest.mark.parametrize("preset", ["small", "full"])
def test_plan_splits_are_disjoint_by_voice_and_sentence(preset):
    jobs = plan_corpus(preset, seed=0, log=QUIET)
    cfg = corpus_mod.PRESETS[preset]
    assert Counter(j["subset"] for j in jobs) == cfg.utterances
    voices = {s: {j["voice"].id for j in jobs if j["subset"] == s} for s in ("train", "dev", "test")}
    texts = {s: {j["text"] for j in jobs if j["subset"] == s} for s in ("train", "dev", "test")}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not voices[a] & voices[b], (a, b)
        assert not texts[a] & texts[b], (a, b)
    assert len(texts["test"]) == cfg.utterances["test"]  # test sentences are all distinct
    for j in jobs:
        assert j["voice"].split == j["subset"]
        assert 0.9 <= j["speed"] <= 1.1 and -200 <= j["pitch"] <= 200 and -6 <= j["gain_db"] <= 3
        assert (j["snr_db"] is None) == (j["noise"] == "none")
        assert j["snr_db"] is None or 5 <= j["snr_db"] <= 30
    assert len({j["id"] for j in jobs if j["subset"] == "train"}) == cfg.utterances["train"]
    engines = Counter(j["voice"].engine for j in jobs)
    assert set(engines) == {"espeak", "flite", "piper"}
    voice_counts = {s: Counter(v.split("-")[0] for v in voices[s]) for s in voices}
    for engine, counts in cfg.voices.items():
        assert [voice_counts[s][engine] for s in ("train", "dev", "test")] == counts


def test_every_voice_of_the_table_sounds_different_and_duplicates_are_refused():
    """espeak-ng ignores the variant of en-gb+X (identical audio, exit 0): such a table is refused."""
    said = []
    corpus_mod.check_voices_differ(corpus_mod.all_voices(), "all", log=said.append)
    assert said and "all different" in said[0]
    same = [voices.Voice(f"espeak-en-gb+{v}", "espeak", f"en-gb+{v}", 900 + i, "train") for i, v in
            enumerate(("m2", "klatt3"))]
    distinct = voices.Voice("espeak-en+m2", "espeak", "en+m2", 902, "train")
    with pytest.raises(ValueError, match=r"identical audio for one probe sentence: espeak-en-gb\+m2, "
                                         r"espeak-en-gb\+klatt3\."):
        corpus_mod.check_voices_differ([*same, distinct], "test", log=QUIET)


def test_a_larger_training_set_keeps_the_dev_and_test_sets():
    """Each split draws from its own stream: growing the training set (more utterances, more voices)
    leaves dev and test utterance for utterance the same, so dev results stay comparable."""
    small = corpus_mod.PRESETS["small"].to_dict()
    more = {**small, "utterances": {**small["utterances"], "train": 3000}, "voices": {**small["voices"],
                                                                                     "espeak": [64, 3, 3]}}
    a, b = plan_corpus(small, seed=0, log=QUIET), plan_corpus(more, seed=0, log=QUIET)
    for split in ("dev", "test"):
        assert [j for j in a if j["subset"] == split] == [j for j in b if j["subset"] == split]
    assert sum(j["subset"] == "train" for j in b) == 3000
    assert len({j["voice"].id for j in b if j["subset"] == "train"}) > len({j["voice"].id for j in a
                                                                             if j["subset"] == "train"})


def test_plan_is_deterministic_and_voice_table_is_consistent():
    assert plan_corpus("small", seed=1, log=QUIET) == plan_corpus("small", seed=1, log=QUIET)
    assert plan_corpus("small", seed=1, log=QUIET) != plan_corpus("small", seed=2, log=QUIET)
    voices = corpus_mod.all_voices()
    assert len({v.id for v in voices}) == len({v.speaker for v in voices}) == len(voices)
    # flite: dev and test voices are speakers never heard in training.
    assert {v.name for v in voices if v.engine == "flite" and v.split == "test"} == {"rms"}
    with pytest.raises(ValueError, match="Expected 1..3 flite voices for train. Received: 4"):
        corpus_mod.CorpusConfig(voices={"espeak": [1, 1, 1], "flite": [4, 1, 1], "piper": [1, 1, 1]}).validate()
    with pytest.raises(ValueError, match="Expected a preset in"):
        plan_corpus("huge")
    with pytest.raises(ValueError, match="unknown"):
        corpus_mod.CorpusConfig.from_dict({"utterances": {}, "colour": 1})


def test_signal_helpers():
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(16000).astype(np.float32) * 0.1
    for kind in ("white", "pink", "brown"):
        n = audio.colored_noise(kind, 16000, np.random.default_rng(1))
        assert np.sqrt(np.mean(n.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        mixed = audio.mix_at_snr(speech, n, 10.0)
        added = mixed.astype(np.float64) - speech
        snr = 10 * np.log10(np.sum(speech.astype(np.float64) ** 2) / np.sum(added**2))
        assert snr == pytest.approx(10.0, abs=1e-3)  # float32 rounding only
    def spec(x):
        return np.abs(np.fft.rfft(x)) ** 2

    low, high = slice(10, 200), slice(4000, 8000)
    pink = spec(audio.colored_noise("pink", 16000, np.random.default_rng(2)))
    assert pink[low].mean() > 10 * pink[high].mean()  # ~1/f: 20-400 Hz far above 4-8 kHz
    quiet = np.zeros(8000, np.float32)
    x = np.concatenate([quiet, speech, quiet])
    trimmed = audio.trim_silence(x)
    assert len(speech) <= len(trimmed) <= len(speech) + 2 * 0.15 * 16000 + 160


def test_ensure_debian_packages(monkeypatch):
    debian.ensure_debian_packages({"sh": "dash"}, why="a test")  # present: nothing to do
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(debian.DebianPackageError,
                       match=r"a test needs gq-tf-no-such-tool .*\n  apt-get update && DEBIAN_FRONTEND="
                             r"noninteractive apt-get install -y -q gq-tf-no-such-pkg"):
        debian.ensure_debian_packages({"gq-tf-no-such-tool": "gq-tf-no-such-pkg"}, why="a test")


# ----------------------------------------------------------------- the tiny corpus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    lines = []
    t0 = time.time()
    manifest = make_corpus(out, "tiny", seed=0, workers=2, log=lines.append)
    return {"dir": out, "manifest": manifest, "log": lines, "seconds": time.time() - t0}


def test_tiny_corpus_layout_and_manifest(tiny):
    out, manifest = tiny["dir"], tiny["manifest"]
    assert any("generating tiny" in line for line in tiny["log"])
    assert manifest.counts() == {"dev": 9, "test": 9, "train": 9}
    info = json.loads((out / "corpus.json").read_text())
    assert info["seed"] == 0 and info["version"] == corpus_mod.CORPUS_VERSION
    assert info["counts"]["train"]["engines"] == {"espeak": 3, "flite": 3, "piper": 3}
    assert set(info["tools"]) >= {"espeak-ng", "flite", "sox", "piper-tts"}
    utts = read_librispeech(out)  # the directory is a valid LibriSpeech tree
    assert len(utts) == 27 and {u.subset for u in utts} == {"train", "dev", "test"}
    by_id = {(e["subset"], e["id"]): e for e in manifest.entries}
    for u in utts:
        e = by_id[(u.subset, u.id)]
        assert u.meta == e and u.text == e["text"]
        assert e["path"] == Path(u.path).relative_to(out).as_posix()
        assert str(e["speaker"]) == u.speaker and str(e["chapter"]) == u.chapter
        assert u.duration_s == pytest.approx(sf.info(u.path).duration, abs=1e-3)
    assert [(u.id, u.text) for u in manifest.utterances("test")] == [(u.id, u.text) for u in utts if u.subset == "test"]
    with pytest.raises(ValueError, match=r"Expected a subset in \['dev', 'test', 'train'\]"):
        manifest.utterances("validation")
    for split_a, split_b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        ea = [e for e in manifest.entries if e["subset"] == split_a]
        eb = [e for e in manifest.entries if e["subset"] == split_b]
        assert not {e["voice"] for e in ea} & {e["voice"] for e in eb}
        assert not {e["text"] for e in ea} & {e["text"] for e in eb}


def test_tiny_corpus_audio_is_plausible_speech(tiny):
    for u in tiny["manifest"].utterances():
        audio, sr = sf.read(u.path, dtype="float32", always_2d=True)
        assert sr == 16000 and audio.shape[1] == 1
        x = audio[:, 0].astype(np.float64)
        words = len(u.text.split())
        # 3-12 words at 0.9-1.1 speed: about 0.15-0.6 s a word, plus 0.3 s of margins.
        assert 0.15 * words < len(x) / sr < 0.6 * words + 1.0, (u.id, len(x) / sr, u.text)
        peak = np.abs(x).max()
        assert 0.1 < peak <= 0.99  # -6 dBFS peak with -6..+3 dB gain, clipping prevented
        assert len(np.unique(audio)) > 1000  # a waveform, not a few levels (a broken conversion)
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)
        loud = np.sqrt((frames**2).mean(1))
        # Speech is not stationary: its loudest 10 ms frames are far above the median frame.
        assert loud.max() > 2 * np.median(loud), u.id


def test_tiny_corpus_is_deterministic_and_cached(tiny, tmp_path):
    again = tmp_path / "again"
    make_corpus(again, "tiny", seed=0, workers=1, log=QUIET)  # another worker count, same bytes
    files = sorted(p.relative_to(tiny["dir"]) for p in tiny["dir"].rglob("*") if p.is_file())
    files = [f for f in files if f.name != "corpus.json" and not f.as_posix().startswith(("farfield", "test_far"))]
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file() and p.name != "corpus.json")
    for f in files:
        assert (tiny["dir"] / f).read_bytes() == (again / f).read_bytes(), f
    lines = []
    t0 = time.time()
    cached = make_corpus(again, "tiny", seed=0, log=lines.append)
    assert time.time() - t0 < 1.0 and lines == [] and cached.counts() == tiny["manifest"].counts()
    with pytest.raises(ValueError, match="made with another config, seed or version"):
        make_corpus(again, "tiny", seed=1, log=QUIET)
    assert corpus_mod.main(["--out", str(again), "--preset", "tiny"]) == 0  # the CLI, on the cache


def test_interrupted_generation_leaves_no_corpus(tmp_path, monkeypatch):
    calls = []

    def failing_write(*args, **kw):
        calls.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_mod, "write_utterance", failing_write)
    with pytest.raises(KeyboardInterrupt):
        make_corpus(tmp_path / "c", "tiny", seed=0, workers=2, log=QUIET)
    assert calls and list(tmp_path.iterdir()) == []  # neither the corpus nor its temporary directory


def test_existing_directory_with_other_files_is_refused(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="new or empty directory"):
        make_corpus(tmp_path / "c", "tiny", log=QUIET)
    with pytest.raises(FileNotFoundError, match="Received: no corpus.json"):
        Manifest.load(tmp_path / "c")


@pytest.mark.parametrize("voice_id", ["espeak-en-gb-scotland+m1", "flite-kal"])
def test_synthesize(voice_id):
    voice = next(v for v in corpus_mod.all_voices() if v.id == voice_id)
    a = corpus_mod.synthesize(voice, "call maria")
    assert a.dtype == np.float32 and a.ndim == 1
    assert np.abs(a).max() == pytest.approx(0.5, abs=1e-6)  # normalized to -6 dBFS
    assert 0.3 < len(a) / 16000 < 2.0
    np.testing.assert_array_equal(a, corpus_mod.synthesize(voice, "call maria"))
    slow = corpus_mod.synthesize(voice, "call maria", speed=0.9)
    # Speed 0.9 resamples: 1/0.9 longer speech; the kept silence margins do not scale, so 3%.
    assert len(slow) / len(a) == pytest.approx(1 / 0.9, rel=0.03)


# ----------------------------------------------------------------- far field


def _farfield_copy(tiny, dest):
    shutil.copytree(tiny["dir"], dest)
    return make_farfield(dest, "test", "test_far", seed=0, snrs=(0.0, 10.0), n_rooms=3, workers=2, log=QUIET)


def test_farfield(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    manifest = _farfield_copy(tiny, a)
    assert manifest.counts() == {"dev": 9, "test": 9, "test_far": 9, "train": 9}
    far = read_librispeech(a, ["test_far"])
    assert len(far) == 9
    info = json.loads((a / "farfield-test_far.json").read_text())
    assert info["per_snr"] == {"0.0": 5, "10.0": 4}
    with np.load(a / info["rir_bank"]) as z:
        bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
        rirs = [z["flat"][bounds[i]:bounds[i + 1]] for i in range(len(z["lengths"]))]
    source = {u.id: u for u in read_librispeech(a, ["test"])}
    for u in far:
        m = u.meta
        assert 3 <= m["room"][0] <= 10 and 1 <= m["distance_m"] <= 5.01 and 0.05 < m["rt60"] < 2.0
        clean = load_audio(source[m["source_id"]].path)
        y = load_audio(u.path).astype(np.float64)
        assert u.text == source[m["source_id"]].text
        assert len(y) == len(clean) + int(0.3 * 16000)
        assert np.abs(y).max() == pytest.approx(10 ** (-3 / 20), abs=1e-3)  # peak normalized
        assert np.corrcoef(y[: len(clean)], clean)[0, 1] < 0.9  # really changed
        rev = reverberate(clean, rirs[m["rir"]]).astype(np.float64)
        g = np.dot(y, rev) / np.dot(rev, rev)  # the unknown peak normalization
        noise = y - g * rev
        snr = 10 * np.log10(np.sum((g * rev) ** 2) / np.sum(noise**2))
        # The least-squares fit absorbs the chance correlation of noise and speech
        # (low-frequency brown noise has few degrees of freedom): up to 0.54 dB
        # measured over the 200 utterances of the small preset, hence 0.75 dB.
        assert snr == pytest.approx(m["snr_db"], abs=0.75), (u.id, m["noise"])
    lines = []
    t0 = time.time()
    make_farfield(a, "test", "test_far", seed=0, snrs=(0.0, 10.0), n_rooms=3, log=lines.append)
    assert time.time() - t0 < 1.0 and lines == []  # cached

    _farfield_copy(tiny, b)  # computed again from scratch (rooms included): same bytes
    for u in far:
        rel = Path(u.path).relative_to(a)
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()

    with pytest.raises(ValueError, match="out_subset different from subset"):
        make_farfield(a, "test", "test", log=QUIET)
    with pytest.raises(ValueError, match="was not made by gq_speech.farfield"):
        make_farfield(a, "test", "dev", log=QUIET)


def test_serialized_names_survive_the_package_move():
    """Names written into files and seeds keep the package path they were made
    with (gq_tf.asr, before the application became gq_speech): the built-in
    corpus's sentences for a seed and the streaming export's format."""
    import hashlib

    from gq_speech import deploy

    sentences = domain_sentences(50, seed=0)
    assert hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16] == "6a47134fb870f1e3"
    assert deploy.FORMAT == "gq_tf.asr.streaming/1"
