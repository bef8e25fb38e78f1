"""Verifiable NER rewards for GRPO, gathered in one registry so a recipe names them by string.

Each reward is a plain function `f(completions, **columns) -> list[float]` as TRL's GRPOTrainer
calls it; TRL logs each one separately. The columns every RL example carries (`training_data.rl_record`):
`text` (the sentence), `entities` (gold spans as dicts), `labels` (the schema's label list) and
`output_format` (a name from `formats.FORMATS`).

A completion is parsed once: all components read the same `Analysis`, so the five-part reward
costs about one parse. TRL calls the functions one after the other on the same batch, so the
analyses of the last batch are kept (`_BatchAnalyses`) and found again by the identity of its column
lists; single completions are also memoised by content (repeated samples of a prompt).

Components, each total (never raises), deterministic and in [0, 1] (but `f1_micro`, below):

- `format`: half for a non-empty `<think>` rationale closed before the answer, half for an answer
  that parses cleanly; each distinct syntax problem of the answer costs a quarter of its half.
- `f1`: entity F1 against gold (text-level pairs, ReasoningNER style, or exact spans); both empty
  is 1.0, exactly one empty is 0.0.
- `f1_micro`: what the answer adds to the micro F1 of its batch, to first order, per gold entity
  (`micro_f1_credit`): evaluation scores micro F1, where an entity is worth stating when it is right
  more often than F1 / 2, while per-sentence F1 prices every entity by its own sentence (one
  invented entity in a sentence without any costs the whole reward). It depends on the batch (its
  TP / (TP + FP + FN)): the completions one process scores together (per-device batch x
  `steps_per_generation`). It can be negative, and no answer earns the batch's lowest credit (at
  most 0). Use it in place of `f1`, not beside it.
- `consistency`: `rationale.consistency` between the rationale and the answer (shared with stage 1).
- `schema`: the share of predicted entities whose label is in the schema (ReasoningIE's schema reward
  is binary instead: 1 for a readable answer whose labels are all in the schema, also an empty one).
- `grounding`: the share of predicted entities whose text occurs in the sentence.
  An answer without entities is vacuously compliant and grounded: both pay it 1.0 only when the
  gold has no entity either. Otherwise a policy that cannot yet find entities learns that saying
  nothing earns these two points for free (seen in the CPU demo: GRPO drifted to empty answers).

Strict by default: F1, consistency, schema and grounding are paid only on an answer that parses
with no syntax problem (any problem outside `formats.CONTENT_PROBLEMS`). A Python literal, a code
fence, text around the JSON, no `entities` wrapper, a string for a list, invalid or truncated JSON,
unbalanced tags, an altered sentence, offsets that do not hold their text: the answer counts as no
answer, and only format pays, by its graduated syntax score (at most 0.875 of 14 with the default
weights). The lenient salvage that evaluation uses (`formats`' repairs) would pay a model for answers
no program downstream can read (13.875 of 14 for a fenced right answer), so a policy would learn to
keep the malformations the parser forgives. (ReasoningIE's reward strips `<think>` blocks and reads a
fenced ```json answer: it pays a fenced right answer in full.) `reward_parse:
lenient` (`RLScriptArguments`, passed as `get_rewards(names, parse="lenient")`) scores the salvaged
entities, as before.

Label case: labels are compared as written, so "PER" is outside a schema of "per" (schema and F1 count
it wrong), as exact evaluation does. `fold_label_case=True` (`get_rewards`) maps a predicted label
equal to a schema label up to case onto it before scoring, the way ReasoningIE lower-cases labels; it
is off by default because evaluation does not fold, and a reward that forgives what the score
punishes teaches the wrong label.

Guards against the obvious hacks: a completion longer than `MAX_COMPLETION_CHARS` gets 0 on every
component; an answer copied into the rationale asserts nothing (consistency reads only the rationale's
`"X" is a LABEL` assertions, as stage 1's filter does), so it cannot fake consistency; an answer that
cannot be read (empty, or junk the parser recovers no entity from)
counts as no answer: 0 on every component but the rationale half of format (an empty output is not
"compliant", and junk on a sentence without entities must not pass for "nothing found").
Repeating an entity changes nothing: spans are deduplicated by the parser, ungrounded mentions here.

`reasoningie_f1` and `reasoningie_schema` (at the end) are the paper's own two rewards, ported for the
recipes that reproduce it.

Default weights follow the paper (F1 10 : schema 1); format, consistency and grounding get 1 each:
enough to keep the output well-formed and honest, too little to outweigh getting entities right.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from reasoningner.formats import (
    CONTENT_PROBLEMS,
    WRAPPERS,
    ParseResult,
    fold_labels,
    get_format,
    message_text,
    split_answer,
)
from reasoningner.metrics import Counts, MatchMode, agreement, key_counts, match_totals, sample_f1, text_keys
from reasoningner.rationale import asserted_keys
from reasoningner.spans import Example, Schema, Span, spans_from_dicts

RewardFunction = Callable[..., list[float]]
PARSE_MODES = ("strict", "lenient")

# Beyond what a completion of the recipes' 4,096 tokens holds (a finished long rationale must not score 0);
# a guard against runaway text that would cost a long parse.
MAX_COMPLETION_CHARS = 65_536

# The format reward counts syntax problems only (`ParseResult.syntax_problems`): `formats.CONTENT_PROBLEMS`
# (unknown labels, ungrounded entities) are judged by the schema and grounding rewards. An answer that
# yields no entity with a syntax problem beyond `formats.WRAPPERS` is one nothing could be read from.

DEFAULT_WEIGHTS: dict[str, float] = {
    "format": 1.0,
    "f1": 10.0,
    "consistency": 1.0,
    "schema": 1.0,
    "grounding": 1.0,
}


class Analysis(NamedTuple):
    """One completion read once, with every score that does not depend on gold already computed.

    The defaults describe a completion with nothing to score (an oversized one); an unreadable
    answer sets only what the rationale earns.
    """

    rationale: str | None = None
    # The answer's parse: None when nothing could be read from it (no answer).
    parse: ParseResult | None = None
    # The answer's text-level keys (`metrics.text_keys`), what the F1 reward compares with gold.
    predicted_keys: frozenset[tuple[str, str]] = frozenset()
    format_score: float = 0.0
    # Whether consistency may be paid: a closed, non-empty rationale that does not copy the answer.
    reasoned: bool = False
    # Shares of predicted entities with a schema label / found in the sentence; None without entities.
    in_schema: float | None = None
    grounded: float | None = None


@lru_cache(maxsize=4096)
def _schema(labels: tuple[str, ...]) -> Schema:
    return Schema(labels)


@lru_cache(maxsize=4096)  # a batch's completions, for each reward of the step; sampled ones rarely recur
def analyse(
    completion: str,
    text: str,
    labels: tuple[str, ...],
    output_format: str,
    parse_mode: str = "strict",
    fold_label_case: bool = False,
) -> Analysis:
    """Parse a completion once and score what every component needs but gold (cached by content).

    The whole completion goes to the parser, so problems around the answer (code fences, extra
    text) count against the answer's format score, not against the rationale. `parse_mode` and
    `fold_label_case`: the module docstring.
    """
    if len(completion) > MAX_COMPLETION_CHARS:
        return Analysis()
    rationale, answer, problems = split_answer(completion)
    closed = not problems or all(p.kind != "unclosed_think" for p in problems)
    has_rationale = closed and bool(rationale)  # `split_answer` strips it
    parse = (
        get_format(output_format).parse_answer(answer, text, _schema(labels), problems) if answer else None
    )
    pairs: list[tuple[str, str]] = []
    kinds: set[str] = set()
    if parse is not None and fold_label_case:
        parse = fold_labels(parse, labels)
    if parse is not None:
        pairs = [(text[start:end], label) for start, end, label in parse.spans]
        if parse.ungrounded:
            pairs += dict.fromkeys(parse.ungrounded)
        if parse.problems:
            kinds = {p.kind for p in parse.problems}
    syntax = kinds - CONTENT_PROBLEMS  # what the format reward charges for (`ParseResult.syntax_problems`)
    if parse is None or (not pairs and syntax - WRAPPERS):
        # Nothing could be read: no answer.
        return Analysis(rationale=rationale, format_score=0.5 * has_rationale)
    # Each distinct syntax problem costs a quarter of the answer's half.
    format_score = 0.5 * has_rationale + 0.5 * max(0.0, 1.0 - 0.25 * len(syntax))
    if parse_mode == "strict" and syntax:
        # Readable only by salvage: no answer a program could use, but format still grades the syntax.
        return Analysis(rationale=rationale, format_score=format_score)
    in_schema = grounded = None
    if pairs:  # the parser reports every label outside the schema, and grounds every text it can
        in_schema = 1.0
        if "unknown_label" in kinds:
            in_schema = sum(label in labels for _, label in pairs) / len(pairs)
        grounded = len(parse.spans) / len(pairs)
    return Analysis(
        rationale=rationale,
        parse=parse,
        predicted_keys=frozenset(text_keys(pairs)),
        format_score=format_score,
        reasoned=has_rationale,
        in_schema=in_schema,
        grounded=grounded,
    )


def _completion_text(completion: Any) -> str:
    """TRL passes strings for standard datasets and message lists for conversational ones (whose
    rationale it splits off when the tokenizer can parse responses)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return message_text(completion[-1], cut_when_only_reasoning=True)
    return ""


