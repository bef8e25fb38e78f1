"""Scoring predictions made elsewhere: `reasoningner score GOLD PREDICTIONS [GOLD PREDICTIONS ...]`.

A model run by another tool (LLaMA-Factory, a vLLM script, LLMs4NER's own inference) leaves a
predictions file; this scores it against a gold file with the tables `evaluate` makes (per dataset,
per type, both matching modes, error analysis: `results.Evaluation`), so that a number made
elsewhere sits next to ours on the same rules.

Gold: any file a reader reads (`readers.read_dataset`). Predictions, one line per gold sentence in
gold order, in one of three layouts told by the first JSON object of its first lines:

- `llamafactory`: LLaMA-Factory's `generated_predictions.jsonl`, `{"prompt", "predict", "label"}`;
  `predict` is the raw model output; the gold sentence must occur in `prompt` (a check that the
  files are aligned); `label` is the gold answer as the prediction script saw it.
- `spans`: our JSONL of spans, `{"text", "entities": [{"start", "end", "label", ...}]}` (what
  `reasoningner predict` writes; our JSONL data files too), optionally `ungrounded` ([{"text",
  "label"}]), `problems` (parse problem kinds) and `id`; `text` must be the gold sentence. predict drops
  an entity of a label outside those asked (`unknown_label` in its problems) and takes one written in
  another case as the label asked, where evaluation counts both as false positives: score raw outputs
  (`outputs`) for evaluation's counts.
- `outputs`: raw model outputs, one per line: a JSON string, an object with an `output` string
  (our evaluation's generations.jsonl, whose `id`s pair its lines with the gold sentences whatever
  their order, its probes' lines left out), or the line itself when it is no JSON string or object
  of those (a one-line answer in any format, JSON answers included).

Raw outputs are parsed by the answer format's parser as evaluation parses them (`--output-format`, or
`auto`: the shape most of the labels tell, else most of the outputs, `sniff_format`). `offset_json`
offsets are scored as stated; `--reground-offsets` is the lenient reading (`formats.OffsetJsonFormat`).

`--compat llms4ner` and `--compat reasoningie` count as those papers' scripts count (`compat`): the
exact-span scores as LLMs4NER's, the text-mode scores as ReasoningIE's (ReasoningNER's Table 1). Text-mode
scores (under llms4ner), exact ones (under reasoningie) and the error analysis stay ours.

Skipping: `on_error="skip"` (`--skip-bad`) skips malformed gold records (the reader's rule) and
malformed prediction lines, counts and lists them; the predictions of skipped gold records are
skipped too (the n-th line of predictions, malformed ones included, goes with the n-th gold record).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reasoningner.compat import Compat, check_compat, compat_counts
from reasoningner.evaluate import error_counts
from reasoningner.formats import FORMATS, ParseResult, Problem, get_format, json_format_of, split_answer
from reasoningner.metrics import MATCH_MODES, Scorer
from reasoningner.readers import DataError, Dataset, OnError, PathLike, read_dataset, read_file_text
from reasoningner.results import NORMAL, ErrorCounts, Evaluation
from reasoningner.spans import Example, Span, check_span, spans_from_dicts

logger = logging.getLogger(__name__)

LAYOUTS = ("llamafactory", "spans", "outputs")


@dataclass
class PredictionLine:
    """One line of a predictions file: a raw output, or spans already grounded. `index` is its record's
    position in the file (malformed lines and, in the outputs layout, blank ones count): the gold
    record it is paired with."""

    line: int
    index: int
    output: str | None = None
    prompt: str | None = None
    label: str | None = None
    text: str | None = None
    spans: list[Span] = field(default_factory=list)
    ungrounded: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    id: str | None = None
    variant: str | None = None  # our generations.jsonl: "normal", or a probe's relabelled sentence


LAYOUT_LINES = 20  # lines of a predictions file whose first JSON object tells its layout


def predictions_layout(first: Any) -> str:
    """The layout of a predictions file from its first JSON object (module docstring)."""
    if isinstance(first, dict) and isinstance(first.get("predict"), str):
        return "llamafactory"
    if isinstance(first, dict) and isinstance(first.get("output"), str):
        return "outputs"
    if (
        isinstance(first, dict)
        and isinstance(first.get("text"), str)
        and isinstance(first.get("entities"), list)
    ):
        return "spans"
    return "outputs"


def read_predictions(
    path: PathLike, on_error: OnError = "raise"
) -> tuple[str, list[PredictionLine], list[str]]:
    """(layout, lines, skip messages) of a predictions file; a bad line is a `DataError` naming it.

    In the outputs layout a blank line is an empty output, trailing ones too (the last sentences may
    have had none: `_pairs` drops those past the gold sentences); JSON Lines layouts have no blank
    record."""
    lines = list(enumerate(read_file_text(path).split("\n"), 1))
    if lines and not lines[-1][1]:
        lines.pop()  # the file's last newline
    if not any(line.strip() for _, line in lines):
        raise DataError(path, None, "no predictions")
    # The first JSON object among the first lines: one malformed line (cut short, hand-edited) must not
    # turn a LLaMA-Factory file into raw outputs whose lines are whole JSON records.
    objects = (value for _, line in lines[:LAYOUT_LINES] if isinstance(value := _json_or_none(line), dict))
    layout = predictions_layout(next(objects, None))
    if layout != "outputs":
        lines = [(number, line) for number, line in lines if line.strip()]
    predictions, skipped = [], []
    for index, (number, line) in enumerate(lines):
        try:
            predictions.append(_prediction(layout, number, index, line))
        except (ValueError, TypeError, KeyError) as error:
            message = DataError(path, number, f"{layout} prediction: {error}")
            if on_error == "raise":
                raise message from None
            skipped.append(str(message))
    return layout, predictions, skipped


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _prediction(layout: str, number: int, index: int, line: str) -> PredictionLine:
    value = _json_or_none(line)
    if layout == "llamafactory":
        if not isinstance(value, dict) or not isinstance(value.get("predict"), str):
            raise ValueError("expected an object with a 'predict' string")
        label = value.get("label")
        return PredictionLine(
            number,
            index,
            output=value["predict"],
            prompt=value.get("prompt") if isinstance(value.get("prompt"), str) else None,
            label=label if isinstance(label, str) else None,
        )
    if layout == "spans":
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            raise ValueError("expected an object with a 'text' string and an 'entities' list")
        spans = list(spans_from_dicts(value["entities"]))
        for span, entity in zip(spans, value["entities"], strict=True):
            check_span(span, value["text"], expected_text=entity.get("text"))
        ungrounded = [(str(e["text"]), str(e["label"])) for e in value.get("ungrounded", [])]
        problems = [str(kind) for kind in value.get("problems", [])]
        identifier = value.get("id") if isinstance(value.get("id"), str) else None
        return PredictionLine(
            number,
            index,
            text=value["text"],
            spans=spans,
            ungrounded=ungrounded,
            problems=problems,
            id=identifier,
        )
    if isinstance(value, str):
        return PredictionLine(number, index, output=value)
    if isinstance(value, dict) and isinstance(value.get("output"), str):
        fields = {key: value[key] for key in ("text", "id", "variant") if isinstance(value.get(key), str)}
        return PredictionLine(number, index, output=value["output"], **fields)
    return PredictionLine(number, index, output=line)


def sniff_format(samples: Iterable[str]) -> str | None:
    """The answer format most of the first `SNIFFED` telling samples (gold answers or outputs) are written
    in, by their shape; None when none tells. One sample is no guide: a first output cut off inside its
    JSON, or an empty list, would have set the format of a whole file."""
    votes = Counter(itertools.islice(filter(None, map(_telling_format, samples)), SNIFFED))
    return votes.most_common(1)[0][0] if votes else None


SNIFFED = 64


def _telling_format(sample: str) -> str | None:
    """The format `sample` can only be written in (the answer's: a `<think>` block or code fence around
    it is no XML or bracket), or None: empty, an empty JSON list or object, JSON cut short, plain text."""
    answer = split_answer(sample)[1].strip()
    value = _json_or_none(answer)
    if isinstance(value, (dict, list)):  # empty, or a list without one entry: its shape tells nothing
        entries = value if isinstance(value, dict) else [entry for entry in value if isinstance(entry, dict)]
        return json_format_of(value) if entries else None
    for name in ("xml", "bracketed"):
        if FORMATS[name].markup(answer).spans:  # type: ignore[attr-defined]
            return name
    return None


@dataclass
class ScoredSet:
    """One gold file and its predictions, aligned and parsed."""

    name: str
    gold: list[Example]
    predictions: list[PredictionLine]
    parsed: list[ParseResult]
    info: dict[str, Any]


def align(
    gold_path: PathLike,
    predictions_path: PathLike,
    output_format: str = "auto",
    reader: str = "auto",
    on_error: OnError = "raise",
    reground_offsets: bool = False,
) -> ScoredSet:
    """Read both files, pair each prediction with its gold sentence and parse it (module docstring)."""
    dataset = read_dataset(gold_path, reader, on_error=on_error)
    layout, predictions, skipped = read_predictions(predictions_path, on_error)
    pairs = _pairs(dataset, predictions, predictions_path, on_error, skipped)
    if output_format == "auto":  # gold answers (LLaMA-Factory's labels) tell best, else the outputs
        labels = [p.label for _, p in pairs if p.label]
        outputs = [p.output for _, p in pairs if p.output]
        sniffed = sniff_format(labels) or sniff_format(outputs)
        if sniffed is None and (labels or outputs):  # spans are parsed already: they need no format
            logger.warning(
                "%s: no answer tells its format (all empty, cut short or without entities): read as "
                "grouped_json; give --output-format",
                predictions_path,
            )
        output_format = sniffed or "grouped_json"
    fmt = get_format(output_format, reground_offsets=reground_offsets)
    gold, kept, parsed = [], [], []
    for example, prediction in pairs:
        try:
            parsed.append(_parse(prediction, example, fmt, predictions_path))
        except DataError as error:
            if on_error == "raise":
                raise
            skipped.append(str(error))
            continue
        gold.append(example)
        kept.append(prediction)
    if not gold:
        raise DataError(predictions_path, None, f"no prediction could be scored ({len(skipped)} skipped)")
    info = {
        "path": str(gold_path),
        "predictions": str(predictions_path),
        "layout": layout,
        "format": output_format,
        "sentences": len(gold),
        "entities": sum(len(example.spans) for example in gold),
        "labels": list(dataset.schema.labels),
        "skipped_gold": len(dataset.skipped),
        "skipped_predictions": len(skipped),
        "skipped": dataset.skipped + skipped,
    }
    return ScoredSet(dataset.name, gold, kept, parsed, info)


def _pairs(
    dataset: Dataset,
    predictions: list[PredictionLine],
    path: PathLike,
    on_error: OnError,
    skipped: list[str],
) -> list[tuple[Example, PredictionLine]]:
    """Each prediction with its gold example. Lines that all name their sentence (`id`: our
    generations.jsonl, in completion order with probes and other datasets; spans with ids) are paired
    by it; other lines by position: the n-th line's record index is the gold record's, and the
    predictions of skipped gold records are skipped with them."""
    if predictions and all(prediction.id for prediction in predictions):
        return _pairs_by_id(dataset, predictions, path, on_error, skipped)
    if not dataset.skipped:
        by_index = dict(enumerate(dataset.examples))
    elif dataset.indices:
        by_index = dict(zip(dataset.indices, dataset.examples, strict=True))
    else:
        raise DataError(
            path, None, "gold records were skipped from a gold source of several files: no line can be paired"
        )
    # Records on both sides, the skipped ones included (the predictions' malformed lines are in `skipped`).
    records = len(dataset.examples) + len(dataset.skipped)
    while len(predictions) + len(skipped) > records and predictions and predictions[-1].output == "":
        predictions = predictions[:-1]  # blank lines past the last sentence: no outputs
    lines = len(predictions) + len(skipped)
    if lines != records:
        _mismatch(
            f"{lines} predictions for {records} gold sentences",
            "the lines past the shorter file are not scored",
            path, on_error, skipped,
        )  # fmt: skip
    pairs = []
    for prediction in predictions:
        example = by_index.get(prediction.index)
        if example is not None:
            pairs.append((example, prediction))
        elif dataset.skipped:
            skipped.append(str(DataError(path, prediction.line, "its gold record was skipped")))
    return pairs


def _pairs_by_id(
    dataset: Dataset,
    predictions: list[PredictionLine],
    path: PathLike,
    on_error: OnError,
    skipped: list[str],
) -> list[tuple[Example, PredictionLine]]:
    """Lines paired with the gold sentence their `id` names, the first whose text is that sentence's
    (another set's sentence may have the same id: `ai-0` of two splits); a probe's lines, other
    datasets' and a sentence's second line are not scored, and a gold sentence without a line is
    missing. A sentence whose lines all carry another text keeps the first, which `_parse` refuses."""
    by_id = {example.id: example for example in dataset.examples}
    named: dict[str, list[PredictionLine]] = {}
    others = 0
    for prediction in predictions:
        if prediction.variant in (None, NORMAL) and prediction.id in by_id:
            named.setdefault(prediction.id, []).append(prediction)
        else:
            others += 1
    pairs = {}
    for identifier, lines in named.items():
        example = by_id[identifier]
        pairs[identifier] = (example, next((p for p in lines if p.text in (None, example.text)), lines[0]))
        others += len(lines) - 1
    if not pairs:
        raise DataError(
            path,
            None,
            f"no line names a sentence of the gold file (ids such as {dataset.examples[0].id!r}; the "
            f"first line's is {predictions[0].id!r})",
        )
    if others:
        skipped.append(f"{path}: {others} lines of other sentences (probes, other datasets) are not scored")
    missing = len(dataset.examples) - len(pairs)
    if missing:
        _mismatch(
            f"{missing} of {len(dataset.examples)} gold sentences have no line", "they are not scored",
            path, on_error, skipped,
        )  # fmt: skip
    return list(pairs.values())


def _mismatch(message: str, consequence: str, path: PathLike, on_error: OnError, skipped: list[str]) -> None:
    """Gold and predictions that do not pair up: an error naming the predictions file, or with
    `on_error="skip"` a skip message saying what is not scored."""
    if on_error == "raise":
        raise DataError(path, None, message)
    skipped.append(f"{path}: {message}; {consequence}")


def _parse(prediction: PredictionLine, gold: Example, fmt: Any, path: PathLike) -> ParseResult:
    """The prediction's spans of the gold sentence, as evaluation reads an output."""
    if prediction.text is not None and prediction.text != gold.text:
        raise DataError(path, prediction.line, f"its text is not the gold sentence {gold.text[:60]!r}")
    if prediction.output is None:
        problems = [Problem(kind, "stated by the predictions file") for kind in prediction.problems]
        return ParseResult(prediction.spans, prediction.ungrounded, problems)
    if prediction.prompt is not None and gold.text not in prediction.prompt:
        raise DataError(
            path, prediction.line, f"the prompt does not hold the gold sentence {gold.text[:60]!r}"
        )
    return fmt.parse(prediction.output, gold.text, gold.schema)


def score(sets: list[ScoredSet], compat: Compat = "none", primary_mode: str = "text") -> Evaluation:
    """The evaluation tables of aligned sets (`results.Evaluation`, as `evaluate` makes them)."""
    check_compat(compat, {scored.info["format"] for scored in sets})
    if compat != "none" and (parsed := [scored.name for scored in sets if scored.info["layout"] == "spans"]):
        raise ValueError(
            f"--compat {compat} reads each raw answer as the paper's scripts do; {parsed} hold spans parsed "
            "already (predict's output): score the raw outputs (evaluation's generations.jsonl) instead"
        )
    names = [scored.name for scored in sets]
    if len(set(names)) < len(names):
        raise ValueError(f"two gold files are named alike ({names}); rename one")
    scorers = {mode: Scorer(mode) for mode in MATCH_MODES}  # type: ignore[arg-type]
    errors: dict[str, ErrorCounts] = {}
    for scored in sets:
        for example, prediction, parsed in zip(scored.gold, scored.predictions, scored.parsed, strict=True):
            for mode, scorer in scorers.items():
                counted = (
                    None
                    if prediction.output is None  # spans already grounded: no answer to read their way
                    else compat_counts(
                        compat, mode, prediction.output, example, scored.info["format"], prediction.label
                    )
                )
                if counted is not None:
                    scorer.add_counts(counted, scored.name)
                else:
                    scorer.add(example, parsed.spans, parsed.ungrounded, scored.name)
            errors[scored.name] = errors.get(scored.name, ErrorCounts()) + error_counts(example, parsed)
    sentences = sum(len(scored.gold) for scored in sets)
    return Evaluation(
        primary_mode=primary_mode,  # type: ignore[arg-type]
        reports={NORMAL: {mode: scorer.report() for mode, scorer in scorers.items()}},
        errors={NORMAL: errors},
        datasets={scored.name: scored.info for scored in sets},
        label_maps={},
        generation={
            "sentences": sentences,
            "seconds": 0.0,
            "sentences_per_second": 0.0,
            "completion_tokens": 0,
        },
        config={
            "model_name_or_path": ", ".join(scored.info["predictions"] for scored in sets),
            "backend": "predictions file",
            "output_format": ", ".join(dict.fromkeys(scored.info["format"] for scored in sets)),
            "compat": compat,
        },
    )


def score_files(
    pairs: list[tuple[PathLike, PathLike]],
    output_format: str = "auto",
    compat: Compat = "none",
    on_error: OnError = "raise",
    reground_offsets: bool = False,
    primary_mode: str = "text",
    reader: str = "auto",
) -> Evaluation:
    """`score` of (gold, predictions) file pairs; under `--compat reasoningie` answers are the paper's
    grouped JSON unless told otherwise (a guess from unparseable outputs would refuse them)."""
    if compat == "reasoningie" and output_format == "auto":
        output_format = "grouped_json"
    sets = [
        align(gold, predictions, output_format, reader, on_error, reground_offsets)
        for gold, predictions in pairs
    ]
    return score(sets, compat, primary_mode)
