"""How the stage benchmarks time their arms side by side: an odd number of rounds, each arm once a round
in an order reversed every other round (neither a drifting machine nor what the run before leaves behind
favours one arm), and each arm's median run, with the range of all of its runs."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

Arm = TypeVar("Arm")


def add_repeats(parser: argparse.ArgumentParser, what: str) -> None:
    """The `--repeats` option: timed runs of each arm, odd so that the median is one run."""
    parser.add_argument("--repeats", type=int, default=3, help=f"timed {what} (odd: the median is one)")


def check_repeats(parser: argparse.ArgumentParser, repeats: int) -> None:
    if repeats < 1 or repeats % 2 == 0:
        parser.error(f"--repeats must be odd, so that the median is one run: got {repeats}")


def rounds(arms: Sequence[Arm], repeats: int) -> Iterator[tuple[int, Arm]]:
    """(round, arm) for every timed run: each arm once a round, the order reversed every other round."""
    for round_ in range(repeats):
        for arm in arms if round_ % 2 == 0 else arms[::-1]:
            yield round_, arm


def median_run(runs: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """The run of median `key`, with the range of all of them (`<key>_range`)."""
    ordered = sorted(runs, key=lambda run: run[key])
    return {**ordered[len(ordered) // 2], f"{key}_range": [ordered[0][key], ordered[-1][key]]}
