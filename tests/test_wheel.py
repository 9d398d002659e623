"""The built distributions are complete: a wheel installed outside the checkout runs the application.

``pip wheel`` of the source tree must ship the four packages (gq_tf <-
converters <- android_bench <- gq_speech), the C delegate
``converters/libgq_delegate.so`` built by setup.py's build_ext, and
gq_speech's model configs and recipes (package data: without them
``gq-tf asr demo`` cannot work from an installed package). The wheel is
installed (``--no-deps``) into a fresh virtual environment that sees this
environment's dependencies (TensorFlow, piper, ...) through a ``.pth`` line
but not the editable checkout, and its ``gq-tf asr run tiny`` runs from a
folder outside the repository. The sdist must hold what the wheel build
needs (the C headers in particular).

Build outputs go to the test's temporary folder (``DIST_EXTRA_CONFIG``
points setuptools' ``build`` and ``egg_info`` there), so the checkout's
``build/`` is neither used (stale files would leak into the wheel) nor
changed. About 1-2 minutes for the wheel (it compiles the delegate) and
2-5 minutes for the recipe on 2 cores.
"""

import json
import os
import runpy
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import gq_tf

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gq_tf", "converters", "android_bench", "gq_speech")
DATA_DIRS = ("gq_speech/configs", "gq_speech/recipes")
LIBRARY = "converters/libgq_delegate.so"
RUNNER = "android_bench/native/gq_stream"
TINY_VARIANTS = ["float", "uniform8", "cluster16", "gq_mixed", "gq_auto"]

pytestmark = pytest.mark.slow


