"""Where a benchmark session runs: an Android device over adb, or this machine.

Both targets run one *session* the same way: a fresh process of a
benchmark_model-compatible binary, pinned to a CPU mask, in a private run
folder, with the model, the delegate (for GQ models) and the flags the
protocol (``run.py``) chooses; they return its exit status and text output.

- :class:`DeviceTarget`: TFLite's stock ``benchmark_model`` for the device's
  ABI, pushed with our delegate and the models to a run folder under
  ``/data/local/tmp``, run under ``taskset``; the folder is removed at the end.
- :class:`HostTarget`: ``python -m android_bench.hostbench`` (LiteRT + the
  delegate in-process, printing benchmark_model's format) or a host
  ``benchmark_model`` binary, pinned with ``sched_setaffinity``.

Op profiles (``run --op-profile``): a target whose binary is a real
``benchmark_model`` (:attr:`native_op_profiler`) runs one more session with
``--enable_op_profiling=true``; the host without one runs ``python -m
android_bench profile`` in a fresh pinned process instead
(:meth:`HostTarget.op_profile_session`, see ``opprofile.py``).
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from android_bench.adb import Adb, DeviceLost
from android_bench.errors import CLI, BenchArgumentError, BenchError, Wording

REMOTE_ROOT = "/data/local/tmp"
BINARY_NAME = "benchmark_model"
DELEGATE_NAME = "libgq_delegate.so"

# ELF e_machine of each Android ABI.
ABI_MACHINES = {"arm64-v8a": 183, "armeabi-v7a": 40, "x86_64": 62, "x86": 3}
_MACHINE_NAMES = {183: "aarch64 (arm64-v8a)", 40: "32-bit ARM (armeabi-v7a)", 62: "x86-64", 3: "x86 (i386)"}

# One shell script gathers the facts (one adb round trip). Works in Android's
# mksh/toybox and in any POSIX sh.
_FACTS_PROPS = {
    "manufacturer": "ro.product.manufacturer",
    "model": "ro.product.model",
    "device": "ro.product.device",
    "abi": "ro.product.cpu.abi",
    "abilist": "ro.product.cpu.abilist",
    "android": "ro.build.version.release",
    "sdk": "ro.build.version.sdk",
    "fingerprint": "ro.build.fingerprint",
    "soc": "ro.soc.model",
    "hardware": "ro.hardware",
}
CPU_SCRIPT = (
    "for c in /sys/devices/system/cpu/cpu[0-9]*; do "
    "f=$(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null); "
    "g=$(cat $c/cpufreq/scaling_governor 2>/dev/null); "
    "o=$(cat $c/online 2>/dev/null); "
    'echo "cpu=${c##*/cpu} ${f:--} ${g:--} ${o:-1}"; done'
)


@dataclass(frozen=True)
class Cpu:
    index: int
    max_khz: int | None
    governor: str | None
    online: bool


def cpu_model() -> str:
    """This machine's CPU model (``/proc/cpuinfo``'s model name, else the platform's name)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_cpus(text: str) -> list[Cpu]:
    """CPUs of :data:`CPU_SCRIPT`'s output (``cpu=N maxkhz|- governor|- online``)."""
    cpus = []
    for line in text.splitlines():
        if not line.startswith("cpu="):
            continue
        parts = line[4:].split()
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        idx, freq, gov, online = parts
        cpus.append(Cpu(int(idx), int(freq) if freq.isdigit() else None,
                        None if gov == "-" else gov, online != "0"))
    return sorted(cpus, key=lambda c: c.index)


