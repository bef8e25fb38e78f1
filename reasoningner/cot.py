"""Stage 1: a teacher annotates NER data with rationales; annotations are validated and scored.

For every sentence the teacher (an LLM behind a `generation` backend, or the `gold-template`
writer that needs none) produces `samples_per_sentence` rationale + answer pairs. Each is parsed
with the foundation parsers and scored: entity F1 against gold, and consistency between rationale
and answer (`rationale.consistency`, the score the GRPO reward shares). A sample is acceptable when
it reaches `f1_threshold` and `min_consistency` and its answer is readable (`UNREADABLE`: an answer
that does not parse is no empty answer, even for a sentence without entities). The best sample is
kept: an acceptable one if there is one, then by F1 and consistency.
With `gold_answer`, an accepted sample's answer is replaced by the gold answer (its rationale is
kept): useful with a threshold below 1.0, when near-misses of the teacher still reason well. Its
consistency is then measured against the gold answer, the one its rationale is stored with if
accepted (a rejected record keeps the teacher's answer, with that consistency).

Every sentence ends as one record with a `status` (`records`):
- accepted: the best sample is acceptable;
- rejected: it is not (kept, with its scores and, for an unreadable answer, the `reason`; training
  skips it);
- failed: no usable reply. The backend gave up on the sentence (a server that kept failing on it,
  a request it refused), or every sample came back empty, cut off at max_new_tokens or ended by the
  engine (aborted), also after `INCOMPLETE_RETRIES` more tries, each with another seed (none when a
  local engine decodes greedily: it would repeat itself). The record says why (`reason`) and has no
  scores: a failure is not a teacher F1 of 0.
The report (`report.json`) counts the three; they add up to the sentences. A teacher that fails
`FAILURES_IN_A_ROW` sentences in a row, none answered in between (a server that died, or refuses
every request: a context too short for max_new_tokens), stops the run with its last error instead of
failing the rest of the data; the records written so far stay, and a rerun retries the failed (in a
SLURM job, a teacher that had given a usable answer is taken for one that died: the job is requeued,
`jobs.stop`, restarting the server with the stage in `cot.slurm`; one that never did ends it). Requests
the teacher refuses (a prompt too long) are not counted in a row: they come back at once, ahead of the
answers, and 64 of them in a chunk stopped the run on every rerun. A group of sentences asked together
in which nothing is answered and `FAILURES_IN_A_ROW` or more are refused on a first try stops it (a
server that refuses every request). A teacher that answers but never usably (`FAILURES_IN_A_ROW`
sentences in a row, asked for the first time, whose every sample was cut off, empty or ended by the
engine: a thinking model's own thinking past `max_new_tokens`) stops it too, saying what to check. A
sentence cut off or empty is asked again with the next group;
when a run stops first (an error, a stop, SIGTERM), it is recorded failed with its tries (`annotate`).

What a run guarantees when its process ends at any moment (any signal, preemption, a crash):
- Records are appended, one line per sentence, and flushed as soon as the sentence is done: a run
  loses only the sentences in flight, and leaves at most a half-written last line. (A sentence waiting
  for its retry in the next chunk is in flight: a kill loses its tries, and a rerun asks it from its
  first seed again; SIGTERM, a preemption's or scancel's, lets the run record them first, `jobs.terminating`.)
- A rerun with the same inputs cuts that line off, drops the failed records to try them again, and
  annotates exactly the sentences without a record, so that every sentence ends in the file exactly
  once. A rewrite goes through a temporary file and `os.replace`: a kill during it leaves the old
  file or the new one, never a mix. (`overwrite_output_dir` starts afresh a file this run would refuse
  instead: another teacher, other settings, its sentences asked otherwise.)
- A record carries the `settings` that shaped it besides its prompt and teacher
  (`annotation_settings`: thresholds, sampling, ...): a rerun or a merge refuses records made with other
  settings, naming what differs, rather than mix two data sets in one file (records written before they
  carried settings are not checked).
- Resume keys (`<dataset name>/<example id>`) are unique by refusal: duplicate ids in a file, or two
  inputs with one dataset name (`a/conll/train.txt` and `b/conll/train.txt` are both
  `conll-train`), are an error at start that names them, as a rerun would take one sentence for
  the other. A rerun also refuses a file it cannot have written (naming file:line): a key twice,
  a sentence not among its inputs, a record made with another prompt or another teacher.
- One writer per file: a run holds an `flock` on `<file>.lock` while it writes, so a second run on
  the same file fails at once; the OS releases the lock when the process ends, however it ends.
  (On a file system without flock support it warns and goes on unlocked.)
- `merge_shards` writes `annotations.jsonl` only from a complete, consistent set of shard files:
  all n there, none still being written, each holding exactly its share of the inputs (computed
  from the inputs) with the same prompt per sentence and one teacher for all; otherwise it names
  each shard and how many sentences it lacks.
Not covered: a machine crash (power loss, kernel panic) may lose the last records the OS had not yet
written to disk, which the rerun annotates again, or rarely leave a garbled line, which it refuses
naming file:line.

`shard="i/n"` takes every n-th sentence from i into `annotations.shard-i-of-n.jsonl` (with its own
`report.shard-i-of-n.json`); `merge_shards` joins the shard files into what an unsharded run
writes (records sorted by input position).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reasoningner.configs import GOLD_TEMPLATE, CoTArguments, GenerationArguments, PromptArguments
from reasoningner.files import JSONL_ERRORS, complete_lines, exclusive, write_lines, write_whole
from reasoningner.formats import WRAPPERS, OutputFormat, ParseResult, get_format, split_answer
from reasoningner.generation import OUTPUT_OPTIONS, Completion, ConversationFailed, GenerationError
from reasoningner.jobs import in_job, stop, terminated, terminating
from reasoningner.metrics import MatchMode, example_f1
from reasoningner.prompts import prompt_hash, teacher_instruction
from reasoningner.rationale import consistency, gold_template_rationale
from reasoningner.records import STATUSES, numbered_lines, parse_record, record_status
from reasoningner.sources import is_source
from reasoningner.spans import Example
from reasoningner.tracking import differences

logger = logging.getLogger(__name__)

ANNOTATIONS = "annotations.jsonl"
REPORT = "report.json"
SHARD_FILE = re.compile(r"annotations\.shard-(\d+)-of-(\d+)\.jsonl")
INCOMPLETE_RETRIES = 2  # more tries for a sentence whose every sample came back empty or cut off
RETRY_SEED_STRIDE = 1_000_003  # a retry's seed: a seeded backend (vLLM) would repeat the same samples
FAILURES_IN_A_ROW = 64
USABLE_ENDS = ("stop", None)  # vLLM also ends with length, abort, error
AFRESH = "rerun with --overwrite_output_dir true to start afresh, or choose another output_dir"
# An answer cut off or missing is never accepted; one that states no entity must also parse without any
# other syntax problem than a wrapper (a fence, a lead-in), or junk ("Sorry, I cannot help") would pass
# for the empty answer of a sentence without entities. An answer with entities, however shaped, is
# judged by its F1: the stored answer is re-rendered canonically.
UNREADABLE = frozenset({"no_answer", "unclosed_think", "truncated"})


def shard_name(name: str, index: int | str, count: int | str) -> str:
    """`annotations.jsonl` -> `annotations.shard-1-of-4.jsonl` (`cot` -> `cot.shard-1-of-4`); unchanged
    for an unsharded run (`"*"` for index and count: the glob of every shard file)."""
    if count == 1:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}.shard-{index}-of-{count}{dot}{suffix}"


def output_path(args: CoTArguments) -> Path:
    """This shard's annotation file in `output_dir`."""
    return Path(args.output_dir) / shard_name(ANNOTATIONS, *args.shard_index())  # type: ignore[arg-type]


