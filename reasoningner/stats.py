"""Corpus statistics: what `reasoningner data stats` prints, to know a dataset before training on it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from reasoningner.readers import Dataset
from reasoningner.spans import nesting_depth

PERCENTILES = (50, 90, 95, 99, 100)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank `PERCENTILES` (the value itself, never interpolated) keyed "p50", ..."""
    if not values:
        return {f"p{p}": 0 for p in PERCENTILES}
    ordered = sorted(values)
    return {f"p{p}": ordered[max(0, -(-p * len(ordered) // 100) - 1)] for p in PERCENTILES}


def dataset_stats(dataset: Dataset) -> dict[str, Any]:
    """Counts (total and per label), nesting and length percentiles of one dataset."""
    per_label: Counter[str] = Counter()
    depth_histogram: Counter[int] = Counter()
    chars: list[int] = []
    words: list[int] = []
    entity_words: list[int] = []
    for example in dataset.examples:
        per_label.update(span.label for span in example.spans)
        depth_histogram[nesting_depth(example.spans)] += 1
        chars.append(len(example.text))
        words.append(len(example.text.split()))
        entity_words.extend(len(span.text(example.text).split()) for span in example.spans)
    return {
        "name": dataset.name,
        "sentences": len(dataset.examples),
        "entities": sum(per_label.values()),
        "labels": {label: per_label.get(label, 0) for label in dataset.schema.labels}
        | {label: n for label, n in per_label.items() if label not in dataset.schema},
        "max_nesting_depth": max(depth_histogram, default=0),
        "sentences_by_nesting_depth": {str(depth): n for depth, n in sorted(depth_histogram.items())},
        "sentence_chars": percentiles(chars),
        "sentence_words": percentiles(words),
        "entity_words": percentiles(entity_words),
        "skipped_records": len(dataset.skipped),
        # What the reader changed or left out without losing the record (Dataset.notes, logged).
        "reader_notes": len(dataset.notes),
    }