def big_core_mask(cpus: list[Cpu]) -> tuple[int, str]:
    """(taskset mask, explanation): the cores outside the slowest cluster.

    Clusters are told apart by ``cpuinfo_max_freq``. With two or more
    distinct maxima the cores above the lowest one are "big" (on a 4+3+1
    phone: the 3 mid and the prime core). With one cluster, or no cpufreq,
    every core is used.
    """
    if not cpus:
        return 0, "no CPU listed under /sys/devices/system/cpu"
    freqs = sorted({c.max_khz for c in cpus if c.max_khz})
    if len(freqs) >= 2:
        big = [c.index for c in cpus if c.max_khz and c.max_khz > freqs[0]]
        mhz = ", ".join(f"{f // 1000}" for f in freqs)
        why = (f"big cores {cpu_list(mask_of(big))} (cpufreq max per cluster: {mhz} MHz; "
               f"the {freqs[0] // 1000} MHz cluster left out)")
        return mask_of(big), why
    why = "all cores (one cpufreq cluster)" if freqs else "all cores (no cpufreq information)"
    return mask_of(c.index for c in cpus), why


def mask_of(indices) -> int:
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


def cpu_list(mask: int) -> str:
    """``0xf0`` -> ``"4-7"``, ``0b1011`` -> ``"0-1,3"``."""
    bits = [i for i in range(mask.bit_length()) if mask >> i & 1]
    runs, start = [], None
    for j, b in enumerate(bits):
        if start is None:
            start = b
        if j + 1 == len(bits) or bits[j + 1] != b + 1:
            runs.append(f"{start}" if start == b else f"{start}-{b}")
            start = None
    return ",".join(runs)


def parse_mask(text: str, ncpus: int | None = None, wording: Wording = CLI) -> int:
    """A taskset mask given as hex (``f0``, ``0xF0``).

    ``wording`` names the setting in messages (``--cpu-mask`` or ``cpu_mask``).

    Raises:
      BenchArgumentError: not hex, zero, or naming CPUs the target does not have.
    """
    name = wording.name("cpu_mask")
    t = text.strip().lower()
    t = t[2:] if t.startswith("0x") else t
    try:
        mask = int(t, 16)
    except ValueError:
        raise BenchArgumentError(f"Expected {name} as a hex taskset mask such as f0 or 0x0f. "
                                 f"Received {text!r}.") from None
    if mask <= 0:
        raise BenchArgumentError(f"Expected {name} to select at least one CPU. Received {text!r}.")
    if ncpus is not None and mask >> ncpus:
        raise BenchArgumentError(f"{name} {text} selects CPUs {cpu_list(mask)}, but the target has "
                                 f"{ncpus} CPUs (0-{ncpus - 1}).")
    return mask


