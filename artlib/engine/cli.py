"""The trainer's command line, generated from the declarations in ``artlib.engine.config``.

Two passes: the first reads ``--preset``, ``--config``, ``--data-root`` and ``--train-list`` to
know the recipe and the data, the second builds every flag with that preset's defaults (and the
config file's values), so ``--help`` shows the values a run will use. A misuse exits 2 with one
line, before torch is imported.
"""

from __future__ import annotations

import argparse
import sys

from artlib._cli import OneLineParser, say
from artlib.engine import config as C

__all__ = ["main", "parse", "run_guarded"]


def _show(key: str, value, preset: str) -> str:
    if value is None and key.endswith("pretrained") and preset == "paper":
        return "required" + (" unless --bank/--baseline" if key == "model.text_pretrained" else "")
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "not set" if value is None else str(value)


def _parser(prog: str, preset: str, defaults: dict, builtin: bool) -> OneLineParser:
    other = "small" if preset == "paper" else "paper"
    data = "the built-in set" if builtin else "your data"
    p = OneLineParser(
        prog=prog,
        description="Train ART on a FineGym or Diving48 root, your own '<path> <label>' lists, "
        "or the built-in synthetic set, with the paper's recipe or the small one.",
        epilog=f"Defaults shown are --preset {preset}'s on {data}; '--preset {other} --help' shows "
        f"the other's. Options that do not apply to {data} are hidden here.",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE", help="a YAML or JSON config, e.g. a run's "
                   "config.yaml; flags override it (default: not set)")  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved config as "
                   "YAML and exit (default: off)")  # fmt: skip
    groups: dict = {}
    for o in C.options():
        section = o.key.split(".")[0] if "." in o.key else None
        g = groups.setdefault(section, p.add_argument_group(section) if section else p)
        text = f"{o.meta['help']} (default: {_show(o.key, defaults[o.key], preset)})"
        hidden = not C.applies(o, builtin)
        kw = dict(dest=o.key, help=argparse.SUPPRESS if hidden else text.replace("%", "%%"))
        if o.type is bool:
            g.add_argument(o.flag, action=argparse.BooleanOptionalAction, **kw)
        elif o.key == "run.compile":
            g.add_argument(o.flag, nargs="?", const="default", metavar="MODE", **kw)
        else:
            choices = o.meta.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else o.key.split(".")[-1].upper()
            g.add_argument(o.flag, metavar=metavar, **kw)
    groups["model"].add_argument("--no-ta", dest="model.aggregation", action="store_const",
                                 const="mean", help="--aggregation mean (Table IV)")  # fmt: skip
    return p


def parse(argv=None, dataset: str = "finegym", prog: str = "artlib-train") -> C.TrainConfig:
    """argv -> the resolved, checked TrainConfig; a misuse exits 2 with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = OneLineParser(
        prog=prog, add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS
    )
    for flag, dest in [
        ("--preset", "preset"),
        ("--config", "config"),
        ("--data-root", "data.data_root"),
        ("--train-list", "data.train_list"),
    ]:
        first.add_argument(flag, dest=dest)
    known = vars(first.parse_known_args(argv)[0])
    try:
        file_values = C.flatten(
            C.load_config_file(known.pop("config")) if "config" in known else {}
        )
        preset = C.pick_preset(known, file_values)
        builtin = C.builtin_data({**file_values, **known})
        defaults = {**C.preset_defaults(preset, dataset, builtin), **file_values}
        args = vars(_parser(prog, preset, defaults, builtin).parse_args(argv))
        args.pop("config", None)
        show = args.pop("print_config", False)
        cfg = C.resolve(args, file_values, dataset=dataset)
        C.check_paths(cfg)
        if show:
            import yaml

            print(yaml.safe_dump(C.config_to_dict(cfg), sort_keys=False), end="")
            raise SystemExit(0)
    except C.ConfigError as exc:
        say(f"{prog}: error: {exc}")
        raise SystemExit(2) from None
    return cfg


def main(dataset: str = "finegym", argv=None, prog: str = "artlib-train") -> int:
    """``artlib-train`` and the example trainers: flags -> config -> ``train``."""
    cfg = parse(argv, dataset=dataset, prog=prog)
    from artlib.engine.trainer import train

    return run_guarded(cfg, lambda: train(cfg), prog)


def run_guarded(cfg: C.TrainConfig, fn, prog: str) -> int:
    """``fn()`` (a training run) -> the exit status, with every error a run is promised to
    report as one line (per process under torchrun): a refused output folder or resume and a
    --resume file that is not a safe checkpoint (2), a non-finite loss or a checkpoint that
    cannot be written (1), Ctrl-C (130; the folder resumes with --resume auto)."""
    import os
    import signal

    from artlib.engine.checkpoint import CheckpointError, CheckpointWriteError
    from artlib.engine.rundir import RunFolderError, ignore_agent_signals

    who = f"{prog} [rank {os.environ.get('RANK', '0')}]" if "LOCAL_RANK" in os.environ else prog
    if "LOCAL_RANK" in os.environ:  # torchrun passes Ctrl-C on to its workers as SIGTERM
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        fn()
    except (CheckpointError, RunFolderError) as e:  # refused before training
        say(f"{who}: error: {e}")
        return 2
    except (FloatingPointError, CheckpointWriteError) as e:  # the run stopped
        say(f"{who}: error: {e}")
        return 1
    except KeyboardInterrupt:
        ignore_agent_signals()  # under torchrun: one line, once
        say(
            f"{who}: interrupted; {cfg.run.output_dir} keeps the last epoch's checkpoint: "
            "continue with --resume auto"
        )
        return 130
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":  # python -m artlib.engine.cli, e.g. under torchrun
    sys.exit(main())
