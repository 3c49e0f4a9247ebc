"""pytest setup shared by tests/ and benchmarks/: a run that has finished must also end."""

from __future__ import annotations

import faulthandler
import sys

EXIT_GRACE_S = 120


def pytest_unconfigure(config):
    """The last hook of a run. If the interpreter then does not exit (a thread that never ends, a
    finaliser that waits on one), every thread's stack goes to stderr and the process exits 1
    after ``EXIT_GRACE_S`` seconds, instead of stalling the caller with no trace."""
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=sys.__stderr__)