def elf_machine(path: str | os.PathLike) -> int | None:
    """The ELF e_machine of a file, or None when it is not an ELF file."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


def check_abi(path: str, what: str, abis: list[str]) -> int | None:
    """Checks that an ELF file runs on one of ``abis``; returns its e_machine."""
    machine = elf_machine(path)
    if machine is None:
        return None
    allowed = {ABI_MACHINES[a] for a in abis if a in ABI_MACHINES}
    if allowed and machine not in allowed:
        raise BenchError(
            f"{what} {path!r} is built for {_MACHINE_NAMES.get(machine, f'ELF machine {machine}')}, "
            f"but the device runs {', '.join(abis)}. Use a build for {abis[0]}"
            + (" (`python -m android_bench build-delegate --abi " + abis[0] + "` for the delegate)."
               if "delegate" in what else ".")
        )
    return machine


class DeviceTarget:
    """An Android device reached through adb."""

    kind = "device"
    # benchmark_model's own profiler (--enable_op_profiling) gives the op profile.
    native_op_profiler = True

    def __init__(self, adb: Adb, *, log=print):
        self.adb = adb
        self.log = log
        self.run_dir: str | None = None
        self._models: list[str] = []
        self._delegate: str | None = None
        self._baseline_files: set[str] = set()

    def facts(self) -> dict:
        script = "; ".join(f'echo "{k}=$(getprop {p})"' for k, p in _FACTS_PROPS.items())
        status, out = self.adb.shell(f"{script}; echo \"kernel=$(uname -r)\"; {CPU_SCRIPT}", timeout=60)
        facts = {"serial": self.adb.serial}
        for line in out.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and (key in _FACTS_PROPS or key == "kernel"):
                facts[key] = value.strip()
        cpus = parse_cpus(out)
        facts["cores"] = len(cpus)
        facts["cpus"] = [asdict(c) for c in cpus]
        facts["governors"] = sorted({c.governor for c in cpus if c.governor})
        mask, why = big_core_mask(cpus)
        facts["big_core_mask"] = f"{mask:x}" if mask else None
        facts["big_core_mask_reason"] = why
        facts["adb"] = self.adb.version()
        return facts

    def abis(self, facts: dict) -> list[str]:
        listed = [a for a in (facts.get("abilist") or "").split(",") if a]
        return listed or ([facts["abi"]] if facts.get("abi") else [])

    def setup(self, binary: str, delegate: str | None, models: list[Path]):
        """Creates the run folder and pushes binary, delegate and models into it."""
        self.run_dir = f"{REMOTE_ROOT}/gq_bench_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
        q = shlex.quote(self.run_dir)
        status, out = self.adb.shell(f"mkdir -p {q}")
        if status != 0:
            raise BenchError(f"Could not create {self.run_dir} on the device: {out.strip()}")
        self.log(f"pushing to {self.run_dir}: {BINARY_NAME}" + (f", {DELEGATE_NAME}" if delegate else "")
                 + f", {len(models)} model(s)")
        self.adb.push(binary, f"{self.run_dir}/{BINARY_NAME}")
        if delegate:
            self._delegate = f"{self.run_dir}/{DELEGATE_NAME}"
            self.adb.push(delegate, self._delegate)
        for i, m in enumerate(models):
            remote = f"{self.run_dir}/m{i}_{m.name}"
            self.adb.push(str(m), remote)
            self._models.append(remote)
        status, out = self.adb.shell(f"chmod 755 {q}/{BINARY_NAME}")
        if status != 0:
            raise BenchError(f"chmod of the benchmark binary failed on the device: {out.strip()}")
        self._baseline_files = set(self._list())

    def model_path(self, i: int) -> str:
        return self._models[i]

    @property
    def delegate_path(self) -> str | None:
        return self._delegate

    def session(self, flags: list[str], mask: int, timeout: float) -> tuple[int, str]:
        cmd = (f"cd {shlex.quote(self.run_dir)} && taskset {mask:x} ./{BINARY_NAME} "
               + " ".join(shlex.quote(f) for f in flags) + " 2>&1")
        return self.adb.shell(cmd, timeout=timeout)

    def _list(self) -> list[str]:
        status, out = self.adb.shell(f"ls -1 {shlex.quote(self.run_dir)}")
        return [n.strip() for n in out.splitlines() if n.strip()] if status == 0 else []

    def collect_files(self, dest: Path, prefix: str) -> list[str]:
        """Pulls files a session wrote into the run folder (then deletes them there)."""
        new = [n for n in self._list() if n not in self._baseline_files]
        if not new:
            return []
        dest.mkdir(parents=True, exist_ok=True)
        pulled = []
        for name in new:
            local = dest / f"{prefix}{name}"
            self.adb.pull(f"{self.run_dir}/{name}", str(local))
            self.adb.shell(f"rm -rf {shlex.quote(self.run_dir + '/' + name)}")
            pulled.append(str(local))
        return pulled

    def cleanup(self) -> str | None:
        """Removes the run folder; returns a warning when that was not possible."""
        if not self.run_dir:
            return None
        try:
            status, out = self.adb.shell(f"rm -rf {shlex.quote(self.run_dir)}", timeout=60)
        except DeviceLost:
            return f"the device is gone: remove {self.run_dir} on it by hand (adb shell rm -rf {self.run_dir})"
        except BenchError as e:
            return f"could not remove {self.run_dir} on the device: {e}"
        if status != 0:
            return f"could not remove {self.run_dir} on the device: {out.strip()}"
        return None


class HostTarget:
    """This machine: sessions are fresh local processes."""

    kind = "host"

    def __init__(self, binary: str | None = None, *, log=print):
        self.binary = binary
        self.log = log
        self.run_dir: str | None = None
        self._models: list[str] = []
        self._delegate: str | None = None

    def facts(self) -> dict:
        out = subprocess.run(["sh", "-c", CPU_SCRIPT], capture_output=True, text=True).stdout
        cpus = parse_cpus(out)
        allowed = sorted(os.sched_getaffinity(0))
        mask, why = big_core_mask([c for c in cpus if c.index in allowed] or
                                  [Cpu(i, None, None, True) for i in allowed])
        cpu_name = cpu_model()
        return {
            "host": platform.node(),
            "model": cpu_name,
            "abi": platform.machine(),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "cpus": [asdict(c) for c in cpus],
            "governors": sorted({c.governor for c in cpus if c.governor}),
            "big_core_mask": f"{mask:x}",
            "big_core_mask_reason": why,
        }

    def abis(self, facts: dict) -> list[str]:
        return {"x86_64": ["x86_64"], "aarch64": ["arm64-v8a"]}.get(platform.machine(), [])

    @property
    def native_op_profiler(self) -> bool:
        """Whether sessions run a real benchmark_model (with its op profiler), not hostbench."""
        return self.binary is not None

    def setup(self, binary: str | None, delegate: str | None, models: list[Path]):
        self.run_dir = tempfile.mkdtemp(prefix="gq_bench_")
        self._delegate = delegate
        self._models = [str(Path(m).resolve()) for m in models]

    def model_path(self, i: int) -> str:
        return self._models[i]

    @property
    def delegate_path(self) -> str | None:
        return self._delegate

    def command(self) -> list[str]:
        if self.binary:
            return [self.binary]
        return [sys.executable, "-m", "android_bench.hostbench"]

    def session(self, flags: list[str], mask: int, timeout: float) -> tuple[int, str]:
        cpus = {i for i in range(mask.bit_length()) if mask >> i & 1}
        try:
            r = subprocess.run(self.command() + flags, cwd=self.run_dir, capture_output=True,
                               text=True, errors="replace", timeout=timeout,
                               stdin=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        except subprocess.TimeoutExpired as e:
            return 124, f"ERROR: the session timed out after {e.timeout:.0f} s\n"
        except (OSError, subprocess.SubprocessError) as e:
            raise BenchError(f"Could not start the host benchmark {self.command()[0]!r}: {e}") from None
        return r.returncode, r.stdout + r.stderr

    def op_profile_session(self, i: int, json_path: Path, runs: int, threads: int, kernel: str | None,
                           mask: int, timeout: float) -> tuple[int, str]:
        """Profiles model ``i`` with ``python -m android_bench profile`` in a fresh pinned process.

        The profile is written to ``json_path``; returns the exit status and
        the process's text output (empty on success: it runs ``--quiet``).
        """
        cmd = [sys.executable, "-m", "android_bench", "profile", self._models[i], "--runs", str(runs),
               "--threads", str(threads), "--json", str(json_path), "--quiet"]
        if kernel:
            cmd += ["--kernel", kernel]
        cpus = {c for c in range(mask.bit_length()) if mask >> c & 1}
        try:
            r = subprocess.run(cmd, cwd=self.run_dir, capture_output=True, text=True, errors="replace",
                               timeout=timeout, stdin=subprocess.DEVNULL,
                               preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        except subprocess.TimeoutExpired as e:
            return 124, f"ERROR: the op profile timed out after {e.timeout:.0f} s\n"
        except (OSError, subprocess.SubprocessError) as e:
            raise BenchError(f"Could not start the host op profiler {sys.executable!r}: {e}") from None
        return r.returncode, r.stdout + r.stderr

    def collect_files(self, dest: Path, prefix: str) -> list[str]:
        names = sorted(os.listdir(self.run_dir))
        if not names:
            return []
        dest.mkdir(parents=True, exist_ok=True)
        moved = []
        for name in names:
            target = dest / f"{prefix}{name}"
            shutil.move(os.path.join(self.run_dir, name), target)
            moved.append(str(target))
        return moved

    def cleanup(self) -> str | None:
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return None