def _env(**extra):
    """The environment without Python's own variables (PYTHONPATH could let the checkout in)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "DIST_EXTRA_CONFIG", "PIP_TARGET", "PIP_PREFIX")}
    env.update(PYTHONNOUSERSITE="1", **extra)
    return env


def _run(cmd, *, cwd, timeout, what, env=None):
    """Runs ``cmd``; fails the test with its output tail when it fails or times out."""
    cmd = [str(c) for c in cmd]
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        # Always bytes, whatever text= says.
        out = (e.stdout or b"").decode(errors="replace")[-6000:] + (e.stderr or b"").decode(errors="replace")[-6000:]
        pytest.fail(f"{what}: timed out after {timeout} s: {' '.join(cmd)} (in {cwd})\n{out}")
    if r.returncode != 0:
        pytest.fail(f"{what}: exit {r.returncode}: {' '.join(cmd)} (in {cwd})\n"
                    f"--- stdout (tail)\n{r.stdout[-6000:]}\n--- stderr (tail)\n{r.stderr[-6000:]}")
    return r


def _source_files():
    """Relative paths the wheel must hold: every module of the four packages and every data file."""
    wanted = set()
    for pkg in PACKAGES:
        wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    for folder in DATA_DIRS:
        files = [p for p in (ROOT / folder).iterdir() if p.is_file()]
        assert files, f"Expected model configs/recipes in the source tree at {ROOT / folder}. Received none."
        wanted |= {p.relative_to(ROOT).as_posix() for p in files}
    return wanted


@pytest.fixture(scope="module")
def build_env(tmp_path_factory):
    """An environment whose setuptools builds in a temporary folder, not in the checkout."""
    folder = tmp_path_factory.mktemp("setuptools")
    cfg = folder / "extra.cfg"
    cfg.write_text(f"[build]\nbuild_base = {folder / 'build'}\n[egg_info]\negg_base = {folder}\n")
    return _env(DIST_EXTRA_CONFIG=str(cfg))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, build_env):
    """The wheel ``pip wheel`` builds from the source tree (compiles the C delegate)."""
    dist = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, ROOT],
         cwd=dist, env=build_env, timeout=1200,
         what="Expected `pip wheel` of the source tree to build (it needs a C11 compiler, e.g. gcc)")
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, f"Expected one wheel from `pip wheel --no-deps`. Received {[w.name for w in wheels]}."
    return wheels[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    """A fresh virtual environment with the wheel installed and this environment's site-packages visible.

    The site-packages folders are listed in a ``.pth`` file: folders added by
    a ``.pth`` line are not scanned for ``.pth`` files themselves, so the
    editable install's finder there (``__editable__*.pth``) does not load.
    """
    root = tmp_path_factory.mktemp("venv") / "venv"
    outside = root.parent
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=outside, timeout=300,
         what="Expected `python -m venv` to create a virtual environment")
    python = root / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
         cwd=outside, timeout=600, what="Expected the wheel to install into a fresh virtual environment")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=outside, timeout=60, what="Expected the new environment's python to run").stdout.strip())
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    assert deps, f"Expected this environment's site-packages folders. Received {site.getsitepackages()}."
    leaks = [p for p in deps if (Path(p) / "gq_tf" / "__init__.py").exists()]
    assert not leaks, f"Expected gq_tf installed in editable mode here, not copied into {leaks}."
    (purelib / "_gq_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    return {"root": root, "python": python, "bin": root / "bin", "purelib": purelib, "outside": outside,
            "deps": deps}


def test_wheel_holds_packages_data_and_delegate(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = sorted(_source_files() - names)
        assert not missing, (f"Expected every module and data file of the source tree in {wheel.name}. "
                             f"Missing: {missing}")
        for pkg in PACKAGES:
            assert f"{pkg}/__init__.py" in names, f"Expected package {pkg} in {wheel.name}."
        assert LIBRARY in names, f"Expected the C delegate {LIBRARY} in {wheel.name}. Received {sorted(names)}."
        assert z.read(LIBRARY)[:4] == b"\x7fELF", f"Expected {LIBRARY} in the wheel to be an ELF shared library."
        assert RUNNER in names and z.read(RUNNER)[:4] == b"\x7fELF", f"Expected the native runner {RUNNER}."
        assert (z.getinfo(RUNNER).external_attr >> 16) & 0o111, f"Expected {RUNNER} to be executable in the wheel."
        info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {*PACKAGES, info}, (f"Expected only the four packages and {info} in the wheel. "
                                       f"Received {sorted(tops)}.")
    for folder in DATA_DIRS:
        assert any(n.startswith(folder + "/") and n.endswith(".json") for n in names)
    version = next(line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Version:"))
    assert version == gq_tf.__version__, (f"Expected the wheel's version to be gq_tf.__version__ "
                                          f"({gq_tf.__version__}). Received {version}.")
    assert wheel.name.startswith(f"gq_tf-{gq_tf.__version__}-")
    assert "gq-tf = gq_speech.__main__:main" in entry_points
    assert "android-bench = android_bench.__main__:main" in entry_points


def test_sdist_holds_what_the_wheel_build_needs(tmp_path, build_env):
    """The sdist (PEP 517 build_sdist, as `python -m build` calls it) has the C sources and headers."""
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    r = _run([sys.executable, "-c", code, tmp_path], cwd=ROOT, env=build_env, timeout=600,
             what="Expected the sdist to build")
    sdist = tmp_path / r.stdout.strip().splitlines()[-1]
    prefix = f"gq-tf-{gq_tf.__version__}/"
    with tarfile.open(sdist) as t:
        names = {n[len(prefix):] for n in t.getnames() if n.startswith(prefix)}
    cbuild = runpy.run_path(str(ROOT / "converters" / "cbuild.py"))
    runner = runpy.run_path(str(ROOT / "android_bench" / "recognizer.py"))
    wanted = (_source_files() | set(cbuild["DELEGATE_SOURCES"]) | set(cbuild["HEADERS"])
              | set(runner["RUNNER_SOURCES"]) | {"android_bench/native/gq_json.h"}
              | {"setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "converters/cbuild.py"})
    missing = sorted(wanted - names)
    assert not missing, f"Expected {sdist.name} to hold what building the wheel reads. Missing: {missing}"


def test_installed_packages_come_from_the_wheel(venv):
    """In the new environment the packages, data and delegate are the installed copies, not the checkout's."""
    probe = """
import importlib.metadata, json, sys
import gq_tf, converters, android_bench, gq_speech
from converters import runtime
from gq_speech import models
from gq_speech import recipe as recipe_mod
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (gq_tf, converters, android_bench, gq_speech)},
    "version": gq_tf.__version__, "dist_version": importlib.metadata.version("gq-tf"),
    "delegate": runtime.delegate_path(), "kernels": len(runtime.kernels()),
    "runner": str(__import__("android_bench.recognizer", fromlist=["host_runner"]).host_runner()),
    "configs": sorted(p.name for p in models.CONFIG_DIR.glob("*.json")), "config_dir": str(models.CONFIG_DIR),
    "recipes": sorted(p.name for p in recipe_mod.RECIPE_DIR.glob("*.json")), "recipe_dir": str(recipe_mod.RECIPE_DIR),
    "path": sys.path, "meta_path": [type(f).__module__ for f in sys.meta_path]}))
"""
    r = _run([venv["python"], "-c", probe], cwd=venv["outside"], timeout=600,
             what="Expected the installed packages to import in the new environment")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    site_dir = venv["purelib"].resolve()
    for name, file in got["files"].items():
        assert Path(file).resolve().is_relative_to(site_dir), (
            f"Expected {name} imported from the new environment ({site_dir}). Received {file}.")
    for key in ("delegate", "runner", "config_dir", "recipe_dir"):
        assert Path(got[key]).resolve().is_relative_to(site_dir), (
            f"Expected {key} under {site_dir}. Received {got[key]}.")
    assert not any("editable" in m for m in got["meta_path"]), (
        f"Expected no editable finder. Received {got['meta_path']}.")
    checkout = [p for p in got["path"] if p and Path(p).resolve() in (ROOT, ROOT / "tests")]
    assert not checkout, f"Expected the checkout off sys.path. Received {checkout}."
    assert got["version"] == got["dist_version"] == gq_tf.__version__
    assert got["kernels"] > 0, "Expected the installed delegate to load and list its kernels."
    assert got["configs"] == sorted(p.name for p in (ROOT / "gq_speech" / "configs").glob("*.json"))
    assert got["recipes"] == sorted(p.name for p in (ROOT / "gq_speech" / "recipes").glob("*.json"))