class _BatchAnalyses:
    """The analyses of the last batch, so that the components after the first reuse them.

    TRL calls each reward function in turn on the same batch, passing the same column lists, so the
    identity of those lists identifies the batch at no cost (comparing their contents would repeat
    the per-completion work of `analyse`'s own cache). The lists are held, not just their ids, so
    that no new list can be given the id of one of them while it is remembered.
    """

    __slots__ = ("analyses", "columns", "options")

    def __init__(self) -> None:
        self.columns: tuple[Sequence[Any], ...] = ()
        self.options: tuple[str, bool] = ("strict", False)
        self.analyses: list[Analysis] = []

    def for_batch(
        self,
        completions: Sequence[Any],
        text: Sequence[str],
        labels: Sequence[Sequence[str]],
        output_format: Sequence[str],
        reward_parse: str = "strict",
        fold_label_case: bool = False,
    ) -> list[Analysis]:
        """The analysis of each completion of the batch: the held ones if its columns are the held lists
        and the options the held ones."""
        columns = (completions, text, labels, output_format)
        options = (reward_parse, fold_label_case)
        if (
            self.columns
            and options == self.options
            and all(held is given for held, given in zip(self.columns, columns, strict=True))
        ):
            return self.analyses
        if reward_parse not in PARSE_MODES:
            raise ValueError(f"reward_parse must be one of {PARSE_MODES}, not {reward_parse!r}")
        analyses = [
            analyse(_completion_text(c), t, tuple(ls), f, reward_parse, fold_label_case)
            for c, t, ls, f in zip(completions, text, labels, output_format, strict=True)
        ]  # held only once complete: a batch whose analysis failed is not taken for the one before
        self.columns, self.options, self.analyses = columns, options, analyses
        return analyses


