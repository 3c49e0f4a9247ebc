"""pytest setup for the benchmarks (files ``bench_*.py``, collected through ``python_files`` in
pyproject.toml).

    pytest benchmarks/ --benchmark-only                 # every benchmark, full shapes (minutes)
    pytest benchmarks/ --smoke                          # each benchmark once, on tiny shapes (< 1 min)

``--smoke`` proves that every benchmark file still collects and runs, cheaply enough for CI: it sets
``ARTLIB_BENCH_SMOKE=1`` before the files are imported (each file then picks its smallest shapes),
turns the timing off (``--benchmark-disable``: each case runs once) and skips the cases that only
pay off at full size and cost a compile (``torch.compile``'s first compile takes ~20 s a case).
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--smoke",
        action="store_true",
        default=False,
        help="run every benchmark once on tiny shapes, untimed (sets ARTLIB_BENCH_SMOKE=1)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: the case compiles with torch.compile first")
    if config.getoption("--smoke", default=False) or smoke():
        os.environ["ARTLIB_BENCH_SMOKE"] = "1"
        if hasattr(config.option, "benchmark_disable"):
            config.option.benchmark_disable = True
            config.option.benchmark_only = False


def smoke() -> bool:
    """True in a smoke pass (``--smoke`` or ``ARTLIB_BENCH_SMOKE=1``)."""
    return os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if not smoke():  # a full case may take longer than the tests' per-test limit (pyproject.toml)
        for item in items:
            item.add_marker(pytest.mark.timeout(0))
        return
    skip = pytest.mark.skip(reason="smoke pass: cases that compile run only in the full benchmark")
    for item in items:
        if "compile" in item.keywords or "compiled" in item.name:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After the timings: ART's training step over its baseline's, per backbone and mode
    (bench_model.py), as one small table."""
    session = getattr(config, "_benchmarksession", None)
    rows = [
        b.extra_info
        for b in getattr(session, "benchmarks", [])
        if "art_over_baseline" in getattr(b, "extra_info", {})
    ]
    if not rows:
        return
    tr = terminalreporter
    tr.section("ART step over baseline step (best round / best round, same run)")
    tr.write_line(f"{'backbone':<20} {'mode':<10} {'ART / baseline':>15}")
    for info in rows:
        ratio = info["art_over_baseline"]
        tr.write_line(
            f"{info['backbone']:<20} {info['mode']:<10} {ratio:>14.3f}x  (+{100 * (ratio - 1):.1f} %)"
        )
