"""Default hyper-parameters of GQ, chosen by the ablation in ``docs/defaults.md``.

Change them only together with that document (re-run ``python -m gq_speech.ablation``).
"""

MU = 8.0
SOFT_WINDOW = 8
TAU0 = 0.3
GAMMA = 0.5
TAU_MIN = 0.01