def report_path(args: CoTArguments) -> Path:
    """This shard's report: one per shard, so that shards running at once never share a file."""
    return Path(args.output_dir) / shard_name(REPORT, *args.shard_index())  # type: ignore[arg-type]


@dataclass(frozen=True)
class Sample:
    """One teacher sample, parsed and scored."""

    index: int
    rationale: str
    answer: str
    f1: float
    consistency: float
    completion_tokens: int
    unreadable: tuple[str, ...] = ()  # why no F1 makes its answer acceptable (`unreadable_problems`)

    def acceptable(self, args: CoTArguments) -> bool:
        return (
            not self.unreadable and self.f1 >= args.f1_threshold and self.consistency >= args.min_consistency
        )


@dataclass(frozen=True)
class Failure:
    """A sentence without a usable teacher reply: recorded as failed, and tried again by a rerun."""

    reason: str
    completion_tokens: int = 0
    tries: int = 1  # of the sentence so far, earlier runs' included: a rerun samples with other seeds


def score_sample(
    example: Example,
    completion: Completion,
    output_format: OutputFormat,
    mode: MatchMode,
    index: int = 0,
    gold_answer: bool = False,
) -> Sample:
    """Parse a teacher completion and score it against gold and against its own rationale (against the
    gold answer with `gold_answer`: the answer the rationale is stored with if accepted).

    The stored answer is the canonical rendering of what the teacher found (labels outside the
    schema dropped), so that training targets are always well-formed.
    """
    rationale, answer, problems = split_answer(completion.text)
    rationale = (rationale or "").strip()
    parsed = output_format.parse_answer(answer, example.text, example.schema, problems)
    pairs = [(s.text(example.text), s.label) for s in parsed.spans] + list(parsed.ungrounded)
    if gold_answer:
        pairs = example.span_texts()
    kept = tuple(s for s in parsed.spans if s.label in example.schema)
    return Sample(
        index=index,
        rationale=rationale,
        answer=output_format.render(Example(example.text, kept, example.schema)),
        f1=example_f1(example, parsed.spans, parsed.ungrounded, mode),
        consistency=consistency(rationale, pairs, example.schema) if rationale else 0.0,
        completion_tokens=completion.completion_tokens,
        unreadable=unreadable_problems(parsed),
    )


def unreadable_problems(parsed: ParseResult) -> tuple[str, ...]:
    """The problems that keep an answer from being accepted whatever its F1 (`UNREADABLE`)."""
    kinds = {problem.kind for problem in parsed.problems}
    if parsed.spans or parsed.ungrounded:
        return tuple(sorted(kinds & UNREADABLE))
    return tuple(sorted(kinds & UNREADABLE or parsed.syntax_problems - WRAPPERS))


def best_sample(samples: Sequence[Sample], args: CoTArguments) -> Sample:
    """An acceptable sample if there is one (a sample of F1 1 below `min_consistency` is not one, while
    another of F1 0.9 above it may be), then the highest F1, consistency, then the earliest."""
    return max(samples, key=lambda s: (s.acceptable(args), s.f1, s.consistency, -s.index))


