"""Build the native CPU kernels (csrc/) now and say how it went.

    python -m artlib.ops.build            # build, or find the cached library, and report
    python -m artlib.ops.build --force    # rebuild even when a cached library exists

Reports the build time, the compiler, the flags and where the library went; exits 1 (with the
reason) when the kernels cannot be built, 2 on a bad flag. Without this, the first op call on CPU
builds them (and logs one line saying so).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m artlib.ops.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even when a cached library exists"
    )
    args = parser.parse_args(argv)  # a bad flag exits 2 here, before anything heavy

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from artlib.ops import _native

    start = time.perf_counter()
    try:
        info = _native.build(force=args.force)
    except RuntimeError as exc:
        print(f"artlib.ops.build: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - start
    if not info["loaded"]:
        print(
            f"artlib.ops.build: the native kernels are not available: {_native.reason()}",
            file=sys.stderr,
        )
        return 1
    built = info["build_s"] is not None
    print(f"library:    {info['path']}")
    print(f"status:     {'built' if built else 'cached (nothing to build; --force rebuilds)'}")
    print(f"time:       {info['build_s'] if built else wall:.1f} s")
    print(f"compiler:   {_native.compiler()}")
    print(f"sources:    {', '.join(info['sources'])} (one translation unit per op)")
    print(f"cflags:     {' '.join(info['cflags'] or [])}")
    print(f"ldflags:    {' '.join(info['ldflags'] or [])}")
    print(f"capability: {info['capability']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