@pytest.mark.timeout(2400)
def test_installed_gq_tf_runs_the_tiny_recipe(venv):
    """``gq-tf asr run tiny`` of the installed package, from outside the checkout: every stage, reports."""
    out = venv["outside"] / "run"
    env = _env(PATH=f"{venv['bin']}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv["root"]))
    r = _run([venv["bin"] / "gq-tf", "asr", "run", "tiny", "--out", out], cwd=venv["outside"], env=env,
             timeout=2100, what="Expected the installed `gq-tf asr run tiny` to succeed")
    # Paths into this environment's site-packages (warnings of its libraries) are expected; others are not.
    text = r.stdout + r.stderr
    for dep in venv["deps"]:
        text = text.replace(dep, "<deps>")
    leaks = [line for line in text.splitlines() if str(ROOT) in line]
    assert not leaks, f"Expected no path into the checkout in the run's output. Received {leaks[:5]}"
    results = out / "results.json"
    assert results.is_file(), f"Expected {results} after `gq-tf asr run tiny`. Received {sorted(out.iterdir())}."
    res = json.loads(results.read_text())
    assert res["recipe"]["name"] == "tiny"
    assert res["command"].startswith("gq-tf asr run tiny")
    assert [row["variant"] for row in res["rows"]] == TINY_VARIANTS
    for row in res["rows"]:
        assert row["model"] == "rnnt_tiny"
        assert 0 <= row["wer_tflite_test"] <= 5 and row["encoder_p50_ms"] > 0
    assert "| gq_mixed |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
