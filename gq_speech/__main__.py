"""The ``gq-tf`` command: ``gq-tf asr``, ``gq-tf demo``, ``gq-tf ablation``, ``gq-tf export``, ``gq-tf allocate``."""

import argparse
import sys

_COMMANDS = {
    "asr": ("gq_speech.cli", "speech recognition: corpus, RNN-T/Conformer, GQ, streaming .tflite, WER"),
    "demo": ("gq_speech.demo", "float vs uniform 8-bit QAT vs GQ on the built-in task"),
    "ablation": ("gq_speech.ablation", "the ablation behind the default hyper-parameters"),
    "export": ("converters.cli", "a saved QAT model to .tflite with packed GQ custom ops"),
    "allocate": ("converters.allocate", "the GQ bits per kernel for a size budget (gq_tf.allocate_bits)"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        p = argparse.ArgumentParser(prog="gq-tf")
        p.add_argument("command", choices=sorted(_COMMANDS),
                       help="; ".join(f"{k}: {v[1]}" for k, v in _COMMANDS.items()))
        p.parse_args(argv[:1])
        return 2
    import importlib

    module = importlib.import_module(_COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
