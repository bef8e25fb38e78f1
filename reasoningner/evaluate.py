"""Evaluation: run a model over the evaluation sets of a recipe; scores, error analysis, probes.

    python stages/eval.py --config recipes/tiny-cpu/eval.yaml [--limit 20] [--model_name_or_path DIR]

Each evaluation set of the recipe is a file and how to read it::

    datasets:
      - path: data/crossner/ai-dev-slice.txt
        reader: conll                    # default: the recipe's `reader` (auto: sniffed)
        name: crossner-ai                # default: the reader's name for the file
        labels: [person, organisation]   # a subset, in prompt order (the trained labels: in training
                                         # order); or {source: shown} to rename
        descriptions: {person: ...}      # one line per label, for the prompt (zero-shot needs them)
        probes: [opaque]                 # default: the recipe's `probes`

`labels` decides the label set: gold spans of other labels are dropped, the listed labels are
shown in the prompt even if the file never uses them (CoNLL files only state the labels that
occur, so recipes list them). Descriptions come from the file (alpaca instructions) and the
recipe, which wins; they follow a rename. Every sentence is asked with the training prompt and its
answer parsed by the format's parser through `predict.NERModel`, the path `reasoningner predict`
takes, with any `generation` backend: transformers on CPU, vLLM on GPUs.

Scores (`metrics.Scorer`, both matching modes): micro P/R/F1 per dataset and per type, and the
unweighted average over datasets, one row per dataset + Avg as in ReasoningNER's Table 1. The
primary mode is `text` (text-pair F1, what ReasoningNER reports); `exact` (exact spans, what
LLMs4NER reports) is always given next to it. `primary_mode` changes which leads; `compat` counts one
mode as a paper's own scripts do (`reasoningner/compat.py`: ReasoningNER's text mode, LLMs4NER's exact).

Error analysis, counted per output in the exact-span view (a prediction is classified by the first
rule that applies, so every wrong prediction lands in exactly one category):

- format failure: an output whose answer has a syntax problem (any parse problem outside
  `formats.CONTENT_PROBLEMS`: no answer, unclosed `<think>`, invalid or truncated JSON, wrong shape,
  bad entry, unbalanced tags, extra text, code fence, altered sentence, offset mismatch). Its
  recoverable entities are still scored. `no answer` counts the outputs with nothing to read at
  all (`no_answer` or `unclosed_think`), a subset of the format failures.
- cut off: an output that ran into `max_new_tokens`, as the backend says (its `finish_reason` in
  `generations.jsonl`): raise the budget when these are many; most are format failures too.
- hallucinated: a predicted mention that is not in the sentence (ungrounded), counted once per
  distinct (normalized text, label) of an output, as the metrics count it.
- type error: a grounded prediction at the offsets of a gold span, with another label.
- boundary error: otherwise, a prediction that overlaps a gold span of the same label at other
  offsets (too long, too short or shifted).
- spurious: any other wrong grounded prediction (no gold span there, or only one of another label
  at other offsets).
- missed: a gold span that no prediction found, typed wrongly (type error) or overlapped with its
  label (boundary error).

So the exact-mode false positives are type + boundary + spurious + hallucinated, and missed <= the
false negatives (a gold span behind a type or boundary error is a false negative but not missed).

Memorization probe (after RQ3 of "Assessment of Generative NER in the Era of LLMs", at test time
only: its released data also fine-tune on relabelled training sets): the set is asked and scored
again with its labels renamed, gold included and in the format example the prompt shows, and the
F1 drop is reported next to the normal score. `opaque` names the labels A, B, C, ... in schema
order; `shuffled` gives them a seeded permutation of the real names with no label keeping its own
(`probe_seed`). Descriptions stay with their entity type, not with the name: an opaque label keeps
the real description, and after shuffling `location` may be described as people. The probe then asks
whether the model relies on the label *name* it memorized or on the definition it is given; with no
descriptions (CoNLL) opaque labels carry no meaning at all and the drop shows how much the name
carried.

Output in `output_dir`: `results.json` (everything below, ratios as fractions), `results.md`
(Markdown tables: scores in both modes, per type, error analysis, probe drops) and
`generations.jsonl` (one line per output as it finishes: dataset, variant, id, text, labels, raw
output, parsed spans, ungrounded mentions, parse problems, gold, error counts).

A rerun into the same folder (a relaunch after a kill, or a rescoring) asks only what
`generations.jsonl` has no output for: each output is kept under the fingerprint of what it was
asked with (`asked`: the prompt, every generation setting but where and how fast it runs (servers,
batch sizes, memory: `generation.RUN_OPTIONS`) and, for a local model, its files' contents: a model
retrained in place answers anew; a Hub model, by the commit of its snapshot; a server's model is known
by its name only), and parsed and scored again with today's code.
Earlier outputs this run does not ask for (other sentences: a smaller `limit`, another dataset list;
other settings or model files) are moved to `generations.other.jsonl`, where a later run that asks them
finds them again: nothing asked is lost. Delete both files to ask everything again.
With an injected `generator` (tests) nothing is kept: its outputs cannot be identified.

General capability, optional and not in CI: with lm-evaluation-harness installed (it is not a
dependency), check that NER training kept the base model's skills::

    lm_eval --model hf --model_args pretrained=DIR,dtype=bfloat16 --apply_chat_template \\
        --tasks mmlu,gsm8k,hellaswag --batch_size auto --output_path DIR/lm-eval
    lm_eval --model vllm --model_args pretrained=DIR,tensor_parallel_size=1 --tasks mmlu,gsm8k ...
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reasoningner.compat import check_compat, compat_counts
from reasoningner.configs import (
    DataArguments,
    EvalArguments,
    GenerationArguments,
    PromptArguments,
    PromptContract,
    hub_commit,
    is_hub_id,
)
from reasoningner.files import JSONL_ERRORS, complete_lines, exclusive, write_lines, write_whole
from reasoningner.formats import ParseResult
from reasoningner.generation import RUN_OPTIONS, Completion, Generator
from reasoningner.metrics import MATCH_MODES, Report, Scorer, text_keys
from reasoningner.model_card import CARD, RUN_PROGRESS
from reasoningner.predict import FAILED, TOO_LONG, NERModel
from reasoningner.prompts import prompt_hash
from reasoningner.results import NORMAL, ErrorCounts, Evaluation
from reasoningner.sources import is_source, parse_source
from reasoningner.spans import Example, Schema, Span, SpanError
from reasoningner.tracking import MANIFEST, fingerprint

logger = logging.getLogger(__name__)

PROBES = ("opaque", "shuffled")
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
GENERATIONS = "generations.jsonl"
OTHER_GENERATIONS = "generations.other.jsonl"  # earlier outputs this run did not ask for (module docstring)
_NO_ANSWER = frozenset({"no_answer", "unclosed_think"})


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set of a recipe; `labels` maps source labels to the names shown (None: all, as is)."""

    path: str
    reader: str = "auto"
    name: str | None = None
    labels: Mapping[str, str] | None = None
    descriptions: Mapping[str, str] = field(default_factory=dict)
    probes: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, entry: str | Mapping[str, Any], reader: str = "auto") -> EvalSet:
        """A recipe entry: a path, or a mapping with the keys of the module docstring (others are typos)."""
        config = {"path": entry} if isinstance(entry, str) else dict(entry)
        known = {f.name for f in fields(cls)}
        if "path" not in config or set(config) - known:
            raise ValueError(
                f"evaluation set {entry!r}: needs a path; unknown keys {sorted(set(config) - known)}, "
                f"known: {sorted(known)}"
            )
        if is_source(config["path"]) and len(parse_source(str(config["path"])).sets) > 1:
            # Read as one, they would be asked with every set's labels and scored as one.
            raise ValueError(
                f"evaluation set {config['path']}: name one set per entry (sets=...): each is asked "
                "with its own labels and scored in its own row"
            )
        labels = config.get("labels")
        if isinstance(labels, Sequence) and not isinstance(labels, str):
            labels = {label: label for label in labels}
        elif labels is not None and not isinstance(labels, Mapping):
            raise ValueError(f"evaluation set {config['path']}: labels must be a list or a mapping")
        probes = config.get("probes")
        if probes is not None:
            probes = tuple(probes)
            check_probes(probes)
        return cls(
            path=str(config["path"]),
            reader=config.get("reader", reader),
            name=config.get("name"),
            labels=labels,
            descriptions=dict(config.get("descriptions") or {}),
            probes=probes,
        )


