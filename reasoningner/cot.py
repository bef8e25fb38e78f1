"""Stage 1: a teacher annotates NER data with rationales; annotations are validated and scored.

For every sentence the teacher (an LLM behind a `generation` backend, or the `gold-template`
writer that needs none) produces `samples_per_sentence` rationale + answer pairs. Each is parsed
with the foundation parsers and scored: entity F1 against gold, and consistency between rationale
and answer (`rationale.consistency`, the score the GRPO reward shares). The best sample is kept;
the sentence is *accepted* when it reaches `f1_threshold` and `min_consistency`. With
`gold_answer`, an accepted sample's answer is replaced by the gold answer (its rationale is kept):
useful with a threshold below 1.0, when near-misses of the teacher still reason well.

Output is an append-only JSONL file with one record per input sentence, accepted or not, written
and flushed as soon as the sentence is done. A rerun drops a half-written last line and only does
the sentences that are missing, so a run killed at any moment loses nothing it finished.
`shard="i/n"` takes every n-th sentence from i; `merge_shards` joins shard files into what an
unsharded run writes (records sorted by input position).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reasoningner.configs import GOLD_TEMPLATE, CoTArguments, GenerationArguments, PromptArguments
from reasoningner.formats import OutputFormat, get_format, split_answer
from reasoningner.generation import Completion
from reasoningner.metrics import MatchMode, example_f1
from reasoningner.prompts import teacher_instruction
from reasoningner.rationale import consistency, gold_template_rationale
from reasoningner.readers import read_dataset
from reasoningner.records import read_records
from reasoningner.spans import Example

ANNOTATIONS = "annotations.jsonl"
REPORT = "report.json"


def output_path(args: CoTArguments) -> Path:
    """This shard's annotation file in `output_dir`."""
    index, count = args.shard_index()
    name = ANNOTATIONS if count == 1 else f"annotations.shard-{index}-of-{count}.jsonl"
    return Path(args.output_dir) / name  # type: ignore[arg-type]


@dataclass(frozen=True)
class Sample:
    """One teacher sample, parsed and scored."""

    index: int
    rationale: str
    answer: str
    f1: float
    consistency: float
    completion_tokens: int


def score_sample(
    example: Example, completion: Completion, output_format: OutputFormat, mode: MatchMode, index: int = 0
) -> Sample:
    """Parse a teacher completion and score it against gold and against its own rationale.

    The stored answer is the canonical rendering of what the teacher found (labels outside the
    schema dropped), so that training targets are always well-formed.
    """
    rationale, answer, problems = split_answer(completion.text)
    rationale = (rationale or "").strip()
    parsed = output_format.parse_answer(answer, example.text, example.schema, problems)
    pairs = [(s.text(example.text), s.label) for s in parsed.spans] + list(parsed.ungrounded)
    kept = tuple(s for s in parsed.spans if s.label in example.schema)
    return Sample(
        index=index,
        rationale=rationale,
        answer=output_format.render(Example(example.text, kept, example.schema)),
        f1=example_f1(example, parsed.spans, parsed.ungrounded, mode),
        consistency=consistency(rationale, pairs, example.schema) if rationale else 0.0,
        completion_tokens=completion.completion_tokens,
    )


def best_sample(samples: Sequence[Sample]) -> Sample:
    """Highest F1, then highest consistency, then the earliest sample."""
    return max(samples, key=lambda s: (s.f1, s.consistency, -s.index))


def gold_template_sample(example: Example, output_format: OutputFormat, context_words: int = 3) -> Sample:
    """The teacher-free annotation: a rationale written from the gold spans, the gold answer."""
    rationale = gold_template_rationale(example, context_words)
    pairs = example.span_texts()
    return Sample(
        0, rationale, output_format.render(example), 1.0, consistency(rationale, pairs, example.schema), 0
    )


def prompt_hash(conversation: list[dict[str, str]]) -> str:
    """A short fingerprint of the exact prompt, so records show when the prompt changed."""
    return hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).hexdigest()[:16]


def example_key(dataset: str, example: Example) -> str:
    return f"{dataset}/{example.id}"


@dataclass(frozen=True)
class Task:
    """One sentence to annotate: its position in the whole input (for merging) and its prompt."""

    position: int
    dataset: str
    example: Example
    conversation: list[dict[str, str]]


def load_tasks(args: CoTArguments, prompt: PromptArguments) -> list[Task]:
    """All input sentences in order, with positions over the whole input, then this shard's share."""
    tasks = []
    for path in args.datasets:
        dataset = read_dataset(path, args.reader)
        for example in dataset.examples[: args.limit]:
            content = teacher_instruction(example.text, example.schema, prompt)
            tasks.append(Task(len(tasks), dataset.name, example, [{"role": "user", "content": content}]))
    index, count = args.shard_index()
    return tasks[index::count]


