"""`python -m tests.ml_backend.paused_backend`: the backend with a pause (PAUSE_SECONDS, default 0.5)
before each image's stage-1 record and before a head's training, so that the crash test can kill it
inside those steps at the suite's 64 px, where each takes a fraction of a second (it ran at 128 px
to be slow enough, 38 s alone and 73 s beside the other tests)."""

from __future__ import annotations

import os
import sys
import time

from ml_backend.__main__ import main
from ml_backend.jobs import loop

PAUSE_SECONDS = float(os.environ.get("PAUSE_SECONDS", "0.5"))


def paused(step):
    def run(*args, **kwargs):
        time.sleep(PAUSE_SECONDS)
        return step(*args, **kwargs)
    return run


loop.image_record = paused(loop.image_record)
loop.train_head = paused(loop.train_head)

if __name__ == "__main__":
    sys.exit(main())
