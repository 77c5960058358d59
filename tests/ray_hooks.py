"""Test-only set-up of Ray worker processes (``runtime_env={"worker_process_setup_hook": ...}``):
faults that a test cannot inject from outside a Ray actor.

- a 'POISON' image format whose decoder kills its process, standing in for a decoder that
  segfaults (as in test_robustness.py);
- with ``$QFMIQM_TEST_DIE_ONCE`` naming a file that exists, the first model step of any actor
  removes the file and ends the actor's process mid-batch (``os._exit``): once per arming.
"""
from __future__ import annotations

import os
import signal

from PIL import Image, ImageFile

DIE_ONCE_ENV = "QFMIQM_TEST_DIE_ONCE"


class PoisonImageFile(ImageFile.ImageFile):
    format = "POISON"
    format_description = "test-only decoder crash"

    def _open(self):
        os.kill(os.getpid(), signal.SIGKILL)


def register_poison() -> None:
    Image.register_open(PoisonImageFile.format, PoisonImageFile, lambda prefix: prefix[:6] == b"POISON")


def unregister_poison() -> None:
    Image.OPEN.pop(PoisonImageFile.format, None)
    if PoisonImageFile.format in Image.ID:
        Image.ID.remove(PoisonImageFile.format)


def setup_worker() -> None:
    register_poison()
    arm = os.environ.get(DIE_ONCE_ENV)
    if not arm:
        return
    from qfmiqm.scoring import QualityModel

    original = QualityModel.raw_scores_of

    def raw_scores_of(self, prepared):
        try:
            os.unlink(arm)  # only one process wins the race for the file
        except FileNotFoundError:
            return original(self, prepared)
        os._exit(3)

    QualityModel.raw_scores_of = raw_scores_of
