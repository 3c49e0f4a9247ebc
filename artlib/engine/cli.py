"""The command line shared by the example trainers: flags -> config -> ``train``."""

from __future__ import annotations

from artlib.engine.config import build_parser, config_from_args

__all__ = ["main"]


def main(dataset: str, argv=None) -> int:
    parser = build_parser(dataset)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, dataset=dataset)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the message, like any bad flag
    from artlib.engine.trainer import train

    train(cfg)
    return 0