_last_batch = _BatchAnalyses()


REWARDS: dict[str, RewardFunction] = {}


def reward(name: str) -> Callable[[RewardFunction], RewardFunction]:
    """Register a reward under `name`; TRL logs it as `rewards/<function name>`."""

    def register(function: RewardFunction) -> RewardFunction:
        REWARDS[name] = function
        return function

    return register


def get_rewards(
    names: Sequence[str], parse: str = "strict", fold_label_case: bool = False
) -> list[RewardFunction]:
    """The registered rewards called `names`; other options than the defaults (strict parsing, labels
    compared as written: module docstring) are bound into each function, under its own name."""
    unknown = [name for name in names if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known: {sorted(REWARDS)}")
    if parse not in PARSE_MODES:
        raise ValueError(f"reward parse must be one of {PARSE_MODES}, not {parse!r}")
    if (parse, fold_label_case) == ("strict", False):
        return [REWARDS[name] for name in names]
    return [_bound(REWARDS[name], reward_parse=parse, fold_label_case=fold_label_case) for name in names]


def _bound(function: RewardFunction, **options: Any) -> RewardFunction:
    """`function` with `options` given on every call; TRL logs it by the same name."""

    def bound(completions: Sequence[Any], **columns: Any) -> list[float]:
        return function(completions, **columns, **options)

    bound.__name__ = function.__name__
    bound.__doc__ = function.__doc__
    return bound


@reward("format")
def format_reward(
    completions, text, labels, output_format, reward_parse="strict", fold_label_case=False, **_
):
    """Half for a closed, non-empty rationale, half for a cleanly parsing answer."""
    analyses = _last_batch.for_batch(completions, text, labels, output_format, reward_parse, fold_label_case)
    return [a.format_score for a in analyses]


@lru_cache(maxsize=16_384)
def _gold(text: str, spans: tuple[Span, ...], labels: tuple[str, ...]) -> Example:
    """The gold of a row as an `Example`, built (and validated) once for all its generations."""
    return Example(text, spans, _schema(labels))


def entity_counts(
    analysis: Analysis, text: str, entities: Sequence[dict], labels: Sequence[str], mode: MatchMode
) -> Counts:
    """True positives, false positives and false negatives of one prediction against the gold of its row;
    no answer finds nothing.

    Text matching compares the keys the analysis holds with the gold's, made afresh (cheaper than
    a cache keyed by the spans: the mentions' normal forms are cached); exact matching builds the
    gold once for all the generations of a prompt and goes through `metrics.match_totals`.
    """
    if mode == "text":
        gold = text_keys((text[e["start"] : e["end"]], e["label"]) for e in entities)
        return key_counts(gold, analysis.predicted_keys)
    gold_example = _gold(text, spans_from_dicts(entities), tuple(labels))
    if analysis.parse is None:
        return Counts(0, 0, len(gold_example.spans))
    return match_totals(gold_example, analysis.parse.spans, analysis.parse.ungrounded, mode)


def micro_f1_credit(counts: Counts, found_share: float) -> float:
    """What one readable answer adds to the micro F1 of its batch, to first order, per gold entity.

    Micro F1 = 2TP / (2TP + FP + FN) over the batch. An answer's tp + fn is its prompt's gold count,
    so the batch's micro F1 moves with the answer's tp - J * fp, J = TP / (TP + FP + FN) the batch's
    `found_share`: an entity is worth stating when it is right more often than F1 / 2 (so, in a batch
    that finds nothing, invented entities cost nothing). Divided by the gold count, so that a complete
    answer is 1.0 as with `f1`; with no gold entity, the empty answer is 1.0 and each invented entity
    costs J. Can be negative (invented entities). The division weighs a prompt's answers alike, which
    group scaling (`scale_rewards: group`) does anyway; with `batch` or `none` it gives each prompt the
    same range rather than micro F1's weight by gold count.
    """
    gold = counts.tp + counts.fn
    credit = counts.tp - found_share * counts.fp
    return credit / gold if gold else 1.0 + credit


def make_f1_reward(name: str, mode: MatchMode, micro: bool) -> RewardFunction:
    """The F1 reward `name` (TRL logs it as `rewards/<name>_reward`): per-sentence F1 or the micro credit."""

    def f1_reward(
        completions, text, entities, labels, output_format, reward_parse="strict", fold_label_case=False, **_
    ) -> list[float]:
        analyses = _last_batch.for_batch(
            completions, text, labels, output_format, reward_parse, fold_label_case
        )
        counts = [
            entity_counts(a, t, es, ls, mode)
            for a, t, es, ls in zip(analyses, text, entities, labels, strict=True)
        ]
        if not micro:
            # Both empty is 1.0 (`metrics.sample_f1`); no answer is 0.0.
            return [
                sample_f1(c) if a.parse is not None else 0.0 for c, a in zip(counts, analyses, strict=True)
            ]
        batch = sum(counts, Counts())
        found_share = batch.tp / (batch.tp + batch.fp + batch.fn) if batch.tp else 0.0
        credits = [
            micro_f1_credit(c, found_share) if a.parse is not None else None
            for c, a in zip(counts, analyses, strict=True)
        ]
        # No answer earns what the worst readable answer of the batch earns, at most 0: the other
        # components then pay any readable answer more than one no program can read.
        floor = min([0.0, *(c for c in credits if c is not None)])
        return [floor if c is None else c for c in credits]

    f1_reward.__name__ = f"{name}_reward"
    return f1_reward


# The F1 rewards: each name with its matching mode and whether it pays the micro credit.
F1_REWARDS: dict[str, tuple[MatchMode, bool]] = {
    "f1": ("text", False),
    "f1_exact": ("exact", False),
    "f1_micro": ("text", True),
    "f1_micro_exact": ("exact", True),
}
for _name, (_mode, _micro) in F1_REWARDS.items():
    reward(_name)(make_f1_reward(_name, _mode, _micro))


# The rewards that pay a rationale (format's first half, consistency all of it).
RATIONALE_REWARDS = ("format", "consistency")


def answer_only_warning(names: Sequence[str], reasoning: bool) -> str | None:
    """What GRPO of a model trained to answer without a rationale (`reasoning: false`) would be paid
    for, with rewards that pay one: to start writing rationales it never learnt. None otherwise."""
    paying = [name for name in names if name in RATIONALE_REWARDS]
    if reasoning or not paying:
        return None
    return (
        f"reasoning is false, but {paying} pay a rationale (format its first half, consistency all of "
        "it): GRPO pays this answer-only model to start writing one, and its reward stays below the "
        "maximum by their share; drop consistency to keep it answer-only"
    )


def default_weight(name: str) -> float:
    """The weight of reward `name` when a recipe gives none: `DEFAULT_WEIGHTS`, F1's for every F1
    variant (one of them stands in for `f1`), else 1."""
    return (
        DEFAULT_WEIGHTS["f1"]
        if name in F1_REWARDS or name == "reasoningie_f1"
        else DEFAULT_WEIGHTS.get(name, 1.0)
    )


@reward("consistency")
def consistency_reward(
    completions, text, labels, output_format, reward_parse="strict", fold_label_case=False, **_
) -> list[float]:
    """Does the rationale assert exactly the answered entities? (`rationale.consistency`)"""
    analyses = _last_batch.for_batch(completions, text, labels, output_format, reward_parse, fold_label_case)
    return [
        agreement(asserted_keys(a.rationale, _schema(tuple(ls))), a.predicted_keys) if a.reasoned else 0.0  # type: ignore[arg-type]
        for a, ls in zip(analyses, labels, strict=True)
    ]


def _share_or_empty(share: float | None, answered: bool, gold_is_empty: bool) -> float:
    """A share of the predicted entities; an empty answer is right only for empty gold."""
    if not answered:
        return 0.0
    return float(gold_is_empty) if share is None else share


@reward("schema")
def schema_reward(
    completions, text, entities, labels, output_format, reward_parse="strict", fold_label_case=False, **_
) -> list[float]:
    """Share of predicted entities whose label is in the schema."""
    analyses = _last_batch.for_batch(completions, text, labels, output_format, reward_parse, fold_label_case)
    return [
        _share_or_empty(a.in_schema, a.parse is not None, not es)
        for a, es in zip(analyses, entities, strict=True)
    ]


@reward("grounding")
def grounding_reward(
    completions, text, entities, labels, output_format, reward_parse="strict", fold_label_case=False, **_
) -> list[float]:
    """Share of predicted entities that occur in the sentence (no invented entities)."""
    analyses = _last_batch.for_batch(completions, text, labels, output_format, reward_parse, fold_label_case)
    return [
        _share_or_empty(a.grounded, a.parse is not None, not es)
        for a, es in zip(analyses, entities, strict=True)
    ]


# --- ReasoningIE's own two rewards (the paper's grpo.py), for reproducing it -------------------------
# They read a grouped-JSON answer as its code does, not as ours do: `<think>` blocks dropped anywhere and
# the inside of <answer> or of a ```json fence taken (`rner.utils.process_completion`), labels lower-cased,
# texts normalised as its evaluation does (lower case, no punctuation or articles); an answer it cannot read
# finds nothing. They take no `reward_parse` or `fold_label_case`: their reading is the paper's.

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def reasoningie_answer(completion: str) -> str:
    """The answer text ReasoningIE reads from a completion (`rner.utils.process_completion`): `<think>`
    blocks and stray tags dropped, then the inside of the first `<answer>...</answer>`, then of the first
    ```json fence. An `<answer>` or fence never closed makes its code raise (the F1 reward's run crashes,
    the schema reward pays 0): here it is no answer. By string search, as its regexes match but linear (a
    completion of thousands of unclosed tags took seconds)."""
    if "<think>" in completion or "</think>" in completion:
        kept, at = [], 0
        while (start := completion.find("<think>", at)) != -1:
            end = completion.find("</think>", start + len("<think>"))
            if end == -1:  # no later <think> is closed either
                break
            kept.append(completion[at:start])
            at = end + len("</think>")
        completion = "".join([*kept, completion[at:]]).replace("<think>", "").replace("</think>", "")
    for opener, closer in (("<answer>", "</answer>"), ("```json", "```")):
        if opener in completion:
            start = completion.index(opener) + len(opener)
            end = completion.find(closer, start)
            completion = completion[start:end] if end != -1 else ""
    return completion.strip()


def reasoningie_key(mention: str, label: str) -> tuple[str, str]:
    """(normalised text, lower-cased label): `InputExample.to_set` of ReasoningIE."""
    text = "".join(ch for ch in mention.strip().lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split()), label.strip().lower()


def reasoningie_entities(answer: str) -> set[tuple[str, str]] | None:
    """The keys of `{"entities": {label: [text, ...]}}` (invalid JSON: none); None when its code fails
    on the answer (`entities` not a mapping, a list that is not one), which its rewards pay 0."""
    try:
        data = json.loads(answer)
    except (ValueError, RecursionError):  # nested past the stack: Python's decoder gives up (theirs too)
        data = {}
    if not isinstance(data, dict):
        data = {}
    try:
        found = data.get("entities", {}).items()
        return {
            reasoningie_key(text, label) for label, texts in found for text in texts if isinstance(text, str)
        }
    except (AttributeError, TypeError):
        return None


@reward("reasoningie_f1")
def reasoningie_f1_reward(completions, text, entities, **_) -> list[float]:
    """ReasoningIE's F1 reward: 0 when nothing is predicted or expected (both empty too, as `Counts.f1`)."""
    rewards = []
    for completion, sentence, gold_dicts in zip(completions, text, entities, strict=True):
        found = reasoningie_entities(reasoningie_answer(_completion_text(completion)))
        gold = {reasoningie_key(sentence[e["start"] : e["end"]], e["label"]) for e in gold_dicts}
        rewards.append(key_counts(gold, found or set()).f1)
    return rewards


@reward("reasoningie_schema")
def reasoningie_schema_reward(completions, labels, **_) -> list[float]:
    """ReasoningIE's schema reward: 1 for a JSON answer whose labels are all in the schema (an empty one
    too), else 0."""
    rewards = []
    for completion, schema in zip(completions, labels, strict=True):
        answer = reasoningie_answer(_completion_text(completion))
        try:
            json.loads(answer)
        except (ValueError, RecursionError):
            rewards.append(0.0)
            continue
        found = reasoningie_entities(answer)
        allowed = {label.strip().lower() for label in schema}
        rewards.append(float(found is not None and all(label in allowed for _, label in found)))
    return rewards
