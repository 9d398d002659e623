#!/usr/bin/env python3
"""A fake ``adb`` for the android_bench tests: a local folder plays the phone.

Only the tests use it (``FakePhone`` writes this file's path as the ``--adb``
binary); nothing on the shipped code path knows about it.

State lives in a JSON file named by ``$FAKE_ADB_STATE``::

    {"devices": [{"serial": "...", "state": "device", "root": "/tmp/...",
                  "details": "product:... model:...", "lose_after_shells": null}],
     "log": "/tmp/.../adb_log.jsonl"}

Each device's ``root`` is its file system: ``/data/local/tmp`` and ``/sys``
in commands are rewritten to ``<root>/data/local/tmp`` and ``<root>/sys``;
``<root>/bin`` comes first on PATH (the tests put ``getprop`` and ``taskset``
stand-ins there). ``lose_after_shells: N`` unplugs the device after N shell
commands: the next command fails the way adb does and the device stays gone.
Every call is appended to the log as JSON (argv, serial, translated command).

Messages and exit statuses follow the real adb's: ``error: no
devices/emulators found``, ``error: more than one device/emulator``,
``error: device 'X' not found``, ``error: device unauthorized.`` ...
"""

import json
import os
import re
import shutil
import subprocess
import sys


def _load():
    path = os.environ["FAKE_ADB_STATE"]
    with open(path) as f:
        return path, json.load(f)


def _save(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def _fail(msg, code=1):
    print(msg, file=sys.stderr)
    return code


def _translate(root, text):
    return re.sub(r"(?<![\w/])/(data/local/tmp|sys)(?=/|\b)", lambda m: f"{root}/{m.group(1)}", text)


def _pick(state, serial):
    devices = state["devices"]
    if serial:
        found = [d for d in devices if d["serial"] == serial]
        if not found:
            return None, f"error: device '{serial}' not found"
        return found[0], None
    if not devices:
        return None, "error: no devices/emulators found"
    if len(devices) > 1:
        return None, "error: more than one device/emulator"
    return devices[0], None


_STATE_ERRORS = {"unauthorized": "error: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set",
                 "offline": "error: device offline"}


def main(argv):
    path, state = _load()
    serial = None
    if argv[:1] == ["-s"]:
        serial, argv = argv[1], argv[2:]
    with open(state["log"], "a") as log:
        log.write(json.dumps({"argv": argv, "serial": serial}) + "\n")
    if not argv:
        return _fail("adb: usage: no command")
    cmd, args = argv[0], argv[1:]
    if cmd == "version":
        print("Android Debug Bridge version 1.0.41\nVersion 35.0.2-fake\nInstalled as " + sys.argv[0])
        return 0
    if cmd == "devices":
        print("List of devices attached")
        for d in state["devices"]:
            print(f"{d['serial']}\t{d['state']} {d.get('details', '')}".rstrip())
        print()
        return 0
    device, err = _pick(state, serial)
    if device is None:
        return _fail(err)
    if cmd == "get-state":
        if device["state"] != "device":
            return _fail(_STATE_ERRORS.get(device["state"], f"error: device {device['state']}"))
        print("device")
        return 0
    if device["state"] != "device":
        return _fail(_STATE_ERRORS.get(device["state"], f"error: device {device['state']}"))
    root = device["root"]
    if cmd == "shell":
        left = device.get("lose_after_shells")
        if left is not None:
            if left <= 0:
                state["devices"] = [d for d in state["devices"] if d is not device]
                _save(path, state)
                return _fail(f"error: device '{device['serial']}' not found")
            device["lose_after_shells"] = left - 1
            _save(path, state)
        command = _translate(root, " ".join(args))
        with open(state["log"], "a") as log:
            log.write(json.dumps({"shell": command, "serial": device["serial"]}) + "\n")
        env = dict(os.environ, PATH=f"{root}/bin:{os.environ.get('PATH', '')}", FAKE_DEVICE_ROOT=root)
        r = subprocess.run(["sh", "-c", command], cwd=root, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        sys.stdout.write(r.stdout.decode(errors="replace"))
        # Like adb with the shell protocol: the remote status is adb's own.
        return r.returncode
    if cmd == "push":
        local, remote = args
        target = _translate(root, remote)
        if not os.path.isdir(os.path.dirname(target)):
            return _fail(f"adb: error: failed to copy '{local}' to '{remote}': remote couldn't create file: "
                         "No such file or directory")
        shutil.copyfile(local, target)
        print(f"{local}: 1 file pushed, 0 skipped. 100.0 MB/s ({os.path.getsize(local)} bytes in 0.001s)")
        return 0
    if cmd == "pull":
        remote, local = args
        source = _translate(root, remote)
        if not os.path.exists(source):
            return _fail(f"adb: error: failed to stat remote object '{remote}': No such file or directory")
        shutil.copyfile(source, local)
        print(f"{remote}: 1 file pulled, 0 skipped. 100.0 MB/s ({os.path.getsize(local)} bytes in 0.001s)")
        return 0
    return _fail(f"adb: unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
