"""C kernels (``converters/kernels/``: the reference and every qd8 variant this
CPU runs) and the flexbuffer reader (``converters/delegate/flexbuf.c``), run
through the driver ``tests/support/c/test_gq_fc.c``.

The truth stays in Python: the packed bytes come from ``converters.layout.pack``,
the expected outputs from ``gq_tf.reference.fully_connected`` (float64), the
flexbuffers from ``flatbuffers.flexbuffers``. This file writes them into the
binary case files the driver reads (formats in the driver's header comment),
and every test runs twice: a ``-O2 -Werror`` build and an AddressSanitizer +
UndefinedBehaviorSanitizer build that aborts on the first report.

Tolerance of the kernel outputs. x, the centroids and the bias are float32 and
fed to the float64 reference unchanged, so the only difference is the kernel's
float32 arithmetic. Every term x_i * w_i goes through one rounding for the
product and at most ``min(in, 64) + ceil(in / 64)`` roundings of additions (a
sum inside its 64-weight block, then one add per block into an accumulator that
starts at the bias), at most ``in + 2`` in all. The classic bound for such a sum
is ``|y - y_exact| <= gamma(in + 2) * (sum_i |x_i||w_i| + |bias|)`` with
``gamma(n) = n u / (1 - n u)``, ``u = 2**-24``; the activations are clamps,
1-Lipschitz, so the bound holds after them too. It is rigorous (no flaky
margin) and still tight enough that one wrong index or one x read past ``in``
costs far more than it: such an error is a whole term, ~1/in of the scale,
against ~in * 6e-8 of it.

The qd8 kernels (int8 activations and centroid codes, ``gq_fc.h``) are held
to ``gq_tf.reference.fully_connected_qd8``, the same integer arithmetic in
NumPy: their int32 sums must be exact, so the only allowed difference is the
float32 rounding of the final scale-and-add (2 ulp). One wrong index, one
x rounded differently or one padding weight read changes the sum by a whole
code and fails. The aarch64 variants run on the same cases under qemu
(``test_c_kernel_arm.py``).
"""

import itertools
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from flatbuffers import flexbuffers

import gq_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TF)
from converters import cbuild, layout
from gq_tf import reference

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (
    "tests/support/c/test_gq_fc.c",
    *cbuild.KERNEL_SOURCES,
    f"{cbuild.DELEGATE_DIR}/flexbuf.c",
)
INCLUDES = ("-I", str(ROOT / "converters" / "kernels"), "-I", str(ROOT / "converters" / "delegate"))
WARNINGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-Wshadow", "-Wconversion")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
BUILDS = {
    "O2": ("-O2",),
    "asan_ubsan": (*SANITIZE, "-g", "-O1"),
}
# Any of these on stderr fails the test even if the exit code were 0.
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")
RUN_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}

ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6")  # index == enum gq_activation
INS = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200)
OUTS = (1, 3, 8, 16, 17, 33, 64)
BATCHES = (1, 2, 5)
BIG_BATCHES = (3, 8, 15, 16, 17, 33, 64)
# (1030, 9): 17 blocks, the AVX-512 batch tiles' grouped decoding with a leftover block
BIG_SHAPES = ((129, 15), (64, 17), (200, 33), (65, 64), (31, 9), (1030, 9))

# enum gq_flex_status
OK, MALFORMED, NOT_MAP, MISSING, WRONG_TYPE = range(5)
GET_INT, GET_STRING, KEY_AT = range(3)


# ---------------------------------------------------------------------------
# Build and run


def _gcc():
    gcc = shutil.which("gcc")
    if gcc is None:
        # setup.py needs it too: without it the package is not installable.
        pytest.fail("gcc not found on PATH: the C kernel tests need a C compiler (apt-get install gcc)")
    return gcc


def _sanitizers_available(gcc, tmp):
    probe = tmp / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    r = subprocess.run([gcc, *SANITIZE, str(probe), "-o", str(tmp / "probe")], check=False, capture_output=True,
                       text=True)
    return r.returncode == 0, r.stderr


@pytest.fixture(scope="module", params=sorted(BUILDS))
def driver(request, tmp_path_factory):
    """Path of the driver built with one flag set (test ids: O2, asan_ubsan)."""
    gcc = _gcc()
    tmp = tmp_path_factory.mktemp(f"gq_c_{request.param}")
    if request.param != "O2":
        ok, err = _sanitizers_available(gcc, tmp)
        if not ok:
            pytest.fail(f"gcc cannot link -fsanitize=address,undefined here (libasan/libubsan missing?): {err[-300:]}")
    return build_driver([gcc], cbuild.arch_of(gcc), BUILDS[request.param], tmp / "test_gq_fc")


