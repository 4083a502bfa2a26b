"""A command's main() run in the test's process: the same arguments, environment, output and exit
status as `python -m model ...` or `python -m ml_backend ...`, without a new interpreter importing
torch (3 to 4 s a call on two cores, about 45 calls a session before). Tests that need a real
process (Ctrl-C, kill -9, a console script, a server) still start one."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
from unittest import mock

from model.__main__ import LOG_FORMAT  # the backend's logs (ml_backend/logs.py) read the same


def run_main(main, args, env: dict | None = None, clear_env: bool = False) -> subprocess.CompletedProcess:
    """main(args) with its stdout and stderr captured, its log lines in stderr as the command prints
    them, and `env` in the environment (all of it with `clear_env`); SystemExit (argparse's usage
    errors) gives the exit status, as it would a process."""
    args = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    level = root.level
    with mock.patch.dict(os.environ, env or {}, clear=clear_env), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            code = main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if isinstance(exit_.code, str):
                print(exit_.code, file=err)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def model_command(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m model *args`."""
    from model.__main__ import main

    return run_main(main, args, env)