def unusable(completion: Completion) -> str | None:
    """Why a sample is no answer at all (cut off, ended by the engine, or empty), or None. Scored, such
    a sample would pass for a teacher that answered wrong."""
    if completion.finish_reason == "length":
        return "cut off at max_new_tokens"
    if completion.finish_reason not in USABLE_ENDS:
        return f"ended by the engine ({completion.finish_reason})"
    if not completion.text.strip():
        return "empty reply"
    return None


def gold_template_sample(example: Example, output_format: OutputFormat, context_words: int = 3) -> Sample:
    """The teacher-free annotation: a rationale written from the gold spans, the gold answer."""
    rationale = gold_template_rationale(example, context_words)
    pairs = example.span_texts()
    return Sample(
        0, rationale, output_format.render(example), 1.0, consistency(rationale, pairs, example.schema), 0
    )


def example_key(dataset: str, example: Example) -> str:
    return f"{dataset}/{example.id}"


@dataclass(frozen=True)
class Task:
    """One sentence to annotate: its position in the whole input (for merging) and how it is asked."""

    position: int
    dataset: str
    example: Example
    prompt: PromptArguments

    @property
    def key(self) -> str:
        """The resume key: which record holds this sentence."""
        return example_key(self.dataset, self.example)

    @property
    def conversation(self) -> list[dict[str, str]]:
        """The teacher's prompt, built when asked (~0.2 ms) and not kept: a shard of a large input builds
        only its own share's, and the tasks of all shards, which each shard reads, hold none."""
        content = teacher_instruction(self.example.text, self.example.schema, self.prompt)
        return [{"role": "user", "content": content}]

    @functools.cached_property
    def prompt_hash(self) -> str:
        return prompt_hash(self.conversation)


def load_all_tasks(args: CoTArguments, prompt: PromptArguments) -> list[Task]:
    """All input sentences in order, with positions over the whole input.

    Refuses resume keys that are not unique, before anything is written or loaded: a rerun would
    count one sentence's record as another's and skip it.
    """
    tasks: list[Task] = []
    names: dict[str, str] = {}
    clashes: list[str] = []
    for path in args.datasets:
        dataset = args.read(path)
        if dataset.name in names:
            clash = f"{names[dataset.name]} and {path} are both named {dataset.name!r}"
            if is_source(path) or is_source(names[dataset.name]):  # a Hub source's name is its set's
                clash += " (splits of one Hub source: annotate each in a run with its own output_dir)"
            clashes.append(clash)
            continue
        names[dataset.name] = path
        examples = dataset.examples[: args.limit]
        repeated = [i for i, n in Counter(e.id for e in examples).items() if n > 1]
        if repeated:
            shown = ", ".join(map(repr, repeated[:10])) + (", ..." if len(repeated) > 10 else "")
            clashes.append(f"{path} has {len(repeated)} ids more than once: {shown}")
        tasks += [
            Task(position, dataset.name, example, prompt)
            for position, example in enumerate(examples, len(tasks))
        ]
    if clashes:
        raise ValueError(
            "resume keys (<dataset name>/<id>) must be unique, or a rerun would take one sentence for "
            f"another: {'; '.join(clashes)}. Give each file a name of its own and each sentence its own id"
        )
    return tasks


def load_tasks(args: CoTArguments, prompt: PromptArguments) -> list[Task]:
    """This shard's share of `load_all_tasks`: every n-th sentence from i."""
    index, count = args.shard_index()
    return load_all_tasks(args, prompt)[index::count]


def _known(
    records: Iterable[tuple[str, bytes, dict[str, Any]]], share: Mapping[str, Task], path: Path
) -> Iterator[tuple[str, bytes, dict[str, Any], Task]]:
    """`(path:line, the line as read, record, its task)`, refusing a key twice or a key that is not in
    `share`. The line is what a rewrite or a merge writes back: records are not serialized again."""
    seen: dict[str, str] = {}
    for where, line, record in records:
        key = record.get("key")
        if key in seen:
            raise ValueError(f"{where}: {key!r} is already at {seen[key]} (did two runs write this file?)")
        if key not in share:
            raise ValueError(
                f"{where}: {key!r} is not one of the sentences of {path.name} (the run that wrote it read "
                f"other datasets, or had another limit or shard): {AFRESH}"
            )
        seen[key] = where
        yield where, line, record, share[key]


def _check_prompt(where: str, record: dict[str, Any], task: Task) -> None:
    """A record asked otherwise than this run asks would mix two data sets in one file."""
    if record.get("prompt_hash") != task.prompt_hash:
        raise ValueError(
            f"{where}: {task.key!r} was asked with another prompt (prompt_hash {record.get('prompt_hash')}, "
            f"now {task.prompt_hash}): the prompt settings or wording changed; {AFRESH}"
        )


def _check_teacher(where: str, record: dict[str, Any], teacher: str) -> None:
    if record.get("teacher") != teacher:
        raise ValueError(
            f"{where}: {record.get('key')!r} was annotated by {record.get('teacher')}, this run's teacher "
            f"is {teacher}: {AFRESH}"
        )


def _first_kept(path: Path) -> tuple[str, dict[str, Any]] | None:
    """The output file's first kept record with its `file:line` (a failed one may differ from this run's
    settings: it is asked again), or None."""
    if not path.is_file():
        return None
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.endswith(b"\n"):
                return None  # a half-written last line: `resume` cuts it
            if not line.strip():
                continue
            where = f"{path}:{number}"
            record = parse_record(line, where)
            if record_status(record) != "failed":
                return where, record
    return None