def build_driver(cc, arch, flags, exe, link_flags=()):
    """Compiles the driver and the C sources, each file with its own
    instruction-set flags (``converters.cbuild``), and links them."""
    objects = []
    for src in SOURCES:
        obj = exe.parent / (src.replace("/", "_")[:-2] + ".o")
        cmd = [*cc, *WARNINGS, *flags, *cbuild.source_flags(src, arch), *INCLUDES, "-c", str(ROOT / src),
               "-o", str(obj)]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        assert r.returncode == 0, f"compile failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}"
        assert not r.stderr.strip(), f"compiler printed diagnostics:\n{r.stderr}"
        objects.append(str(obj))
    cmd = [*cc, *flags, *link_flags, *objects, "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, f"link failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}"
    return exe


def _run(exe, *args):
    env = dict(os.environ, **RUN_ENV)
    r = subprocess.run([str(exe), *map(str, args)], check=False, capture_output=True, text=True, env=env, timeout=120)
    marks = [m for m in SANITIZER_MARKS if m in r.stderr]
    assert not marks, f"sanitizer report ({marks}):\n{r.stderr[-4000:]}"
    return r


def _run_ok(exe, *args):
    r = _run(exe, *args)
    assert r.returncode == 0, f"driver failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}"
    return r