def check_probes(probes: Sequence[str]) -> None:
    unknown = [probe for probe in probes if probe not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; choose from {list(PROBES)}")


@dataclass
class LoadedSet:
    """An evaluation set read and relabelled: what is asked and scored."""

    name: str
    schema: Schema
    examples: list[Example]
    info: dict[str, Any]


def load_eval_set(eval_set: EvalSet, data: DataArguments, trained: PromptContract | None = None) -> LoadedSet:
    """Read the file, keep and rename the chosen labels, attach the descriptions; the first `data.limit`
    sentences.

    A model is asked as it was trained (`trained`: its prompt contract, `PromptContract.asked`), as
    `NERModel.predict` asks it: a label without a description in the recipe or the file gets the one
    of its training prompts, and a set asked for exactly the labels the model was trained on, as the
    recipe lists them or as the file has them, is asked with them in the training order (a file states
    its labels in the order they first occur, which differs from file to file, a recipe in its own).
    """
    dataset = data.read(eval_set.path, eval_set.reader)
    originals = dataset.examples[: data.limit]
    name = eval_set.name or dataset.name
    source = dataset.schema
    mapping = dict(eval_set.labels or {label: label for label in source.labels})
    absent = [label for label in mapping if label not in source]
    if absent:
        close = {a: m[0] for a in absent if (m := difflib.get_close_matches(a, source.labels, n=1))}
        hint = "".join(f" ({a!r}: did you mean {m!r}?)" for a, m in close.items())
        logger.warning(
            "%s: labels %s never occur in %s; they are still asked for%s", name, absent, eval_set.path, hint
        )
    left_out = Counter(s.label for e in originals for s in e.spans if s.label not in mapping)
    if left_out and eval_set.labels:
        logger.warning(
            "%s: the file's labels %s are not in the set's labels: their gold spans are dropped",
            name, dict(left_out),
        )  # fmt: skip
    descriptions = {mapping[label]: text for label, text in source.descriptions.items() if label in mapping}
    descriptions.update(eval_set.descriptions)
    try:
        schema = Schema(tuple(dict.fromkeys(mapping.values())), descriptions)
        schema = trained.asked(schema) if trained is not None else schema
    except SpanError as error:
        raise ValueError(f"evaluation set {name}: {error}") from None
    # Before labels kept their spaces, training wrote "programming language" as programming_language.
    trained_labels = set(trained.labels) if trained is not None else set()
    written = {label: label.replace(" ", "_") for label in schema.labels if " " in label}
    if renames := {label: old for label, old in written.items() if old in trained_labels}:
        logger.warning(
            "%s: the model was trained on %s, labels of several words as reasoningner wrote them before it "
            "kept their spaces: to ask it as trained, rename them in the set's labels: %s",
            name, sorted(renames.values()), renames,
        )  # fmt: skip
    examples = [relabel(example, mapping, schema) for example in originals]
    info = {
        "path": eval_set.path,
        "reader": eval_set.reader,
        "sentences": len(examples),
        "entities": sum(len(example.spans) for example in examples),
        "dropped_entities": sum(left_out.values()),
        "skipped_records": len(dataset.skipped),
        # The reader's notes on the whole file (Dataset.notes, logged; a record may have several): tags
        # repaired, entities not located, a paper protocol's non-entity labels dropped.
        "reader_notes": len(dataset.notes),
        "labels": list(schema.labels),
        "label_map": mapping,
        "descriptions": dict(schema.descriptions),
    }
    return LoadedSet(name, schema, examples, info)


def relabel(example: Example, mapping: Mapping[str, str], schema: Schema) -> Example:
    """`example` under `schema`: labels renamed by `mapping`, spans of unmapped labels dropped (merged
    labels may make two spans one)."""
    spans = dict.fromkeys(Span(s.start, s.end, mapping[s.label]) for s in example.spans if s.label in mapping)
    return Example(example.text, tuple(spans), schema, example.id)


def probe_mapping(labels: Sequence[str], probe: str, seed: int = 0) -> dict[str, str]:
    """Real label -> probe name: letters in order (`opaque`), or a seeded derangement (`shuffled`).

    A single label cannot be deranged and keeps its name.
    """
    check_probes([probe])
    if probe == "opaque":
        return {label: _letters(index) for index, label in enumerate(labels)}
    names = list(labels)
    rng = random.Random(seed)
    while len(names) > 1:
        rng.shuffle(names)
        if all(name != label for name, label in zip(names, labels, strict=True)):
            break
    return dict(zip(labels, names, strict=True))


def _letters(index: int) -> str:
    """A, B, ..., Z, AA, AB, ...: spreadsheet column names, so that any label count gets a name."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def probe_schema(schema: Schema, mapping: Mapping[str, str]) -> Schema:
    """`schema` renamed; each description stays with its entity type (see the module docstring)."""
    return Schema(
        tuple(mapping[label] for label in schema.labels),
        {mapping[label]: text for label, text in schema.descriptions.items()},
    )


def error_counts(gold: Example, parsed: ParseResult, finish_reason: str | None = None) -> ErrorCounts:
    """The error analysis of one output against its gold example (definitions: module docstring);
    `finish_reason` is the backend's ("length": cut off)."""
    kinds = {problem.kind for problem in parsed.problems}
    gold_spans = set(gold.spans)
    explained: set[Span] = set()
    boundary = type_errors = spurious = 0
    for span in dict.fromkeys(parsed.spans):  # once each, as the metrics count it (`score` keeps repeats)
        if span in gold_spans:
            explained.add(span)
            continue
        same_offsets = [g for g in gold.spans if (g.start, g.end) == (span.start, span.end)]
        overlapping = [
            g for g in gold.spans if g.label == span.label and g.start < span.end and span.start < g.end
        ]
        if same_offsets:
            type_errors += 1
            explained.update(same_offsets)
        elif overlapping:
            boundary += 1
            explained.update(overlapping)
        else:
            spurious += 1
    return ErrorCounts(
        outputs=1,
        format_failures=int(bool(parsed.syntax_problems)),
        no_answer=int(bool(kinds & _NO_ANSWER)),
        cut_off=int(finish_reason == "length"),
        hallucinated=len(text_keys(parsed.ungrounded)),
        boundary_errors=boundary,
        type_errors=type_errors,
        missed=sum(span not in explained for span in gold.spans),
        spurious=spurious,
        problems=Counter(kinds),
    )


@dataclass(frozen=True)
class _Item:
    """One sentence to ask: which set and variant (normal or a probe) it belongs to."""

    dataset: str
    variant: str
    example: Example


def load_items(
    args: EvalArguments, trained: PromptContract | None = None
) -> tuple[list[_Item], dict[str, dict[str, Any]], dict[str, dict[str, dict[str, str]]]]:
    """Every sentence to ask, normal sets first then their probes, with set details and probe label maps
    (`trained`, the model's prompt contract: see `load_eval_set`)."""
    check_probes(args.probes)
    sets = [EvalSet.from_config(entry, args.reader) for entry in args.datasets]
    if not sets:
        raise ValueError("no evaluation sets: list them under `datasets` in the recipe")
    items: list[_Item] = []
    probed: list[_Item] = []
    datasets: dict[str, dict[str, Any]] = {}
    label_maps: dict[str, dict[str, dict[str, str]]] = {}
    for eval_set in sets:
        loaded = load_eval_set(eval_set, args, trained)
        if loaded.name in datasets:
            raise ValueError(f"two evaluation sets are named {loaded.name!r}; give them distinct `name`s")
        if not loaded.examples:
            raise ValueError(f"evaluation set {loaded.name!r} has no sentences")
        if not loaded.info["entities"]:
            logger.warning(
                "evaluation set %r has no gold entity: its F1 is 0 whatever the model answers, and it counts "
                "in Avg (a --limit too small, or labels the file does not use?)",
                loaded.name,
            )
        # Trained on (allow_overlap): not a zero-shot score.
        datasets[loaded.name] = loaded.info | {"in_domain": eval_set.path in args.in_domain_sources}
        items += [_Item(loaded.name, NORMAL, example) for example in loaded.examples]
        for probe in eval_set.probes if eval_set.probes is not None else args.probes:
            mapping = probe_mapping(loaded.schema.labels, probe, args.probe_seed)
            schema = probe_schema(loaded.schema, mapping)
            label_maps.setdefault(probe, {})[loaded.name] = mapping
            probed += [_Item(loaded.name, probe, relabel(e, mapping, schema)) for e in loaded.examples]
    return items + probed, datasets, label_maps


def evaluate(
    args: EvalArguments,
    prompt: PromptArguments,
    generation: GenerationArguments,
    generator: Generator | None = None,
) -> Evaluation:
    """Ask, parse, score and analyse every sentence; write the three output files; return the results.

    `generator` replaces the backend of `generation` (tests pass a scripted one); it is not closed here.
    """
    contract = generation.prompt_contract()
    generation = generation.within_budget(contract)  # as asked: in the outputs' keys and the results
    if generator is None:
        model = NERModel.from_contract(
            generation, contract, prompt, max_prompt_chars=args.max_prompt_chars, deferred=True
        )  # a relaunch with every output kept loads no model
    else:
        model = NERModel(
            generator, prompt, sampling=generation.sampling(), max_prompt_chars=args.max_prompt_chars
        )
    check_compat(args.compat, {model.prompt.output_format}, model.prompt.reasoning)  # before reading the sets
    items, datasets, label_maps = load_items(args, contract)
    output_dir = Path(args.output_dir)  # type: ignore[arg-type]
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / GENERATIONS
    identity = generation_identity(generation) if generator is None else None
    # What each sentence is asked with: a probe's prompt shows its format example relabelled too.
    asks = [
        (item.example.text, item.example.schema, label_maps.get(item.variant, {}).get(item.dataset))
        for item in items
    ]
    keys = [asked_key(model.conversation(*ask), identity) if identity else None for ask in asks]
    outcomes: list[tuple[ParseResult, ErrorCounts] | None] = [None] * len(items)
    outputs: list[str] = [""] * len(items)  # the raw answers, which a paper's counting reads its own way

    def settle(index: int, completion: Completion, result: ParseResult) -> ErrorCounts:
        """Record the answer to sentence `index`, kept from an earlier run or asked now alike."""
        counts = error_counts(items[index].example, result, completion.finish_reason)
        outcomes[index], outputs[index] = (result, counts), completion.text
        return counts

    tokens = failed = 0
    with model, exclusive(path):
        kept = []
        other_path = output_dir / OTHER_GENERATIONS
        earlier, others = earlier_outputs([path, other_path], keys)
        for index, record in earlier.items():
            item = items[index]
            completion = Completion(
                record["output"], record["completion_tokens"], record.get("finish_reason")
            )
            result = model.output_format.parse(completion.text, item.example.text, item.example.schema)
            counts = settle(index, completion, result)
            kept.append(_generation_record(item, completion, result, counts, keys[index]))
        # Outputs move both ways between the files: the other file first takes them all, so that a kill
        # between the rewrites leaves each output in one file or in both (then read once), never in none.
        lines = [json.dumps(record, ensure_ascii=False).encode(errors=JSONL_ERRORS) for record in kept]
        if others:
            write_lines(other_path, [*others, *lines])
        write_lines(path, lines)
        if others:
            logger.info("%d earlier outputs not asked by this run kept in %s", len(others), other_path)
            write_lines(other_path, others)
        else:
            other_path.unlink(missing_ok=True)
        todo = [index for index, outcome in enumerate(outcomes) if outcome is None]
        started = time.perf_counter()
        with (
            path.open("a", encoding="utf-8", errors=JSONL_ERRORS) as out,
            tqdm(total=len(items), initial=len(kept), desc="eval", unit="sent") as bar,
        ):
            for position, completion, result in model.run([asks[index] for index in todo]) if todo else ():
                index = todo[position]
                counts = settle(index, completion, result)
                tokens += completion.completion_tokens
                # Not kept for a rerun: a longer context, or the server back, may answer it.
                unanswered = any(p.kind in (TOO_LONG, FAILED) for p in result.problems)
                failed += any(p.kind == FAILED for p in result.problems)
                asked = None if unanswered else keys[index]
                record = _generation_record(items[index], completion, result, counts, asked)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                bar.update()
        seconds = time.perf_counter() - started
    if failed:
        logger.warning(
            "the backend gave up on %d of %d sentences (generation_failed, in %s): scored as format "
            "failures; a rerun asks them again",
            failed, len(todo), path,
        )  # fmt: skip
    compat = (args.compat, model.prompt.output_format, _dataset_labels(datasets, label_maps))
    reports, errors = _score(items, outcomes, label_maps, outputs, *compat)  # type: ignore[arg-type]
    if cut := sum(counts.cut_off for by_set in errors.values() for counts in by_set.values()):
        logger.warning(
            "%d of %d outputs ran into max_new_tokens=%d (cut off: most have no answer): raise it",
            cut, len(items), generation.max_new_tokens,
        )  # fmt: skip
    evaluation = Evaluation(
        primary_mode=args.primary_mode,  # type: ignore[arg-type]
        reports=reports,
        errors=errors,
        datasets=datasets,
        label_maps=label_maps,
        generation={
            "sentences": len(items),
            "reused": len(kept),  # outputs of an earlier run (the module docstring); the rest asked now
            "seconds": round(seconds, 3),
            "sentences_per_second": len(todo) / seconds if seconds else 0.0,
            "completion_tokens": tokens,
        },
        config={
            **asdict(args),
            **asdict(model.prompt),
            **asdict(generation),
            # A model asked otherwise than it learnt answers worse: the tables say so.
            "prompt_contradicts_contract": prompt.contradictions(contract),
        },
    )
    write_results(evaluation, output_dir)
    return evaluation


def write_results(evaluation: Evaluation, output_dir: Path | str) -> None:
    """results.json and results.md, each written whole (a kill leaves the earlier file or the new one)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_whole(folder / RESULTS_JSON, json.dumps(evaluation.to_dict(), indent=2) + "\n")
    write_whole(folder / RESULTS_MD, evaluation.to_markdown())


def _dataset_labels(
    datasets: Mapping[str, Mapping[str, Any]], label_maps: Mapping[str, Mapping[str, Mapping[str, str]]]
) -> dict[tuple[str, str], dict[str, str]]:
    """Each label asked, per (variant, set), by the set's own name for it, a recipe's rename and a probe's
    undone: ReasoningIE's counting drops gold misc by the data's label (`compat`)."""
    by_set = {}
    for name, info in datasets.items():
        source_of = {asked: source for source, asked in info["label_map"].items()}
        by_set[(NORMAL, name)] = source_of
        for probe, maps in label_maps.items():
            if name in maps:
                by_set[(probe, name)] = {
                    probed: source_of.get(shown, shown) for shown, probed in maps[name].items()
                }
    return by_set


def _score(
    items: Sequence[_Item],
    outcomes: Sequence[tuple[ParseResult, ErrorCounts]],
    label_maps: Mapping[str, Any],
    outputs: Sequence[str],
    compat: str,
    output_format: str,
    dataset_labels: Mapping[tuple[str, str], Mapping[str, str]],
) -> tuple[dict[str, dict[str, Report]], dict[str, dict[str, ErrorCounts]]]:
    """Reports per variant and mode (one counted as `compat` says), and error counts per variant and
    dataset, scored in input order so that they list datasets as the recipe does whatever order the
    backend finished in."""
    variants = [NORMAL, *label_maps]
    scorers = {(variant, mode): Scorer(mode) for variant in variants for mode in MATCH_MODES}  # type: ignore[arg-type]
    errors: dict[str, dict[str, ErrorCounts]] = {variant: {} for variant in variants}
    for item, (result, counts), output in zip(items, outcomes, outputs, strict=True):
        for mode in MATCH_MODES:
            scorer = scorers[(item.variant, mode)]
            source_labels = dataset_labels.get((item.variant, item.dataset))
            counted = compat_counts(compat, mode, output, item.example, output_format, None, source_labels)
            if counted is not None:
                scorer.add_counts(counted, item.dataset)
            else:
                scorer.add(item.example, result.spans, result.ungrounded, item.dataset)
        by_dataset = errors[item.variant]
        by_dataset[item.dataset] = by_dataset.get(item.dataset, ErrorCounts()) + counts
    reports = {
        variant: {mode: scorers[(variant, mode)].report() for mode in MATCH_MODES} for variant in variants
    }
    return reports, errors


# A model folder's files that record how its run went, not what the model answers: a finished training
# run relaunched (a requeued pipeline job) rewrites them, and its model was asked everything anew.
RUN_RECORDS = (*RUN_PROGRESS, MANIFEST, CARD, "trainer_state.json", "training_args.bin")


def generation_identity(generation: GenerationArguments) -> str:
    """What decides a model's outputs besides the prompt: the generation settings but the backend options
    that say only where it runs and how fast (`generation.RUN_OPTIONS`: a relaunch with a smaller batch
    after running out of memory, or on another server, keeps what was asked) and, for a local model, the
    contents of its folder's files but its run's records (`RUN_RECORDS`; weights sampled,
    `tracking.fingerprint`); for a Hub model loaded
    here, the commit of its snapshot (a repository updated since is another model)."""
    options = generation.backend_options or {}
    kept = {k: v for k, v in options.items() if k not in RUN_OPTIONS}  # type: ignore[union-attr]
    settings = asdict(generation) | {"backend_options": kept}
    identity: dict[str, Any] = {"generation": settings}
    model = generation.model_name_or_path or ""
    folder = Path(model)
    if model and folder.is_dir():
        identity["files"] = {
            p.name: fingerprint(p)
            for p in sorted(folder.iterdir())
            if p.is_file() and not any(fnmatch.fnmatch(p.name, record) for record in RUN_RECORDS)
        }
    elif model and generation.backend != "openai" and is_hub_id(model):
        identity["commit"] = hub_commit(model, generation.revision)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def asked_key(conversation: Sequence[Mapping[str, str]], identity: str) -> str:
    """The fingerprint an output is kept under: the exact prompt's and the `generation_identity`."""
    return f"{prompt_hash(conversation)}-{identity[:16]}"


def earlier_outputs(
    paths: Sequence[Path], keys: Sequence[str | None]
) -> tuple[dict[int, dict[str, Any]], list[bytes]]:
    """Item index -> the record of an earlier run (in any of `paths`) that asked it exactly so
    (`asked_key`), one record per item, so that a sentence asked twice (sampling) keeps two outputs only
    if there were two; and the lines of the other records (an output too long to ask has no key: none)."""
    by_key: dict[str, list[tuple[bytes, dict[str, Any]]]] = {}
    for path in paths:
        if not path.exists():
            continue
        for where, line in complete_lines(path)[0]:
            try:
                record = json.loads(line)
                key = record.get("asked")
            except (ValueError, AttributeError) as error:
                raise ValueError(
                    f"{where}: not an output record ({error}): move {path.name} away to ask every "
                    "sentence again"
                ) from None
            # A kill between the two files' rewrites leaves a record in both: read once.
            if key and all(line != seen for seen, _ in by_key.setdefault(key, [])):
                by_key[key].append((line, record))
    matched = {i: by_key[key].pop(0) for i, key in enumerate(keys) if key and by_key.get(key)}
    others = [line for records in by_key.values() for line, _ in records]
    return {i: record for i, (_, record) in matched.items()}, others


def _generation_record(
    item: _Item, completion: Completion, result: ParseResult, counts: ErrorCounts, asked: str | None
) -> dict[str, Any]:
    text = item.example.text
    return {
        "dataset": item.dataset,
        "variant": item.variant,
        "id": item.example.id,
        "text": text,
        "labels": list(item.example.schema.labels),
        "output": completion.text,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "predicted": [
            {"start": s.start, "end": s.end, "label": s.label, "text": s.text(text)} for s in result.spans
        ],
        "ungrounded": [{"text": mention, "label": label} for mention, label in result.ungrounded],
        "problems": [{"kind": p.kind, "detail": p.detail} for p in result.problems],
        "gold": item.example.entity_dicts(),
        "errors": counts.to_dict(),
        "asked": asked,
    }