def fresh_start(
    args: CoTArguments,
    prompt: PromptArguments,
    generation: GenerationArguments,
    tasks: Sequence[Task] | None = None,
) -> bool:
    """Whether this run starts its output file afresh: `overwrite_output_dir`, unless the file holds this
    very run (`ResumableArguments`): every record one this run could have written, as `resume` checks
    them. A file it would refuse (another run's, inputs changed since, a broken line) starts afresh.
    `tasks`: the run's sentences where the caller has read them already (else read here, if needed)."""
    path = output_path(args)
    this_run = False
    if args.overwrite_output_dir and path.is_file():
        teacher, settings = teacher_name(generation), annotation_settings(args, generation)
        if tasks is None:
            tasks = load_tasks(args, prompt)  # its errors are the inputs', not the file's
        try:
            checked = _checked(complete_lines(path)[0], tasks, teacher, settings, path)
            # A failed record is not checked (it is asked again): only a kept one shows whose file it is.
            # A sum, not any(): every record is checked.
            this_run = sum(record_status(record) != "failed" for _, _, record, _ in checked) > 0
        except ValueError:  # a record this run would refuse: another run's file
            pass
    return args.fresh_start(this_run=this_run)


def check_continues(args: CoTArguments, generation: GenerationArguments) -> None:
    """Refuse, before a relaunch opens the W&B run of the first attempt, an output file annotated by
    another teacher or with other settings, as its first kept record says (`resume` checks them all
    later): the refused run would have been logged into that run, its config replaced. For a run that
    continues its file (not a `fresh_start`)."""
    first = _first_kept(output_path(args))
    if first is not None:
        where, record = first
        _check_teacher(where, record, teacher_name(generation))
        _check_settings(where, record, annotation_settings(args, generation))


def _check_settings(where: str, record: dict[str, Any], settings: dict[str, Any]) -> None:
    """A record made with other thresholds or sampling would mix two data sets in one file; one written
    before records carried their settings cannot be checked."""
    if "settings" in record and (changed := differences(record["settings"], settings)):
        key, what = record.get("key"), "; ".join(changed)
        raise ValueError(f"{where}: {key!r} was annotated with other settings ({what}): {AFRESH}")


def resume(
    path: Path, tasks: Sequence[Task], teacher: str, settings: dict[str, Any]
) -> tuple[set[str], dict[str, int]]:
    """Keys of the records in `path` that this run keeps and need not annotate again, and the tries the
    failed ones took (their retries then sample with other seeds).

    A half-written last line (a kill mid-write) is cut off and failed records are dropped, so that
    their sentences are annotated again, by one atomic rewrite; their tries are kept in `tries_path`
    until the sentences have records again. Records this run cannot have written
    are refused (`_known`, `_check_prompt`, another teacher, `_check_settings`); failed ones may differ,
    being dropped.
    """
    if not path.exists():
        tries_path(path).unlink(missing_ok=True)  # of a file deleted by hand
        return set(), {}
    lines, cut = complete_lines(path)
    kept: list[bytes] = []  # the lines of the records kept, written back as they were read
    done: set[str] = set()
    counts = tries_path(path)
    tried: dict[str, int] = json.loads(counts.read_text(encoding="utf-8")) if counts.is_file() else {}
    for _, line, record, task in _checked(lines, tasks, teacher, settings, path):
        if record_status(record) == "failed":
            tried[task.key] = max(tried.get(task.key, 0), int(record.get("tries") or 1))
            continue
        kept.append(line)
        done.add(record["key"])
    tried = {key: count for key, count in tried.items() if key not in done}
    # The failed records' tries go to their own file before the rewrite drops the records: a kill
    # after it would have their retries sample again with seeds that failed.
    if tried:
        write_whole(counts, json.dumps(tried, sort_keys=True) + "\n")
    else:
        counts.unlink(missing_ok=True)
    if len(kept) != len(lines) or cut:
        write_lines(path, kept)
    return done, tried


def _checked(
    lines: Sequence[tuple[str, bytes]],
    tasks: Sequence[Task],
    teacher: str,
    settings: dict[str, Any],
    path: Path,
) -> Iterator[tuple[str, bytes, dict[str, Any], Task]]:
    """The records of `lines` with their tasks, refusing one this run cannot have written (`_known`,
    `_check_prompt`, another teacher, `_check_settings`); a failed one may differ, being asked again."""
    records = ((where, line, parse_record(line, where)) for where, line in lines)  # parsed one at a time
    for where, line, record, task in _known(records, {t.key: t for t in tasks}, path):
        if record_status(record) != "failed":
            _check_prompt(where, record, task)
            _check_teacher(where, record, teacher)
            _check_settings(where, record, settings)
        yield where, line, record, task


def tries_path(path: Path) -> Path:
    """Where `resume` keeps the tries of failed sentences whose records it dropped."""
    return path.with_name(path.name + ".tries.json")


def annotation_settings(args: CoTArguments, generation: GenerationArguments) -> dict[str, Any]:
    """What shapes a record besides its prompt and teacher: how the teacher samples (with the backend
    options that change its text, `generation.OUTPUT_OPTIONS`) and which samples are kept; for the
    gold template, its context words and thresholds. Where and how fast a run goes (servers, batch
    sizes) and a larger `limit` may change between the attempts of one run, and so may
    `max_new_tokens`: a kept sample ended below the old limit, and a larger one is how sentences cut
    off are retried."""
    acceptance = {"f1_threshold": args.f1_threshold, "min_consistency": args.min_consistency}
    if generation.backend == GOLD_TEMPLATE:
        return {"template_context_words": args.template_context_words, **acceptance}
    options = generation.backend_options or {}
    return {
        "samples_per_sentence": args.samples_per_sentence,
        **acceptance,
        "match_mode": args.match_mode,
        "gold_answer": args.gold_answer,
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "seed": generation.seed,
        **{f"backend_options.{k}": options[k] for k in sorted(OUTPUT_OPTIONS & options.keys())},  # type: ignore[operator]
    }