def test_sanitizer_build_catches_an_overflow(tmp_path):
    """The sanitizer runs can fail: a one-float heap overflow, built with the
    same flags and run with the same options, is reported and aborts."""
    gcc = _gcc()
    ok, err = _sanitizers_available(gcc, tmp_path)
    if not ok:
        pytest.fail(f"gcc cannot link -fsanitize=address,undefined here: {err[-300:]}")
    src = tmp_path / "overflow.c"
    src.write_text(
        "#include <stdlib.h>\n"
        "int main(int argc, char** argv) {\n"
        "  (void)argv;\n"
        "  float* p = malloc(4 * sizeof(float));\n"
        "  p[argc + 3] = 1.0f;\n"
        "  free(p);\n"
        "  return 0;\n"
        "}\n"
    )
    exe = tmp_path / "overflow"
    subprocess.run([gcc, *WARNINGS, *BUILDS["asan_ubsan"], str(src), "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], check=False, capture_output=True, text=True, env=dict(os.environ, **RUN_ENV),
                       timeout=60)
    # UBSan's object-size check or ASan, whichever sees it first.
    assert r.returncode != 0 and any(m in r.stderr for m in SANITIZER_MARKS), r.stderr


# ---------------------------------------------------------------------------
# Kernel cases


def _gamma(n):
    u = 2.0**-24
    return n * u / (1.0 - n * u)


def _fc_case(rng, case_id, bits, n_in, n_out, batch, activation, has_bias, indices=None):
    if indices is None:
        indices = rng.integers(0, 2**bits, size=(n_out, n_in))
    # Random, distinct, non-zero centroids: a wrong index or a padding weight
    # (index 0) applied to a stray x both change the result.
    centroids = rng.normal(size=2**bits).astype(np.float32)
    # Scaled so outputs are O(3): the clamps of every activation are crossed
    # in both directions at every size.
    x = (rng.normal(size=(batch, n_in)) * 3.0 / np.sqrt(n_in)).astype(np.float32)
    bias = rng.normal(size=n_out).astype(np.float32) if has_bias else None
    expected = reference.fully_connected(x, indices, centroids, bias, activation)
    expected_qd8, tol_qd8, _ = reference.fully_connected_qd8(x, indices, centroids, bias, activation)
    w = np.abs(centroids.astype(np.float64)[indices])
    scale = np.abs(x.astype(np.float64)) @ w.T
    if has_bias:
        scale = scale + np.abs(bias.astype(np.float64))
    return {
        "id": case_id,
        "bits": bits,
        "n_in": n_in,
        "n_out": n_out,
        "batch": batch,
        "act": ACTIVATIONS.index(activation),
        "x": x,
        "indices": np.asarray(indices),
        "packed": layout.pack(indices, bits),
        "centroids": centroids,
        "bias": bias,
        "expected": np.asarray(expected, np.float64),
        "tol": _gamma(n_in + 2) * scale,
        "expected_qd8": np.asarray(expected_qd8, np.float64),
        "tol_qd8": np.asarray(tol_qd8, np.float64),
        "row_bytes": layout.row_bytes(bits, n_in),
        "packed_size": layout.packed_size(bits, n_in, n_out),
    }


def fc_cases(seed=0):
    """Every b x every (in, out) of the grid; batch, bias and activation cycle
    so that each b also sees all 24 of their combinations."""
    rng = np.random.default_rng(seed)
    cases = []
    for bits in range(1, 9):
        for i, (n_in, n_out) in enumerate(itertools.product(INS, OUTS)):
            act = ACTIVATIONS[i % 4]
            has_bias = (i // 4) % 2 == 1
            batch = BATCHES[(i // 8) % 3]
            cases.append(_fc_case(rng, len(cases), bits, n_in, n_out, batch, act, has_bias))
        # Every index value, and every plane's every bit set at once.
        ramp = (np.arange(3 * 129).reshape(3, 129) * 7 + bits) % 2**bits
        cases.append(_fc_case(rng, len(cases), bits, 129, 3, 2, "NONE", True, indices=ramp))
        full = np.full((2, 100), 2**bits - 1)
        cases.append(_fc_case(rng, len(cases), bits, 100, 2, 3, "NONE", False, indices=full))
    # Long rows: many blocks per row.
    for bits in (1, 3, 8):
        cases.append(_fc_case(rng, len(cases), bits, 1000, 5, 3, "NONE", True))
    # Batch tiles of the SIMD kernels (GEMM paths) and their tails.
    for bits in range(1, 9):
        for k, batch in enumerate(BIG_BATCHES):
            n_in, n_out = BIG_SHAPES[(bits + k) % len(BIG_SHAPES)]
            cases.append(_fc_case(rng, len(cases), bits, n_in, n_out, batch, ACTIVATIONS[k % 4], k % 2 == 0))
    return cases


def write_fc_file(path, cases):
    parts = [b"GQFC", struct.pack("<II", 2, len(cases))]
    for c in cases:
        parts.append(
            struct.pack(
                "<7I2Q",
                c["id"],
                c["bits"],
                c["n_in"],
                c["n_out"],
                c["batch"],
                c["act"],
                c["bias"] is not None,
                c["row_bytes"],
                c["packed_size"],
            )
        )
        parts.append(c["x"].astype("<f4").tobytes())
        parts.append(np.asarray(c["packed"], np.uint8).tobytes())
        parts.append(c["centroids"].astype("<f4").tobytes())
        if c["bias"] is not None:
            parts.append(c["bias"].astype("<f4").tobytes())
        parts.append(c["expected"].astype("<f8").tobytes())
        parts.append(np.asarray(c["tol"], np.float64).astype("<f8").tobytes())
        parts.append(c["expected_qd8"].astype("<f8").tobytes())
        parts.append(np.asarray(c["tol_qd8"], np.float64).astype("<f8").tobytes())
    Path(path).write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def fc_file(tmp_path_factory):
    cases = fc_cases()
    path = tmp_path_factory.mktemp("gq_fc_cases") / "fc.bin"
    write_fc_file(path, cases)
    return path, cases


def test_case_grid_covers_the_brief():
    cases = fc_cases()
    for bits in range(1, 9):
        mine = [c for c in cases if c["bits"] == bits]
        assert {c["n_in"] for c in mine} >= set(INS)
        assert {c["n_out"] for c in mine} >= set(OUTS)
        combos = {(c["batch"], c["bias"] is not None, c["act"]) for c in mine}
        assert combos >= set(itertools.product(BATCHES, (False, True), range(len(ACTIVATIONS))))
    # The activations really clamp in these cases (else RELU6 == NONE here).
    relu6 = [c["expected"] for c in cases if c["act"] == 3]
    assert any((e == 6.0).any() for e in relu6) and any((e == 0.0).any() for e in relu6)


def test_api_edge_cases(driver):
    _run_ok(driver, "api")


def _kernel_list(driver):
    return parse_kernel_list(_run_ok(driver, "list").stdout)


def parse_kernel_list(stdout):
    """{name: (supported, qd8)} and auto's choice, from ``test_gq_fc list``."""
    out = stdout.splitlines()
    kernels = {}
    for line in out:
        if line.startswith("kernel "):
            _, name, sup, qd8 = line.split()
            kernels[name] = (sup == "supported=1", qd8 == "qd8=1")
    auto = next(line.split()[1] for line in out if line.startswith("auto "))
    return kernels, auto


def _supported(driver):
    kernels, _ = _kernel_list(driver)
    return sorted(k for k, (sup, _) in kernels.items() if sup)


def test_kernel_list_and_auto_choice(driver):
    kernels, auto = _kernel_list(driver)
    assert {"reference", "scalar"} <= set(kernels)
    assert kernels["reference"] == (True, False) and kernels["scalar"] == (True, True)
    if cbuild.arch_of(_gcc()) == "x86_64":
        assert {"avx2", "avx512"} <= set(kernels)
        best = [k for k in ("avx512", "avx2", "scalar") if kernels[k][0]][0]
        assert auto == best
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        assert kernels["avx2"][0] == ({"avx2", "fma"} <= set(flags))
        assert kernels["avx512"][0] == ({"avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni"} <= set(flags))


def test_every_kernel_matches_reference(driver, fc_file):
    path, cases = fc_file
    r = _run_ok(driver, "fc", path, "all")
    for name in _supported(driver):
        assert f"fc[{name}]: {len(cases)} cases" in r.stdout, r.stdout
    assert sum(line.startswith("fc[") and line.endswith(" 0 failure(s)")
               for line in r.stdout.splitlines()) == len(_supported(driver)), r.stdout


def test_qd8_model_error_within_stated_bound(fc_file):
    """The int8 arithmetic's distance from exact float math stays inside the
    bound gq_fc.h states, and is not trivially small (the bound is used)."""
    _, cases = fc_file
    ratios = []
    for c in cases:
        if c["act"] != 0:
            continue
        _, _, bound = reference.fully_connected_qd8(c["x"], c["indices"], c["centroids"], c["bias"])
        err = np.abs(c["expected_qd8"] - c["expected"])
        assert (err <= bound).all(), c["id"]
        ratios.append((err / bound).max())
    assert 0.05 < max(ratios) <= 1.0


def test_kernel_detects_corrupted_expectation(driver, fc_file, tmp_path):
    """The comparison can fail: one expected value moved by 10 tolerances,
    in the float32 and in the qd8 expectations."""
    _, cases = fc_file
    bad = [dict(c) for c in cases]
    victim = bad[5]
    for key in ("expected", "expected_qd8"):
        tol = "tol" if key == "expected" else "tol_qd8"
        victim[key] = victim[key].copy()
        victim[key].flat[0] += 10 * victim[tol].flat[0] + 1e-3
    path = tmp_path / "bad.bin"
    write_fc_file(path, bad)
    r = _run(driver, "fc", path, "all")
    assert r.returncode == 1, r.stdout + r.stderr
    for name in _supported(driver):
        assert f"FAIL {name} case {victim['id']} " in r.stderr
    assert sum(line.startswith("fc[") and line.endswith(" 1 failure(s)")
               for line in r.stdout.splitlines()) == len(_supported(driver)), r.stdout


def flip_weight_bits(cases, bits):
    """Copies of the cases with bit 0 of the first packed byte flipped in one
    case per b in ``bits``: one without activation (no clamp can hide the
    change) where the flip also changes the int8 codes the qd8 kernels see
    (two centroids can share a code). Returns (cases, victim positions)."""
    bad = [dict(c) for c in cases]

    def visible(c):
        flipped = c["indices"].copy()
        flipped[0, 0] ^= 1
        y2, _, _ = reference.fully_connected_qd8(c["x"], flipped, c["centroids"], c["bias"])
        return (np.abs(y2 - c["expected_qd8"]) > 10 * c["tol_qd8"]).any()

    victims = [next(k for k, c in enumerate(bad) if c["bits"] == b and c["act"] == 0 and visible(c)) for b in bits]
    for k in victims:
        packed = np.array(bad[k]["packed"], np.uint8)
        packed[0] ^= 1
        bad[k]["packed"] = packed
    return bad, victims


def test_kernel_detects_flipped_weight_bit(driver, fc_file, tmp_path):
    """The packed bytes are really decoded: bit 0 of a row's first byte is
    bit 0 of weight 0's index (never padding), so flipping it must change y
    in every kernel. Victims are cases where it also changes the int8 codes
    seen by the qd8 kernels (two centroids can share a code)."""
    _, cases = fc_file
    bad, victims = flip_weight_bits(cases, (1, 5, 8))
    path = tmp_path / "flipped.bin"
    write_fc_file(path, bad)
    r = _run(driver, "fc", path, "all")
    assert r.returncode == 1, r.stdout + r.stderr
    for name in _supported(driver):
        for k in victims:
            assert f"FAIL {name} case {bad[k]['id']} " in r.stderr, (name, r.stderr[-2000:])


# ---------------------------------------------------------------------------
# Flexbuffer cases


def _build(fill, width=flexbuffers.BitWidth.W8):
    fbb = flexbuffers.Builder(force_min_bit_width=width)
    with fbb.Map():
        fill(fbb)
    return bytes(fbb.Finish())


def _root_layout(buf):
    """(values, width, count, key_field) of a valid root map, to corrupt it."""
    root_w, packed = buf[-1], buf[-2]
    root = len(buf) - 2 - root_w
    w = 1 << (packed & 3)
    values = root - int.from_bytes(buf[root : root + root_w], "little")
    count = int.from_bytes(buf[values - w : values], "little")
    return values, w, count


def _patch(buf, pos, value, width):
    b = bytearray(buf)
    b[pos : pos + width] = int(value).to_bytes(width, "little", signed=value < 0)
    return bytes(b)


INT_TYPE = 1 << 2  # packed type of an inline int (its own bit width is unused)


def _hand_map(items, w=1, kw=1, root_w=1, count=None, key_count=None, keys_field=None, extra=b"", key_offsets=None):
    """A root map assembled byte by byte, independent of the Python builder.

    items: (key, value, packed type) with value written as a signed w-byte int.
    The other arguments put lies into the header fields (count, key vector
    count, key vector offset, key offsets; extra bytes before the map prefix)
    to build corruptions that a random mutation practically never hits.
    No alignment padding: a reader must not need it.
    """
    buf = bytearray()
    at = []
    for key, _, _ in items:
        at.append(len(buf))
        buf += key.encode() + b"\0"
    n = len(items)
    buf += (n if key_count is None else key_count).to_bytes(kw, "little")
    keys = len(buf)
    for i, p in enumerate(at):
        off = len(buf) - p if key_offsets is None else key_offsets[i]
        buf += off.to_bytes(kw, "little")
    buf += extra
    field = len(buf)
    buf += (field - keys if keys_field is None else keys_field).to_bytes(w, "little")
    buf += kw.to_bytes(w, "little") + (n if count is None else count).to_bytes(w, "little")
    values = len(buf)
    for _, v, _ in items:
        buf += v.to_bytes(w, "little", signed=True)
    buf += bytes(t for _, _, t in items)
    root = len(buf)
    buf += (root - values).to_bytes(root_w, "little")
    buf += bytes([(9 << 2) | (w.bit_length() - 1), root_w])
    return bytes(buf)


class FlexCase:
    def __init__(self, buf, open_status=OK, count=0):
        self.buf, self.open_status, self.count, self.queries = bytes(buf), open_status, count, []

    def int(self, key, status, value=0):
        self.queries.append((GET_INT, key.encode(), status, value))
        return self

    def str(self, key, status, value=""):
        self.queries.append((GET_STRING, key.encode(), status, value.encode()))
        return self

    def key_at(self, i, status, value=""):
        self.queries.append((KEY_AT, struct.pack("<Q", i), status, value.encode()))
        return self


def _expect_dict(buf, d):
    """Queries that follow from the Python value of every entry."""
    case = FlexCase(buf, OK, len(d))
    for i, k in enumerate(sorted(d, key=lambda s: s.encode())):
        case.key_at(i, OK, k)
        v = d[k]
        if isinstance(v, bool):
            case.int(k, OK, int(v)).str(k, WRONG_TYPE)
        elif isinstance(v, int):
            case.int(k, OK, v).str(k, WRONG_TYPE)
        elif isinstance(v, str):
            case.str(k, OK, v).int(k, WRONG_TYPE)
        else:  # float, None, map, vector, blob
            case.int(k, WRONG_TYPE).str(k, WRONG_TYPE)
    case.key_at(len(d), MISSING).key_at(2**40, MISSING)
    for k in ("", "zzzz", "\x01", "missing_key"):
        if k not in d:
            case.int(k, MISSING).str(k, MISSING)
    return case


OPTIONS = {
    "bits": 3,
    "in_features": 300,
    "out_features": 70000,
    "big": 2**40,
    "neg": -5,
    "neg_wide": -(2**40),
    "min64": -(2**63),
    "max64": 2**63 - 1,
    "flag": True,
    "off": False,
    "layout": "planes64",
    "empty": "",
    "unicode": "gr\u00fc\u00df \u2713",
    "ratio": 0.25,
    "none": None,
    "nested": {"bits": 4},
    "vec": [1, 2, 3],
    "blob": b"\x00\x01",
}


def flex_cases():
    cases = []
    # Python values through Dumps, and the same map at every forced width.
    buf = bytes(flexbuffers.Dumps(OPTIONS))
    assert flexbuffers.Loads(buf) == OPTIONS
    cases.append(_expect_dict(buf, OPTIONS))
    for width in (flexbuffers.BitWidth.W16, flexbuffers.BitWidth.W32, flexbuffers.BitWidth.W64):
        fbb = flexbuffers.Builder(force_min_bit_width=width)
        fbb.Add(OPTIONS)
        wide = bytes(fbb.Finish())
        assert flexbuffers.Loads(wide) == OPTIONS
        cases.append(_expect_dict(wide, OPTIONS))
    small = {"a": 1, "b": 300, "c": -1}
    cases.append(_expect_dict(bytes(flexbuffers.Dumps(small)), small))
    cases.append(_expect_dict(bytes(flexbuffers.Dumps({})), {}))
    # Many keys: 16-bit key offsets and a deep binary search.
    many = {f"k{i:04d}": i * 1000 - 7 for i in range(300)}
    many["long"] = "x" * 70000  # 32-bit length prefix
    cases.append(_expect_dict(bytes(flexbuffers.Dumps(many)), many))

    # Encodings Dumps never chooses: indirect and unsigned scalars, key values.
    def fill(fbb):
        fbb.IndirectInt("ii1", -5, 1)
        fbb.IndirectInt("ii2", -300, 2)
        fbb.IndirectInt("ii4", 70000, 4)
        fbb.IndirectInt("ii8", -(2**40), 8)
        fbb.IndirectUInt("iu1", 200, 1)
        fbb.IndirectUInt("iu8", 2**63 - 1, 8)
        fbb.IndirectUInt("iu8big", 2**63, 8)
        fbb.UInt("u1", 255)
        fbb.UInt("u8", 2**40)
        fbb.UInt("umax", 2**64 - 1)
        fbb.UInt("uhalf", 2**63)
        fbb.IndirectFloat("if", 1.5)
        fbb.Key("kv")
        fbb.Key("key_value")

    buf = _build(fill)
    case = FlexCase(buf, OK, 13)
    for k, v in (("ii1", -5), ("ii2", -300), ("ii4", 70000), ("ii8", -(2**40)), ("iu1", 200)):
        case.int(k, OK, v)
    case.int("iu8", OK, 2**63 - 1).int("iu8big", WRONG_TYPE).int("u1", OK, 255).int("u8", OK, 2**40)
    case.int("umax", WRONG_TYPE).int("uhalf", WRONG_TYPE).int("if", WRONG_TYPE).str("if", WRONG_TYPE)
    case.str("kv", OK, "key_value").int("kv", WRONG_TYPE).str("ii4", WRONG_TYPE)
    cases.append(case)

    # Roots that are not maps.
    for value in (5, -3, 2**40, 1.5, "str", [1, 2], None, True):
        cases.append(FlexCase(flexbuffers.Dumps(value), NOT_MAP))

    # Hand-assembled maps: widths the builder would not pick, checked against
    # the Python reader first so the assembler itself is right.
    for w, kw, root_w in ((1, 8, 1), (8, 1, 2), (2, 4, 8), (4, 2, 4)):
        items = [("a", 1, INT_TYPE), ("bb", -2, INT_TYPE), ("c", 100, INT_TYPE)]
        buf = _hand_map(items, w=w, kw=kw, root_w=root_w)
        assert flexbuffers.Loads(buf) == {"a": 1, "bb": -2, "c": 100}, (w, kw, root_w)
        case = FlexCase(buf, OK, 3).int("a", OK, 1).int("bb", OK, -2).int("c", OK, 100)
        cases.append(case.key_at(1, OK, "bb").int("d", MISSING))
    two = [("a", 1, INT_TYPE), ("b", 2, INT_TYPE)]
    # Both counts agree but the values and type bytes run past the end.
    cases.append(FlexCase(_hand_map(two, count=4, key_count=4), MALFORMED))
    # The key vector holds fewer keys than the map has values.
    cases.append(FlexCase(_hand_map(two, key_count=1), MALFORMED))
    # Key width 3, consistently written: only the width check can refuse it.
    cases.append(FlexCase(_hand_map(two, kw=3), MALFORMED))
    # A key vector (8-byte entries) that starts right at the map prefix, its
    # count planted in front of it: count agrees, the entries overrun len.
    cases.append(FlexCase(_hand_map(two, kw=8, keys_field=0, extra=(2).to_bytes(8, "little")), MALFORMED))
    # An indirect int whose 8-byte target would end past the buffer.
    ind = _hand_map([("a", 0, (6 << 2) | 3)])
    cases.append(FlexCase(ind, OK, 1).int("a", MALFORMED).str("a", WRONG_TYPE))
    # Key 1 points at key 0's offset field: from there to the end of the
    # buffer no byte is 0, so the key has no NUL inside the buffer.
    no_nul_key = _hand_map(two, key_offsets=[5, 1])
    cases.append(FlexCase(no_nul_key, OK, 2).key_at(0, OK, "a").key_at(1, MALFORMED).int("a", MALFORMED))

    # Builder buffers corrupted at known places.
    base = bytes(flexbuffers.Dumps({"bits": 3, "name": "abc", "out": 70000}))
    values, w, count = _root_layout(base)
    for raw in (b"", b"\x00", b"\x24\x01", b"\x00\x24\x03", b"\x00\x24\x09", b"\x00\x24\x10"):
        cases.append(FlexCase(raw, MALFORMED))  # too short or a root width not in 1/2/4/8
    cases.append(FlexCase(base[:-1] + b"\x40", MALFORMED))  # root width 64 > len
    cases.append(FlexCase(base[:-2] + bytes([63 << 2]) + base[-1:], MALFORMED))  # type code 63
    cases.append(FlexCase(base[:-2] + bytes([30 << 2]) + base[-1:], MALFORMED))  # type code 30
    root = len(base) - 2 - base[-1]
    cases.append(FlexCase(_patch(base, root, 250, base[-1]), MALFORMED))  # root offset before 0
    cases.append(FlexCase(_patch(base, root, root - 1, base[-1]), MALFORMED))  # no room for the prefix
    cases.append(FlexCase(_patch(base, values - w, 2**31, w), MALFORMED))  # huge count
    cases.append(FlexCase(_patch(base, values - w, 2**32 - 1, w), MALFORMED))
    cases.append(FlexCase(_patch(base, values - w, count + 1, w), MALFORMED))  # keys disagree
    cases.append(FlexCase(_patch(base, values - 2 * w, 3, w), MALFORMED))  # key width 3
    cases.append(FlexCase(_patch(base, values - 2 * w, 16, w), MALFORMED))  # key width 16
    cases.append(FlexCase(_patch(base, values - 3 * w, 2**31, w), MALFORMED))  # keys before 0
    # A value type byte with an undefined code: that entry is malformed, the
    # others still read.
    types = values + count * w
    bad_type = bytearray(base)
    bad_type[types + 0] = 60 << 2  # entry 0 is "bits"
    cases.append(FlexCase(bad_type, OK, 3).int("bits", MALFORMED).int("out", OK, 70000).str("name", OK, "abc"))
    # The string's offset pointing before the buffer, and its NUL overwritten.
    name_pos = values + 1 * w
    cases.append(FlexCase(_patch(base, name_pos, name_pos + 1, w), OK, 3).str("name", MALFORMED))
    s_off = int.from_bytes(base[name_pos : name_pos + w], "little")
    s_at = name_pos - s_off
    no_nul = bytearray(base)
    no_nul[s_at + 3] = ord("x")
    cases.append(FlexCase(no_nul, OK, 3).str("name", MALFORMED).int("bits", OK, 3))
    # A string length running past the end of the buffer.
    cases.append(FlexCase(_patch(base, s_at - 1, 255, 1), OK, 3).str("name", MALFORMED))
    return cases


def write_flex_file(path, cases):
    parts = [b"GQFX", struct.pack("<II", 1, len(cases))]
    for c in cases:
        parts.append(struct.pack("<I", len(c.buf)) + c.buf)
        parts.append(struct.pack("<IQI", c.open_status, c.count, len(c.queries)))
        for kind, arg, status, value in c.queries:
            parts.append(struct.pack("<BI", kind, len(arg)) + arg + struct.pack("<I", status))
            if status == OK:
                if kind == GET_INT:
                    parts.append(struct.pack("<q", value))
                else:
                    parts.append(struct.pack("<I", len(value)) + value)
    Path(path).write_bytes(b"".join(parts))


def fuzz_buffers(n=600, seed=1234):
    """Valid option maps mutated and truncated in every way that is cheap."""
    rng = np.random.default_rng(seed)
    seeds = [bytes(flexbuffers.Dumps(OPTIONS)), bytes(flexbuffers.Dumps({"bits": 3, "name": "abc"}))]
    fbb = flexbuffers.Builder(force_min_bit_width=flexbuffers.BitWidth.W64)
    fbb.Add({"bits": 3, "in": 300, "s": "x" * 300})
    seeds.append(bytes(fbb.Finish()))
    seeds.append(bytes(flexbuffers.Dumps({f"k{i:03d}": i for i in range(200)})))
    out = []
    for i in range(n):
        b = bytearray(seeds[i % len(seeds)])
        op = (i // len(seeds)) % 6
        if op == 0:  # a few random bytes
            for _ in range(int(rng.integers(1, 5))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
        elif op == 1:  # bytes near the end: root, type, width, map prefix
            for _ in range(int(rng.integers(1, 4))):
                b[len(b) - 1 - int(rng.integers(min(len(b), 24)))] = int(rng.integers(256))
        elif op == 2:  # truncate the front (every offset shifts)
            b = b[int(rng.integers(1, len(b))) :]
        elif op == 3:  # truncate the back (the root moves)
            b = b[: int(rng.integers(0, len(b)))]
        elif op == 4:  # saturate a byte: huge offsets and counts
            b[int(rng.integers(len(b)))] = 0xFF
            b[len(b) - 1 - int(rng.integers(min(len(b), 16)))] = 0xFF
        else:  # pure noise with a plausible tail
            b = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes())
            if len(b) >= 2:
                b[-2] = (9 << 2) | int(rng.integers(4))
                b[-1] = int(rng.choice([1, 2, 4, 8]))
        out.append(bytes(b))
    return out


def write_fuzz_file(path, buffers, keys):
    parts = [b"GQFZ", struct.pack("<II", 1, len(keys))]
    parts += [struct.pack("<I", len(k)) + k for k in keys]
    parts.append(struct.pack("<I", len(buffers)))
    parts += [struct.pack("<I", len(b)) + b for b in buffers]
    Path(path).write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def flex_file(tmp_path_factory):
    cases = flex_cases()
    path = tmp_path_factory.mktemp("gq_flex_cases") / "flex.bin"
    write_flex_file(path, cases)
    return path, cases


def test_flexbuf_reads_python_flexbuffers(driver, flex_file):
    path, cases = flex_file
    r = _run_ok(driver, "flex", path)
    assert f"flex: {len(cases)} buffers" in r.stdout
    assert "0 failure(s)" in r.stdout


def test_flexbuf_detects_corrupted_expectation(driver, tmp_path):
    """The comparison can fail: one expected int and one expected status wrong."""
    bad = flex_cases()
    first = bad[0]
    i = next(j for j, q in enumerate(first.queries) if q[0] == GET_INT and q[2] == OK)
    kind, key, status, value = first.queries[i]
    first.queries[i] = (kind, key, status, value + 1)
    bad[-1].open_status = NOT_MAP
    path = tmp_path / "bad_flex.bin"
    write_flex_file(path, bad)
    r = _run(driver, "flex", path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f'get_int("{key.decode()}"): value' in r.stderr
    assert "2 failure(s)" in r.stdout


def test_flexbuf_survives_mutated_buffers(driver, tmp_path):
    buffers = fuzz_buffers()
    keys = sorted({k.encode() for k in OPTIONS} | {b"", b"in", b"s", b"k100", b"zzz"})
    path = tmp_path / "fuzz.bin"
    write_fuzz_file(path, buffers, keys)
    r = _run_ok(driver, "fuzz", path)
    assert f"fuzz: {len(buffers)} buffers" in r.stdout
    assert "0 failure(s)" in r.stdout
    # The mutations must reach past open(): some maps still open and answer.
    opened = int(r.stdout.split(" opened")[0].split(", ")[-1].split()[0])
    assert opened > 50, r.stdout


# ---------------------------------------------------------------- LSTM cell

CELL_UNITS = (1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 128, 200)
CELL_SCALES = (0.1, 1.0, 4.0, 30.0)  # pre-activations from linear to fully saturated


def cell_tolerance(c_prev):
    """The bound gq_fc.h states for one cell update (c, h) against exact math
    on the same float32 pre-activations: each sigmoid and tanh within 4e-7, so
    c moves by at most 1e-6 (2 + |c|) and h, through tanh(c) (1-Lipschitz) and
    the output gate, by at most 1e-6 (3 + |c|). The margin over the rounding
    of the few float32 products is wide, yet one gate read from the wrong
    quarter or a wrong unit costs ~0.1 and fails."""
    a = np.abs(c_prev.astype(np.float64))
    return 1e-6 * (2 + a), 1e-6 * (3 + a)


def cell_cases(seed=0):
    """Every unit count (SIMD widths 4, 8, 16 and their +-1 tails) x every
    pre-activation scale, plus exact zeros and +-100 (saturated gates)."""
    rng = np.random.default_rng(seed)
    cases = []
    for units in CELL_UNITS:
        for scale in CELL_SCALES:
            z = (rng.standard_normal(4 * units) * scale).astype(np.float32)
            xp = (rng.standard_normal(4 * units) * scale).astype(np.float32)
            c = (rng.standard_normal(units) * 2).astype(np.float32)
            if units >= 4:
                z[:3], xp[:3] = (0.0, 100.0, -100.0), 0.0
            a = (z + xp).astype(np.float64)  # the float32 sum the C code forms
            sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
            i, f, g, o = np.split(a, 4)
            c_new = sig(f) * c.astype(np.float64) + sig(i) * np.tanh(g)
            h_new = sig(o) * np.tanh(c_new)
            c_tol, h_tol = cell_tolerance(c)
            cases.append({"id": len(cases), "units": units, "z": z, "xp": xp, "c": c, "c_expected": c_new,
                          "h_expected": h_new, "c_tol": c_tol, "h_tol": h_tol})
    return cases


def write_cell_file(path, cases):
    parts = [b"GQLC", struct.pack("<II", 1, len(cases))]
    for c in cases:
        parts.append(struct.pack("<II", c["id"], c["units"]))
        for key in ("z", "xp", "c"):
            parts.append(np.asarray(c[key], "<f4").tobytes())
        for key in ("c_expected", "h_expected", "c_tol", "h_tol"):
            parts.append(np.asarray(c[key], "<f8").tobytes())
    Path(path).write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def cell_file(tmp_path_factory):
    cases = cell_cases()
    path = tmp_path_factory.mktemp("gq_cell_cases") / "cell.bin"
    write_cell_file(path, cases)
    return path, cases


def test_every_lstm_cell_within_stated_bound(driver, cell_file):
    path, cases = cell_file
    r = _run_ok(driver, "cell", path, "all")
    for name in _supported(driver):
        assert f"cell[{name}]: {len(cases)} cases" in r.stdout, r.stdout
    done = [line for line in r.stdout.splitlines() if line.startswith("cell[") and "skipped" not in line]
    assert len(done) == len(_supported(driver)) and all(line.endswith(" 0 failure(s)") for line in done), r.stdout


def test_lstm_cell_detects_a_wrong_gate(driver, cell_file, tmp_path):
    """The comparison can fail: expectations computed with the input and
    forget gates swapped fail in every variant."""
    _, cases = cell_file
    bad = [dict(c) for c in cases]
    victim = next(c for c in bad if c["units"] == 17 and c.get("id", 0) % 4 == 1)
    a = (victim["z"] + victim["xp"]).astype(np.float64)
    i, f, g, o = np.split(a, 4)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    victim["c_expected"] = sig(i) * victim["c"].astype(np.float64) + sig(f) * np.tanh(g)
    path = tmp_path / "bad_cell.bin"
    write_cell_file(path, bad)
    r = _run(driver, "cell", path, "all")
    assert r.returncode == 1, r.stdout + r.stderr
    for name in _supported(driver):
        assert f"FAIL {name} cell case {victim['id']} " in r.stderr, r.stderr[-2000:]
