"""Turn ``pytest benchmarks/ --benchmark-only --benchmark-json=bench.json`` into a markdown table:
one row per case, each artlib case as a ratio against the other cases of its group.

    python benchmarks/table.py bench.json
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or platform.processor()
    print(
        f"machine: {cpu}, {machine.get('cpu', {}).get('count', '?')} cores, "
        f"python {machine.get('python_version', '?')}\n"
    )
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"]].append(b)
    print("| group | case | median (ms) | ratio vs artlib |")
    print("| --- | --- | ---: | ---: |")
    for group, cases in groups.items():
        ours = [c for c in cases if "artlib" in c["name"] or "fused" in c["name"]]
        base = ours[0]["stats"]["median"] if ours else None
        for c in sorted(cases, key=lambda c: c["stats"]["median"]):
            med = c["stats"]["median"]
            ratio = f"{med / base:.2f}x" if base else ""
            print(
                f"| {group} | {c['name'].split('[')[-1].rstrip(']')} | {med * 1e3:.2f} | {ratio} |"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