def finished_keys(path: Path) -> set[str]:
    """Keys of the records already written; a half-written last line (a kill mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        path.write_bytes(complete)
    return {json.loads(line)["key"] for line in complete.decode("utf-8").splitlines() if line.strip()}


def build_record(
    task: Task, sample: Sample, args: CoTArguments, prompt: PromptArguments, teacher: str
) -> dict[str, Any]:
    accepted = sample.f1 >= args.f1_threshold and sample.consistency >= args.min_consistency
    answer = (
        get_format(prompt.output_format).render(task.example)
        if args.gold_answer and accepted
        else sample.answer
    )
    return {
        "key": example_key(task.dataset, task.example),
        "position": task.position,
        "dataset": task.dataset,
        "id": task.example.id,
        "text": task.example.text,
        "entities": task.example.entity_dicts(),
        "labels": list(task.example.schema.labels),
        "descriptions": dict(task.example.schema.descriptions),
        "output_format": prompt.output_format,
        "rationale": sample.rationale,
        "answer": answer,
        "answer_source": "gold" if args.gold_answer and accepted else "teacher",
        "f1": sample.f1,
        "consistency": sample.consistency,
        "accepted": accepted,
        "teacher": teacher,
        "sample_index": sample.index,
        "completion_tokens": sample.completion_tokens,
        "prompt_hash": prompt_hash(task.conversation),
    }


def _samples(
    args: CoTArguments, prompt: PromptArguments, generation: GenerationArguments, tasks: Sequence[Task]
) -> Iterator[tuple[Task, Sample]]:
    """Annotate `tasks`, yielding each as soon as its samples are scored."""
    output_format = get_format(prompt.output_format)
    if generation.backend == GOLD_TEMPLATE:
        for task in tasks:
            yield task, gold_template_sample(task.example, output_format, args.template_context_words)
        return
    sampling = generation.sampling(n=args.samples_per_sentence)
    mode: MatchMode = args.match_mode  # type: ignore[assignment]
    with generation.build_generator() as generator:
        for start in range(0, len(tasks), args.chunk_size):
            chunk = tasks[start : start + args.chunk_size]
            for index, completions in generator.generate_iter([t.conversation for t in chunk], sampling):
                scored = [
                    score_sample(chunk[index].example, c, output_format, mode, i)
                    for i, c in enumerate(completions)
                ]
                yield chunk[index], best_sample(scored)


def teacher_name(generation: GenerationArguments) -> str:
    if generation.backend == GOLD_TEMPLATE:
        return GOLD_TEMPLATE
    return f"{generation.backend}:{generation.model_name_or_path}"


def annotate(args: CoTArguments, prompt: PromptArguments, generation: GenerationArguments) -> dict[str, Any]:
    """Annotate what is missing from this shard's output file; return the report of the whole file."""
    path = output_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = finished_keys(path)
    tasks = [t for t in load_tasks(args, prompt) if example_key(t.dataset, t.example) not in done]
    teacher = teacher_name(generation)
    started = time.perf_counter()
    with path.open("a", encoding="utf-8") as out, tqdm(total=len(tasks), desc="cot", unit="sent") as bar:
        for task, sample in _samples(args, prompt, generation, tasks):
            record = build_record(task, sample, args, prompt, teacher)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            bar.update()
    report = summarize(read_records(path), seconds=time.perf_counter() - started, annotated=len(tasks))
    (path.parent / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def merge_shards(output_dir: str | Path) -> Path:
    """Join `annotations.shard-*-of-n.jsonl` into `annotations.jsonl`, in input order.

    Refuses to merge an incomplete set of shards or shards that disagree on n.
    """
    output_dir = Path(output_dir)
    shards = sorted(output_dir.glob("annotations.shard-*-of-*.jsonl"))
    if not shards:
        raise FileNotFoundError(f"{output_dir}: no annotations.shard-*-of-*.jsonl files to merge")
    counts = {s.stem.rsplit("-of-", 1)[1] for s in shards}
    if len(counts) != 1 or len(shards) != int(next(iter(counts))):
        raise ValueError(f"{output_dir}: shard files {[s.name for s in shards]} are not one complete set")
    records = sorted((r for s in shards for r in read_records(s)), key=lambda r: r["position"])
    target = output_dir / ANNOTATIONS
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    report = summarize(records, seconds=0.0, annotated=0)
    (output_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return target


def summarize(records: Sequence[dict[str, Any]], seconds: float, annotated: int) -> dict[str, Any]:
    """Acceptance, teacher F1, consistency distribution, tokens and time, over all records."""
    total = len(records)
    f1s = [r["f1"] for r in records]
    consistencies = [r["consistency"] for r in records]
    histogram = [0] * 10
    for value in consistencies:
        histogram[min(int(value * 10), 9)] += 1
    return {
        "sentences": total,
        "accepted": sum(r["accepted"] for r in records),
        "acceptance_rate": sum(r["accepted"] for r in records) / total if total else 0.0,
        "teacher_f1_mean": statistics.fmean(f1s) if f1s else 0.0,
        "teacher_exact_rate": sum(f == 1.0 for f in f1s) / total if total else 0.0,
        "consistency_mean": statistics.fmean(consistencies) if consistencies else 0.0,
        "consistency_histogram": {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": n for i, n in enumerate(histogram)},
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "teachers": sorted({r["teacher"] for r in records}),
        "annotated_this_run": annotated,
        "seconds_this_run": round(seconds, 3),
        "sentences_per_second_this_run": round(annotated / seconds, 2) if seconds else None,
    }
