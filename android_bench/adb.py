"""A small client for the ``adb`` command-line tool.

Everything goes through the real ``adb`` binary (``--adb PATH`` or ``adb`` on
PATH), one subprocess per command. Failures become :class:`BenchError`s that
say what happened and what to do; a device that goes away during a run
raises :class:`DeviceLost` so the caller can keep what it has measured.

Remote exit codes: ``adb shell`` only returns the remote command's status on
devices with the shell protocol (Android 7+), so :meth:`Adb.shell` appends an
``echo`` of ``$?`` with a marker and reads the status from the output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from android_bench.errors import CLI, BenchError, Wording

_EXIT_MARKER = "__GQ_BENCH_EXIT__="
# Device states `adb devices` lists and what the user can do about each.
_STATE_HELP = {
    "unauthorized": "unlock the phone and accept the 'Allow USB debugging?' prompt "
    "(tick 'Always allow from this computer'), then run again",
    "offline": "reconnect the cable or run `adb kill-server && adb start-server`; if it stays "
    "offline, revoke USB debugging authorizations in Developer options and reconnect",
    "no permissions": "the USB device node is not accessible to this user: add a udev rule "
    "for the phone (see the Android docs 'Run apps on a hardware device') or run adb as root",
    "recovery": "the device is in recovery mode: reboot it into Android",
    "bootloader": "the device is in the bootloader: reboot it into Android",
    "sideload": "the device is in sideload mode: reboot it into Android",
}


class DeviceLost(BenchError):
    """The device disconnected (or stopped answering) in the middle of a run."""


@dataclass(frozen=True)
class Device:
    serial: str
    state: str
    details: str = ""


def find_adb(adb: str | None = None, wording: Wording = CLI) -> str:
    """Absolute path of the adb binary: ``adb`` as given (a path or a name on PATH).

    ``wording`` names the setting in messages (``--adb`` or ``adb=``).

    Raises:
      BenchError: not found or not executable, with how to install it.
    """
    name = adb or "adb"
    has_dir = os.sep in name or (os.altsep and os.altsep in name)
    path = name if has_dir else shutil.which(name)
    if path is None or not os.path.isfile(path):
        where = f"at {name!r}" if has_dir else f"on PATH ({name!r})"
        raise BenchError(
            f"adb was not found {where}. Install Android's platform-tools: on Debian/Ubuntu "
            "`sudo apt-get install adb`, elsewhere the SDK Platform Tools download "
            "(https://developer.android.com/tools/releases/platform-tools), or Android "
            f"Studio's SDK Manager; then put it on PATH or pass {wording.setting('adb', 'PATH')}."
        )
    if not os.access(path, os.X_OK):
        raise BenchError(f"adb at {path!r} is not executable (chmod +x it or pass another "
                         f"{wording.setting('adb', 'PATH')}).")
    return os.path.abspath(path)


def parse_devices(text: str) -> list[Device]:
    """Devices of ``adb devices -l`` output (``serial<TAB or spaces>state [details]``)."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("*"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        serial, rest = parts
        # "no permissions (...)" is a two-word state.
        if rest.startswith("no permissions"):
            state, details = "no permissions", rest[len("no permissions"):].strip()
        else:
            state, _, details = rest.partition(" ")
        devices.append(Device(serial, state, details.strip()))
    return devices


