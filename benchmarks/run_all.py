"""`make bench`: run every stage benchmark, one after the other, and gather their figures.

Writes `benchmarks/results/summary.json` and `summary.md`. Each benchmark measures its own comparison
side by side in one run; this only collects them, each with when, at which commit and on what it ran
(`--only` keeps the others' figures, with their own record).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from reasoningner.tracking import git_commit, versions

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "rewards": ["bench_rewards.py"],
    # As GRPO batches come: groups of 8 distinct completions per prompt (the recipes' num_generations).
    "rewards_grpo_groups": ["bench_rewards.py", "--generations", "8"],
    "sft": ["bench_sft.py", "--conversations", "256"],
    "cot_server": ["bench_openai_concurrency.py"],
    "eval": ["bench_eval.py"],
}


def cpu_model() -> str:
    """The CPU's model name (Linux), else what `platform` knows: the same lock gives other figures on
    another CPU."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def provenance() -> dict[str, object]:
    """When, at which commit and on what the benchmarks of one `run_all` ran (taken as it starts)."""
    packages = versions()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **git_commit(),  # commit, and whether the checkout had uncommitted changes
        "cpu": cpu_model(),
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        **{name: packages.get(name) for name in ("torch", "transformers", "trl")},
    }


def markdown(summary: dict) -> str:
    lines = ["# reasoningner benchmarks"]
    for name, result in summary["results"].items():
        ran = result.get("ran")
        where = ", ".join(f"{k} {v}" for k, v in ran.items()) if ran else "not recorded (before 2026-12-05)"
        figures = {k: v for k, v in result.items() if k != "ran"}
        lines += ["", f"## {name}", "", f"Ran: {where}", "", "```json", json.dumps(figures, indent=2), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "summary.json"
    # --only reruns some benchmarks; the others keep their last figures.
    results = json.loads(previous.read_text())["results"] if previous.is_file() else {}
    # Taken before any result is written: the results are tracked files, and would make the code look dirty.
    ran = provenance()
    for name in args.only:
        script, *options = BENCHMARKS[name]
        target = args.out / f"{name}.json"
        started = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / script), *options, "--json", str(target)], check=True)
        seconds = round(time.perf_counter() - started, 1)
        results[name] = {
            "figures": json.loads(target.read_text()),
            "wall_seconds": seconds,
            "ran": ran,
        }
    summary = {"results": {name: results[name] for name in BENCHMARKS if name in results}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (args.out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
