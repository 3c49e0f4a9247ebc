"""``torchrun`` with one line on Ctrl-C: the same launcher, the same arguments.

    artlib-torchrun --nproc_per_node=8 examples/train_finegym.py --data-root /data/finegym
    python -m artlib.launch --nproc_per_node=2 -m artlib.engine.cli --preset small

Under plain ``torchrun`` a Ctrl-C (or the SIGTERM a scheduler sends) stops the workers, and each of
artlib's workers says in one line where its run stopped and how to resume it; the agent itself then
prints a ``SignalException`` traceback and two warnings per worker. This launcher runs torchrun's own
``main`` and turns that ending into one line, ``artlib-torchrun: stopped by SIGINT; ...``, with the
exit status a shell expects (128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM). Everything
else (rendezvous, restarts, a failed worker's error summary, exit statuses) is torchrun's.

When ``OMP_NUM_THREADS`` is unset and more than one process is started per node, it is set to 1,
as torchrun does, without torchrun's four-line warning about it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from artlib._cli import say

__all__ = ["main"]

# torchrun's agent logs these while it stops the workers after a signal; the one line replaces them
_AGENT_LOGGERS = (
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.multiprocessing.api",
)


def _nproc_per_node(argv: list[str]) -> str | None:
    """The ``--nproc_per_node`` value of torchrun's own arguments (torchrun's parser reads them: a
    script's arguments of the same name are not), or None when not given."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.set_defaults(nproc_per_node=None)
    args, _ = parser.parse_known_args(argv)
    return args.nproc_per_node


def main(argv: list[str] | None = None) -> int:
    """Run ``torchrun`` with ``argv`` (default: ``sys.argv[1:]``); returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    nproc = _nproc_per_node(argv)
    if "OMP_NUM_THREADS" not in os.environ and nproc not in (None, "1"):
        os.environ["OMP_NUM_THREADS"] = "1"
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    for name in _AGENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        torchrun_main(argv)
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        say(
            f"artlib-torchrun: stopped by {name}; the workers were stopped (an artlib run's "
            "folder resumes with --resume auto)"
        )
        return 128 + int(e.sigval)
    except KeyboardInterrupt:  # a second Ctrl-C while the workers were being stopped
        say("artlib-torchrun: stopped by SIGINT")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