class Adb:
    """The adb binary bound to one device (after :meth:`select`).

    ``wording`` names the settings in messages: the command line's flags
    (``--serial``, the default) or ``android_bench.benchmark``'s arguments.
    """

    def __init__(self, adb: str | None = None, serial: str | None = None, *, timeout: float = 60.0,
                 wording: Wording = CLI):
        self.wording = wording
        self.path = find_adb(adb, wording)
        self.serial = serial
        self.timeout = timeout

    # -- plumbing -----------------------------------------------------------

    def _base(self):
        return [self.path] + (["-s", self.serial] if self.serial else [])

    def _run(self, args, *, timeout=None, device=True):
        cmd = (self._base() if device else [self.path]) + list(args)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                  timeout=timeout or self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            if device:
                self._check_alive(f"`{' '.join(args[:2])}` timed out after {e.timeout:.0f} s")
            raise BenchError(f"`adb {' '.join(args)}` timed out after {e.timeout:.0f} s.") from None
        except OSError as e:
            raise BenchError(f"Could not run adb at {self.path!r}: {e}") from None

    def _check_alive(self, what: str):
        """Raises DeviceLost when the selected device is no longer connected."""
        try:
            r = subprocess.run(self._base() + ["get-state"], capture_output=True, text=True,
                               errors="replace", timeout=15, stdin=subprocess.DEVNULL)
            state = r.stdout.strip() if r.returncode == 0 else ""
        except (subprocess.TimeoutExpired, OSError):
            state = ""
        if state != "device":
            seen = state or "not connected"
            raise DeviceLost(f"Device {self.serial} is gone ({seen}) after {what}.")

    def version(self) -> str:
        r = self._run(["version"], device=False, timeout=15)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "unknown"

    # -- devices ------------------------------------------------------------

    def devices(self) -> list[Device]:
        r = self._run(["devices", "-l"], device=False, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"`adb devices` failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
        return parse_devices(r.stdout)

    def select(self) -> Device:
        """Picks the device (``serial`` if given) and checks it is usable.

        Raises:
          BenchError: no device, several devices without a serial, the serial
            not connected, or a device that is unauthorized/offline/...
        """
        w = self.wording
        devices = self.devices()
        if self.serial:
            chosen = [d for d in devices if d.serial == self.serial]
            if not chosen:
                listed = ", ".join(f"{d.serial} ({d.state})" for d in devices) or "none"
                raise BenchError(f"Device {self.serial!r} ({w.name('serial')}) is not connected. "
                                 f"Connected: {listed}.")
            device = chosen[0]
        elif not devices:
            raise BenchError(
                "No Android device found (`adb devices` lists none). Connect the phone by USB, "
                "enable Developer options > USB debugging, accept the prompt on the phone, and "
                f"check with `adb devices`. To measure on this machine instead, use {w.host}."
            )
        elif len(devices) > 1:
            listed = "\n".join(f"  {d.serial}  {d.state}  {d.details}".rstrip() for d in devices)
            raise BenchError(f"{len(devices)} devices are connected; choose one with "
                             f"{w.setting('serial', 'SERIAL')}:\n{listed}")
        else:
            device = devices[0]
        if device.state != "device":
            hint = _STATE_HELP.get(device.state, "check the phone and `adb devices`")
            raise BenchError(f"Device {device.serial} is {device.state!r}, not ready: {hint}.")
        self.serial = device.serial
        return device

    # -- commands -----------------------------------------------------------

    def shell(self, command: str, *, timeout: float | None = None) -> tuple[int, str]:
        """Runs ``command`` in the device's shell; returns (exit status, output).

        stdout and stderr of the command come back as one text (the command
        should redirect ``2>&1`` itself to keep their order).

        Raises:
          DeviceLost: the device went away (then nothing can be read back).
        """
        r = self._run(["shell", f"{command}; echo {_EXIT_MARKER}$?"], timeout=timeout)
        out = r.stdout
        status = None
        head, sep, tail = out.rpartition(_EXIT_MARKER)
        if sep:
            digits = tail.strip().split()[0] if tail.strip() else ""
            if digits.isdigit():
                status, out = int(digits), head
        if status is None:
            # No marker: adb itself failed (or the shell died) before the echo.
            self._check_alive(f"`adb shell {command[:60]}`")
            raise BenchError(
                f"`adb shell` failed (adb exit {r.returncode}) running: {command}\n"
                f"{(r.stderr + r.stdout).strip()[-2000:]}"
            )
        return status, out

    def push(self, local: str, remote: str, *, timeout: float | None = None):
        r = self._run(["push", local, remote], timeout=timeout or max(self.timeout, 300))
        if r.returncode != 0:
            self._check_alive(f"pushing {local}")
            raise BenchError(f"`adb push {local} {remote}` failed: {(r.stderr or r.stdout).strip()}")

    def pull(self, remote: str, local: str, *, timeout: float | None = None):
        r = self._run(["pull", remote, local], timeout=timeout or max(self.timeout, 300))
        if r.returncode != 0:
            self._check_alive(f"pulling {remote}")
            raise BenchError(f"`adb pull {remote} {local}` failed: {(r.stderr or r.stdout).strip()}")