def build_record(
    task: Task,
    outcome: Sample | Failure,
    args: CoTArguments,
    prompt: PromptArguments,
    teacher: str,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The record of one sentence (layout: `records`)."""
    if isinstance(outcome, Failure):
        annotation: dict[str, Any] = {
            "rationale": "",
            "answer": "",
            "answer_source": None,
            "f1": None,
            "consistency": None,
            "accepted": False,
            "status": "failed",
            "reason": outcome.reason,
            "sample_index": None,
            "tries": outcome.tries,
        }
    else:
        accepted = outcome.acceptable(args)
        gold = args.gold_answer and accepted
        annotation = {
            "rationale": outcome.rationale,
            "answer": get_format(prompt.output_format).render(task.example) if gold else outcome.answer,
            "answer_source": "gold" if gold else "teacher",
            "f1": outcome.f1,
            "consistency": outcome.consistency,
            "accepted": accepted,
            "status": "accepted" if accepted else "rejected",
            "reason": f"unreadable answer ({', '.join(outcome.unreadable)})" if outcome.unreadable else None,
            "sample_index": outcome.index,
            "tries": None,
        }
    return {
        "key": task.key,
        "position": task.position,
        "dataset": task.dataset,
        "id": task.example.id,
        "text": task.example.text,
        "entities": task.example.entity_dicts(),
        "labels": list(task.example.schema.labels),
        "descriptions": dict(task.example.schema.descriptions),
        "output_format": prompt.output_format,
        **annotation,
        "teacher": teacher,
        "completion_tokens": outcome.completion_tokens,
        "prompt_hash": task.prompt_hash,
        "settings": settings,
    }


def _outcomes(
    args: CoTArguments,
    prompt: PromptArguments,
    generation: GenerationArguments,
    tasks: Sequence[Task],
    tried: Mapping[str, int],
    waiting: dict[str, tuple[Task, Failure]],
    engine: contextlib.ExitStack,
    check_signal: Callable[[], None],
) -> Iterator[tuple[Task, Sample | Failure]]:
    """Annotate `tasks`, yielding each as soon as it is scored or has failed for good.

    Sentences are asked `chunk_size` at a time. A sentence whose replies all came back empty or cut off
    is asked again with the next chunk, which takes that many fewer new sentences (a retry round of its
    own, a few sentences after each chunk, left a batching teacher nearly idle for the longest replies'
    time); the last chunk's go on in rounds of their own. Each try of a sentence samples with its own
    seed, counting the tries earlier runs `tried` (a seeded backend, vLLM, repeats a request's samples).
    `waiting` holds the sentences to be asked again (or asked again now), each with the record it
    gets if the run stops first: failed, with its tries, so that a rerun asks it with seeds no try
    used; a sentence leaves it only as `annotate` writes the record yielded for it. `check_signal`
    raises a SIGTERM whose own raise was lost (`jobs.Termination`).
    """
    if not tasks:  # a finished shard rerun: no engine is loaded (minutes for a large teacher)
        return
    output_format = get_format(prompt.output_format)
    if generation.backend == GOLD_TEMPLATE:
        for task in tasks:
            yield task, gold_template_sample(task.example, output_format, args.template_context_words)
        return
    sampling = generation.sampling(n=args.samples_per_sentence)
    if sampling.greedy and sampling.n > 1:
        logger.warning(
            "temperature 0: the %d samples per sentence are one greedy answer repeated; set a temperature "
            "above 0 to sample different ones",
            sampling.n,
        )
    mode: MatchMode = args.match_mode  # type: ignore[assignment]
    local_greedy = sampling.greedy and generation.backend != "openai"
    retries = 0 if local_greedy else INCOMPLETE_RETRIES
    failed_in_a_row, unusable_in_a_row, answered = 0, 0, False
    asked: Counter[str] = Counter()  # tries of each sentence in this run
    spent: Counter[str] = Counter()  # completion tokens of every sample of every try of a sentence
    chunk_seconds = 0.0  # how long the last chunk took
    position = 0  # of the next new sentence in `tasks`
    # Closed by annotate once it has recorded what waits: an engine's shutdown may take seconds.
    generator = engine.enter_context(generation.build_generator())
    while position < len(tasks) or waiting:
        check_signal()
        # Not a chunk the job's time limit would cut short; at least one an attempt (a start-up
        # that used the time would otherwise requeue the job for ever).
        if asked and position < len(tasks) and args.job_ending(interval=chunk_seconds):
            raise _Requeue(
                f"cot: stopped before the job's time limit with {position} of {len(tasks)} sentences "
                f"asked (stop_before_job_end {args.stop_before_job_end:g} s, a chunk "
                f"{chunk_seconds:.0f} s)"
            )
        began = time.monotonic()
        fresh = max(args.chunk_size - len(waiting), 0)
        group = [task for task, _ in waiting.values()] + list(tasks[position : position + fresh])
        position += fresh
        for task in group:
            asked[task.key] += 1
            if task.key in waiting:  # its record if the run stops during this try
                failure = waiting[task.key][1]
                tries = _tries(task, tried, asked)
                waiting[task.key] = (
                    task,
                    replace(failure, tries=tries, reason=f"{failure.reason}; try {tries} cut short"),
                )
        seeds = [_seed(sampling.seed, _tries(task, tried, asked)) for task in group]
        replies, refusals = 0, 0  # refusals of sentences on their first try
        last_refusal = None
        for index, outcome in generator.generate_outcomes([t.conversation for t in group], sampling, seeds):
            check_signal()
            task = group[index]
            tries = _tries(task, tried, asked)
            if isinstance(outcome, ConversationFailed):
                yield task, Failure(str(outcome), spent[task.key], tries)
                if outcome.refused:
                    # It answered, refusing this prompt (too long): back at once, ahead of the
                    # answers a group waits minutes for, so judged by the whole group.
                    if tries == 1:  # one refused before says nothing new about the teacher
                        refusals, last_refusal = refusals + 1, outcome
                    continue
                failed_in_a_row += 1
                if failed_in_a_row >= FAILURES_IN_A_ROW:
                    down = _teacher_down(failed_in_a_row, outcome)
                    # One that had answered died: the job restarts server and stage.
                    raise _Requeue(f"cot: {down}") if answered and in_job() else down
                continue
            failed_in_a_row, replies = 0, replies + 1
            # Greedy, the backend answered once and repeated it: its tokens count once.
            spent[task.key] += (
                outcome[0].completion_tokens if sampling.greedy else sum(c.completion_tokens for c in outcome)
            )
            usable = [(i, c) for i, c in enumerate(outcome) if unusable(c) is None]
            if usable:
                answered, unusable_in_a_row = True, 0
                scored = [
                    score_sample(task.example, c, output_format, mode, i, args.gold_answer) for i, c in usable
                ]
                yield task, replace(best_sample(scored, args), completion_tokens=spent[task.key])
                continue
            failure = _no_usable_reply(outcome, tries, spent[task.key])
            if asked[task.key] <= retries:
                waiting[task.key] = (task, failure)
            else:
                yield task, failure
            # Sentences asked for the first time: a retry of a hard one, or a rerun of the failed, says
            # nothing new of the teacher.
            if tries == 1:
                unusable_in_a_row += 1
                if unusable_in_a_row >= FAILURES_IN_A_ROW:
                    raise _teacher_unusable(unusable_in_a_row, outcome)
        if not replies and last_refusal is not None and refusals >= FAILURES_IN_A_ROW:
            raise _teacher_refuses(refusals, last_refusal)
        chunk_seconds = time.monotonic() - began


class _Requeue(Exception):
    """Stage 1 ends this attempt for the job to go on in another (`jobs.stop`), once the sentences
    waiting for a retry are recorded and its progress logged (`annotate`)."""


def _tries(task: Task, tried: Mapping[str, int], asked: Mapping[str, int]) -> int:
    """Which try of `task` its latest ask is, earlier runs' tries included."""
    return tried.get(task.key, 0) + asked[task.key]


def _seed(seed: int | None, tries: int) -> int | None:
    """The seed of a sentence's try: a seeded backend would repeat the samples of a try that failed."""
    return None if seed is None else seed + (tries - 1) * RETRY_SEED_STRIDE


def _no_usable_reply(outcome: Sequence[Completion], tries: int, tokens: int) -> Failure:
    """Its tries, earlier runs' included, as the record's `tries` counts them."""
    why = "; ".join(sorted({unusable(c) or "" for c in outcome}))
    attempts = "1 try" if tries == 1 else f"{tries} tries"
    return Failure(f"no usable reply in {attempts}: {why}", tokens, tries)


def _teacher_refuses(count: int, last: ConversationFailed) -> GenerationError:
    return GenerationError(
        f"the teacher refused all {count} new sentences asked together and answered none (last: {last}): "
        "does every request fit its context (max_model_len, max_new_tokens), is this the model it serves? "
        "Stopping; a rerun keeps what was annotated and retries the failed"
    )


def _teacher_unusable(count: int, last: Sequence[Completion]) -> GenerationError:
    """A teacher that answers but never usably: every reply cut off (a thinking model's free thinking
    runs past the budget) would otherwise fill the whole dataset with failed records."""
    why = "; ".join(sorted({unusable(c) or "" for c in last}))
    return GenerationError(
        f"the teacher's replies to the last {count} sentences asked held no usable sample (last: {why}): is "
        "max_new_tokens enough for its rationale and answer, and is a thinking model's own thinking off "
        "(backend_options.chat_template_kwargs: {enable_thinking: false})? Stopping; a rerun keeps what was "
        "annotated and retries the failed"
    )


def _teacher_down(count: int, last: ConversationFailed) -> GenerationError:
    return GenerationError(
        f"the teacher failed {count} sentences in a row, none answered in between (last: {last}): is it "
        "up, and does every request fit its context? Stopping; a rerun keeps what was annotated and "
        "retries the failed"
    )


def teacher_name(generation: GenerationArguments) -> str:
    if generation.backend == GOLD_TEMPLATE:
        return GOLD_TEMPLATE
    return f"{generation.backend}:{generation.model_name_or_path}"


def annotate(
    args: CoTArguments,
    prompt: PromptArguments,
    generation: GenerationArguments,
    on_progress: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Annotate what this shard's output file lacks, failed sentences included; return the report
    of the whole file (also written to `report_path`). Guarantees: the module docstring. With
    `overwrite_output_dir` a file of another run is started afresh (`fresh_start`; under the lock: never
    under a running writer).
    `on_progress` (W&B's `log`) gets `Progress` metrics every `logging_seconds` and at the end."""
    path = output_path(args)
    tasks = load_tasks(args, prompt)
    teacher = teacher_name(generation)
    settings = annotation_settings(args, generation)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path):
        if fresh_start(args, prompt, generation, tasks):
            path.unlink(missing_ok=True)
            tries_path(path).unlink(missing_ok=True)
        done, tried = resume(path, tasks, teacher, settings)
        todo = [task for task in tasks if task.key not in done]
        started = time.perf_counter()
        progress = Progress(on_progress, args.logging_seconds, done=len(done), total=len(tasks))
        waiting: dict[str, tuple[Task, Failure]] = {}  # `_outcomes`: recorded as failed if the run stops
        with (
            path.open("a", encoding="utf-8", errors=JSONL_ERRORS, newline="\n") as out,
            tqdm(total=len(todo), desc="cot", unit="sent") as bar,
            terminating() as terminate,
            contextlib.ExitStack() as engine,  # the teacher's, if `_outcomes` needs one
        ):

            def write(task: Task, outcome: Sample | Failure) -> dict[str, Any]:
                # The record and its sentence's leaving `waiting` are one step: a SIGTERM between them
                # would record the sentence twice, or not at all. It is raised once it is counted.
                raising, terminate.raising = terminate.raising, False
                try:
                    record = build_record(task, outcome, args, prompt, teacher, settings)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                    waiting.pop(task.key, None)
                finally:
                    terminate.raising = raising
                return record

            try:
                for task, outcome in _outcomes(
                    args, prompt, generation, todo, tried, waiting, engine, terminate.check
                ):
                    progress.add(write(task, outcome))
                    bar.update()
                    terminate.check()  # a SIGTERM noted while the record was written
            except Exception as stopping:  # an error, a stop, SIGTERM: only a kill loses the waiting's tries
                terminate.raising = False  # a SIGTERM from here on (`stop`'s requeue sends one) is noted only
                for task, failure in list(waiting.values()):  # each leaves it as it is written
                    write(task, failure)
                progress.report()  # before `stop` or `terminated` ends the W&B run
                if terminate.signal is not None:  # also when its raise came back as another error
                    count = f"{progress.done} of {len(tasks)} done"
                    terminated(f"cot: {terminate.signal} (a preemption, scancel) with {count}")
                if isinstance(stopping, _Requeue):
                    stop(str(stopping))
                raise
        progress.report()
        tries_path(path).unlink(missing_ok=True)  # every sentence has its record now, a failed one its tries
        counted = [reported(record) for _, _, record in numbered_lines(path)]
        report = summarize(counted, seconds=time.perf_counter() - started, annotated=len(todo))
        write_whole(report_path(args), json.dumps(report, indent=2) + "\n")
    return report


class Progress:
    """A run's progress as metrics (`cot/...`, for W&B), every `every` seconds and at its end: the file's
    sentences done (accepted or rejected: what a rerun keeps) and the time left at the current speed,
    and, over the records written since the last report, how fast the teacher goes and how its answers
    fare (`summarize`): a days-long run shows a teacher that slows down or starts failing as it
    happens. The clock starts at the first record: an engine's start-up is no slow teacher."""

    def __init__(
        self, log: Callable[[dict[str, float]], None] | None, every: float, done: int, total: int
    ) -> None:
        self.log, self.every, self.done, self.total = log, every, done, total
        self.window: list[dict[str, Any]] = []  # `reported` fields of the records since the last report
        self.since: float | None = None
        self.untimed = 0  # records of the window that came with the clock's start: no time of their own

    def add(self, record: dict[str, Any]) -> None:
        if record_status(record) != "failed":
            self.done += 1
        if self.log is None:
            return
        self.window.append(reported(record))
        if self.since is None:
            self.since, self.untimed = time.monotonic(), 1
        elif time.monotonic() - self.since >= self.every:
            self.report()

    def report(self) -> None:
        """Log the records since the last report, if any."""
        if self.log is None or not self.window or self.since is None:
            return
        seconds = max(time.monotonic() - self.since, 1e-6)
        window = summarize(self.window, seconds, annotated=len(self.window))
        metrics = {
            "cot/sentences_done": self.done,
            "cot/sentences_left": self.total - self.done,
            "cot/failure_rate": window["failed"] / len(self.window),
        }
        if timed := self.window[self.untimed :]:  # speeds over the records that came in the time counted
            speed = len(timed) / seconds
            metrics |= {
                "cot/hours_left": (self.total - self.done) / speed / 3600,
                "cot/sentences_per_second": speed,
                "cot/completion_tokens_per_second": sum(r["completion_tokens"] for r in timed) / seconds,
            }
        self.log(metrics | {f"cot/{key}": window[key] for key in PROGRESS_MEANS})
        self.window, self.since, self.untimed = [], time.monotonic(), 0


PROGRESS_MEANS = ("acceptance_rate", "teacher_f1_mean", "consistency_mean")


def merge_shards(args: CoTArguments, prompt: PromptArguments) -> Path:
    """Join the `annotations.shard-i-of-n.jsonl` files of `args.output_dir` into `annotations.jsonl`,
    in input order, as an unsharded run writes it.

    `args` and `prompt` must be those the shards ran with (the same recipe): the shares and prompts
    are computed from them. Nothing is written unless every shard file is there, none is still being
    written, each holds exactly its share, and all were made with the same prompts and one teacher;
    the error names each shard that falls short and how many sentences it lacks.
    """
    output_dir = Path(args.output_dir)  # type: ignore[arg-type]
    found = [
        m for m in map(SHARD_FILE.fullmatch, (p.name for p in output_dir.glob("annotations.shard-*"))) if m
    ]
    if not found:
        raise FileNotFoundError(f"{output_dir}: no annotations.shard-*-of-*.jsonl files to merge")
    counts = sorted({int(m[2]) for m in found})
    if len(counts) != 1:
        names = sorted(m[0] for m in found)
        raise ValueError(f"{output_dir}: shard files of {len(counts)} different splits {names}: keep one set")
    count = counts[0]
    tasks = load_all_tasks(args, prompt)
    problems: list[str] = []
    # Each record's position, line as read (written back as it is) and what the report counts: the
    # records of a large set are not all held as dicts (tens of GB at 500k sentences).
    merged: list[tuple[int, bytes, dict[str, Any]]] = []
    teachers: dict[Any, set[int]] = {}
    settings: list[tuple[dict[str, Any], set[int]]] = []  # each set of recorded settings, its shards
    paths = [output_dir / shard_name(ANNOTATIONS, index, count) for index in range(count)]
    with contextlib.ExitStack() as held:
        held.enter_context(exclusive(output_dir / ANNOTATIONS))
        for path in paths:  # all first: a shard still being written is not "incomplete"
            if path.exists():
                held.enter_context(exclusive(path))
        for index, path in enumerate(paths):
            share = {task.key: task for task in tasks[index::count]}
            if not path.exists():
                problems.append(f"shard {index}/{count}: {path.name} is missing ({len(share)} sentences)")
                continue
            got, present = [], set()
            for where, line, record, task in _known(numbered_lines(path), share, path):
                _check_prompt(where, record, task)
                teachers.setdefault(record.get("teacher"), set()).add(index)
                if "settings" in record:  # written before records carried their settings: not checked
                    _group(settings, record["settings"], index)
                got.append((record["position"], line, reported(record)))
                present.add(record["key"])
            if len(got) < len(share):
                lacking = [key for key in share if key not in present]
                problems.append(
                    f"shard {index}/{count}: {path.name} has {len(got)} of its {len(share)} sentences, "
                    f"{len(lacking)} missing (first {lacking[0]!r}): rerun it with --shard {index}/{count}"
                )
            merged += got
        if len(teachers) > 1:
            who = ", ".join(f"{t} (shards {sorted(s)})" for t, s in teachers.items())
            problems.append(f"the shards were annotated by different teachers: {who}")
        first, shards = settings[0] if settings else ({}, set())
        for other, where in settings[1:]:
            changed = "; ".join(differences(first, other))
            problems.append(f"shards {sorted(shards)} and {sorted(where)}: other settings ({changed})")
        if problems:
            raise ValueError(
                f"{output_dir}: the shard files are not one complete set, nothing merged:\n  "
                + "\n  ".join(problems)
            )
        merged.sort(key=lambda entry: entry[0])
        target = output_dir / ANNOTATIONS
        write_lines(target, (line for _, line, _ in merged))
        report = summarize([counted for _, _, counted in merged], seconds=0.0, annotated=0)
        write_whole(output_dir / REPORT, json.dumps(report, indent=2) + "\n")
    return target


def _group(groups: list[tuple[dict[str, Any], set[int]]], settings: dict[str, Any], shard: int) -> None:
    """Add `shard` to the group of `settings` (the same by `tracking.differences`: a path spelled
    otherwise is the same setting), or open a group."""
    for known, shards in groups:
        if not differences(known, settings):
            shards.add(shard)
            return
    groups.append((settings, {shard}))


# The fields of a record `summarize` reads: what a large run's report holds of each record.
REPORTED = ("status", "accepted", "f1", "consistency", "completion_tokens", "teacher")


def reported(record: dict[str, Any]) -> dict[str, Any]:
    """What `summarize` reads of `record` (`REPORTED`)."""
    return {key: record.get(key) for key in REPORTED}


def summarize(records: Sequence[dict[str, Any]], seconds: float, annotated: int) -> dict[str, Any]:
    """Counts by status (accepted + rejected + failed = sentences); teacher F1 and consistency over
    the scored records (a failed one has no scores); tokens and time."""
    total = len(records)
    statuses = Counter(record_status(r) for r in records)
    scored = [r for r in records if record_status(r) != "failed"]
    f1s = [r["f1"] for r in scored]
    consistencies = [r["consistency"] for r in scored]
    histogram = [0] * 10
    for value in consistencies:
        histogram[min(int(value * 10), 9)] += 1
    return {
        "sentences": total,
        **{status: statuses[status] for status in STATUSES},
        "acceptance_rate": statuses["accepted"] / total if total else 0.0,
        "teacher_f1_mean": statistics.fmean(f1s) if f1s else 0.0,
        "teacher_exact_rate": sum(f == 1.0 for f in f1s) / len(f1s) if f1s else 0.0,
        "consistency_mean": statistics.fmean(consistencies) if consistencies else 0.0,
        "consistency_histogram": {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": n for i, n in enumerate(histogram)},
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "teachers": sorted({r["teacher"] for r in records}),
        "annotated_this_run": annotated,
        "seconds_this_run": round(seconds, 3),
        "sentences_per_second_this_run": round(annotated / seconds, 2) if seconds else None,
    }
