"""Entities of raw texts from a trained model: the Python API behind `reasoningner predict`.

    from reasoningner.predict import NERModel

    with NERModel.from_pretrained("outputs/tiny-cpu/sft") as model:
        entities = model.predict_entities("Peter Blackburn met EU officials .", ["person", "organisation"])
    entities[0]  # Entity(text='Peter Blackburn', label='person', start=0, end=15, score=1.0)

`predict_entities(text, labels)` takes one text, `predict(texts, labels)` a batch (one generate call),
as in GLiNER; both take `threshold`, `flat_ner` and `num_samples`, and `Prediction.to_spacy(doc)`
sets a spaCy `Doc`'s entities. Unlike GLiNER, nothing is dropped by default (threshold 0, nested
entities kept): the models are trained on nested data too.

Every text is asked with the prompt the model was trained on (`prompts.ner_instruction`) and the
answer is read by the format's own parser (`formats`), the same path evaluation takes, so what
`predict` returns is what evaluation scores.

Offsets. The parser grounds each generated entity text in the input, so `start`/`end` are
character offsets of the ORIGINAL text and `text[e.start:e.end] == e.text` always holds (`e.text`
is the input's characters, even where the model's string differed in case or spacing). Which
occurrence a repeated mention denotes is the format's rule: grouped_json - a text listed k times is
placed at k occurrences, longer texts first, each outside those placed before where it can be
("Paris" beside "Paris Hilton" is the other Paris; `spans.place_mentions`); occurrence_json - the stated
occurrence index; offset_json - the stated offsets, else the occurrence nearest them; bracketed
and xml - the position of the markup in the rewritten sentence.

Scores. A generative model states entities without probabilities, so the score is self-consistency:
with `num_samples=k` every text is sampled k times (temperature > 0) and an entity's score is the
share of the k answers whose parse holds that exact span (start, end, label). The entities returned
are those of any sample. With one greedy answer (the default) every entity scores 1.0.

Long texts. A prompt longer than `max_prompt_chars` characters would not fit a small context (a
5,000-word line asked whole once took 28.9 GB and ended the run), so its text is asked in windows:
consecutive pieces cut at whitespace (after a sentence end when one falls in the second half of the
piece), each short enough for its prompt to fit; their entities are mapped back to offsets of the
whole text. By default the bound is the model's context less `max_new_tokens`, counted as characters
(`prompt_chars_for`); where the backend counts tokens (transformers, vllm), the text's first windows
are as many characters as the tokens left after the prompt around it. Characters bound tokens only
where a token covers a character or more (about 4 in English with a pretrained tokenizer, 1.2 with the
tiny model's); a byte-level tokenizer spends up to 4 tokens on a rare CJK character or an emoji. So
such a backend has every window's prompt counted, and a window over the context left is cut again,
smaller, until it fits (`fit_to_context`). A server cannot count: lower `max_prompt_chars` for a dense
script.
An entity cut by a window edge is lost or found in part.

What is not an entity. A mention that cannot be found in the text is returned on the result's
`.ungrounded` as `(text, label)`; an entity with a label outside the requested ones is dropped, found in
the text or not, and `.problems` says so (`unknown_label`), with every other parse problem. A requested
label written in another case or with `_` for its spaces (`Medical_Condition`) is that label, where it
names one (evaluation, which scores a model as it answers, does not fold). With several samples or
windows, both hold what any of them had, each once. A text (or window) the backend gave up on (a server
that refused its prompt) has the problem `generation_failed`, and the other texts go on. One whose
output ran into `max_new_tokens` (by default the budget the model was trained with, its contract's) has
`cut_off`: its answer is missing or partial.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reasoningner.configs import DEFAULT_MAX_NEW_TOKENS, GenerationArguments, PromptArguments, PromptContract
from reasoningner.formats import ParseResult, Problem, fold_labels, get_format, split_answer
from reasoningner.generation import (
    Completion,
    Conversation,
    ConversationFailed,
    DeferredGenerator,
    Generator,
    SamplingConfig,
    without_lone_surrogates,
)
from reasoningner.prompts import check_wording, ner_instruction
from reasoningner.spans import Schema, Span, sort_spans

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from spacy.tokens import Doc

# For num_samples > 1 when the model's sampling is greedy: k copies of one answer would all score 1.0.
SAMPLING_TEMPERATURE = 0.7
# The prompt bound when the backend does not say its context (a server): ~2,000-8,000 tokens.
MAX_PROMPT_CHARS = 8000
FAILED = "generation_failed"  # the problem of a text (window) the backend gave up on
TOO_LONG = "prompt_too_long"  # the problem of a sentence `run` does not ask: it would not fit
# The problem of a prediction whose output ran into max_new_tokens, as the backend says: its parse shows
# most such cuts (truncated, unclosed_think), not one where the answer could have ended.
CUT_OFF = "cut_off"


@dataclass(frozen=True)
class Entity:
    """A predicted entity: its text as it stands in the input, label, half-open character offsets, and
    the share of samples that found it (1.0 from one greedy answer)."""

    text: str
    label: str
    start: int
    end: int
    score: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "label": self.label,
            "start": self.start,
            "end": self.end,
            "score": self.score,
        }


class Prediction(list[Entity]):
    """The entities of one text (reading order, outer before inner), plus what did not make it.

    A list, so that `predict` returns `list[list[Entity]]`; `ungrounded` holds `(text, label)` the
    model stated but the text does not contain, `problems` the parser's findings, `rationale` the
    `<think>` text when asked for ("" if the output had none; None when not asked for). With several
    samples the rationale is the first sample's; with windows, the windows' rationales in order,
    separated by a blank line.
    """

    def __init__(
        self,
        entities: Sequence[Entity] = (),
        *,
        ungrounded: Sequence[tuple[str, str]] = (),
        problems: Sequence[Problem] = (),
        rationale: str | None = None,
    ) -> None:
        super().__init__(entities)
        self.ungrounded = list(ungrounded)
        self.problems = list(problems)
        self.rationale = rationale

    def to_dict(self, text: str) -> dict[str, Any]:
        """The JSONL record of `reasoningner predict`; `rationale` only when it was asked for."""
        record: dict[str, Any] = {
            "text": text,
            "entities": [entity.to_dict() for entity in self],
            "ungrounded": [{"text": mention, "label": label} for mention, label in self.ungrounded],
            "problems": sorted({problem.kind for problem in self.problems}),
        }
        if self.rationale is not None:
            record["rationale"] = self.rationale
        return record

    def to_spacy(self, doc: Doc, span_key: str | None = None) -> Doc:
        """Set `doc.ents` (or the span group `span_key`) to these entities and return `doc` (spaCy is the
        optional extra `spacy`).

        `doc` must be of the text this prediction is of. Each entity becomes
        `doc.char_span(start, end, label, alignment_mode="expand")`: the tokens that cover it. spaCy's
        entities are flat, so entities that overlap (in the text, or once expanded to tokens) raise
        ValueError: predict with `flat_ner=True` first, or give `span_key` to set the span group
        `doc.spans[span_key]` instead, which holds nested entities too (GENIA's, ACE's). Scores stay on
        this prediction.
        """
        spans = []
        for entity in self:
            if doc.text[entity.start : entity.end] != entity.text:
                where = f"{entity.start}:{entity.end}"
                raise ValueError(f"the doc is not the predicted text: {entity.text!r} is not at {where}")
            spans.append(
                (doc.char_span(entity.start, entity.end, entity.label, alignment_mode="expand"), entity)
            )
        spans.sort(key=lambda pair: (pair[0].start, pair[0].end))
        if span_key is not None:
            doc.spans[span_key] = [span for span, _ in spans]
            return doc
        for (before, first), (after, second) in zip(spans, spans[1:], strict=False):
            if after.start < before.end:
                where = (
                    "in the text: predict with flat_ner=True"
                    if first.start < second.end and second.start < first.end
                    else "once expanded to spaCy tokens"
                )
                raise ValueError(
                    f"spaCy entities are flat, but {first.text!r} ({first.label}) and {second.text!r} "
                    f"({second.label}) overlap {where}"
                )
        doc.ents = [span for span, _ in spans]
        return doc


def flat_entities(entities: Sequence[Entity], labels: Sequence[str] = ()) -> list[Entity]:
    """A non-overlapping subset of `entities`, in reading order, for flat NER and spaCy.

    Of overlapping (nested or crossing) entities the one with the higher score is kept, then the
    longer one, then the earlier one, then the one whose label comes first in `labels`.
    """
    rank = {label: position for position, label in enumerate(labels)}
    kept: list[Entity] = []
    candidates = sorted(
        entities, key=lambda e: (-e.score, e.start - e.end, e.start, rank.get(e.label, len(rank)), e.label)
    )
    for entity in candidates:
        if all(entity.end <= other.start or other.end <= entity.start for other in kept):
            kept.append(entity)
    return sort_spans(kept)


_SPACE = re.compile(r"\s+")
FULL_WIDTH_ENDS = "。！？；"
SENTENCE_ENDS = ".!?" + FULL_WIDTH_ENDS
_NON_SPACE = re.compile(r"\S")
# A period that ends a title or initials, not a sentence ("St. Louis", "Dr. Li", "U.S. Army"): no cut
# after it is preferred, which would split the name it begins. Titles by name: a short name ends many a
# sentence ("... met Li.").
_ABBREVIATION = re.compile(
    r"(?<!\S)(?:Mr|Mrs|Ms|Dr|Prof|St|Mt|Ft|Jr|Sr|Gen|Col|Capt|Lt|Sgt|Rev|Gov|Sen|Rep|Co|Corp|Inc|Ltd|vs"
    r"|(?:[A-Z]\.)+[A-Z])\.\Z"
)


def windows(text: str, size: int) -> list[tuple[int, int]]:
    """`(start, end)` of the pieces a text is asked in, each at most `size` characters.

    A text that fits is one piece, as it is. A longer one is cut at the last whitespace that fits, or
    after a full-width sentence end (`。！？；`: Chinese and Japanese have no spaces), preferring a
    sentence end (`.`, `!`, `?` or those, not an abbreviation's period) in the second half of the piece;
    a word longer than `size` is cut inside, never between a letter and the combining marks after it.
    Pieces neither start nor end with whitespace, and the whitespace between them belongs to none.
    """
    if size < 1:
        raise ValueError(f"window size must be at least 1, got {size}")
    if len(text) <= size:
        return [(0, len(text))]
    pieces = []
    start = 0
    while match := _NON_SPACE.search(text, start):
        start = match.start()
        end = len(text)
        if end - start > size:
            # A whitespace run at offset i of the piece means text[start:start + i] fits.
            limit = start + size
            cuts = sorted(
                {m.start() for m in _SPACE.finditer(text, start, limit + 1)}
                | {i + 1 for i in range(start, limit) if text[i] in FULL_WIDTH_ENDS}
            )
            sentence_ends = [
                cut
                for cut in cuts
                if cut - start >= size // 2
                and text[cut - 1] in SENTENCE_ENDS
                and not _ABBREVIATION.search(text, max(start, cut - 12), cut)
            ]
            hard = limit
            while hard > start + 1 and unicodedata.combining(text[hard]):
                hard -= 1
            end = (sentence_ends or cuts or [hard])[-1]
        while text[end - 1].isspace():
            end -= 1
        pieces.append((start, end))
        start = end
    return pieces


def check_scoring(threshold: float, num_samples: int) -> None:
    """Refuse a threshold outside [0, 1] or fewer than one sample (before any model is loaded)."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")


_Answers = dict[int, tuple[list[ParseResult], str]]  # window start -> its samples' parses, first rationale


def _combine(
    text: str,
    answers: _Answers,
    schema: Schema,
    *,
    samples: int,
    threshold: float,
    flat_ner: bool,
    rationale: bool,
) -> Prediction:
    """One text's `Prediction` from the answers to its windows: each span scored by the share of samples
    whose parse holds it; ungrounded mentions and problems of any sample once each, in window order.
    A label asked is known however its case, spaces or underscores are written (`Medical Condition`,
    `medical_condition`), where that names one label; other labels are dropped (`unknown_label`)."""
    counts: Counter[Span] = Counter()
    ungrounded: dict[tuple[str, str], None] = {}
    problems: dict[Problem, None] = {}
    for offset in sorted(answers):
        for answer in answers[offset][0]:
            parsed = fold_labels(answer, schema.labels, _folded)
            counts.update(
                {Span(s.start + offset, s.end + offset, s.label) for s in parsed.spans if s.label in schema}
            )
            ungrounded.update(dict.fromkeys((t, label) for t, label in parsed.ungrounded if label in schema))
            problems.update(dict.fromkeys(parsed.problems))
    entities = [
        Entity(text[span.start : span.end], span.label, span.start, span.end, count / samples)
        for span, count in counts.items()
        if count / samples >= threshold
    ]
    return Prediction(
        flat_entities(entities, schema.labels) if flat_ner else sort_spans(entities),
        ungrounded=list(ungrounded),
        problems=list(problems),
        rationale="\n\n".join(answers[offset][1] for offset in sorted(answers)) if rationale else None,
    )


def _folded(label: str) -> str:
    """How `predict` knows a label asked (`formats.fold_labels`): case, underscores and spaces aside."""
    return " ".join(label.replace("_", " ").split()).casefold()


def prompt_chars_for(generator: Generator, sampling: SamplingConfig) -> int:
    """The longest prompt, in characters, that leaves room for the answer in the model's context.

    The context left after `max_new_tokens`, counted as characters: a first bound that needs no
    tokenizer, and safe wherever a token covers a character or more (`NERModel.fit_to_context`
    counts the tokens where the backend can); `MAX_PROMPT_CHARS` when the backend does not know its
    context (a server).
    """
    left = context_left(generator, sampling)
    return MAX_PROMPT_CHARS if left is None else left


# The fewest context tokens a prompt must have left after the output's: a label list and a sentence.
MIN_PROMPT_TOKENS = 256


def context_left(generator: Generator, sampling: SamplingConfig) -> int | None:
    """The context tokens a prompt may take, after `max_new_tokens` (None when the backend does not know
    its context); too few for any prompt is an error naming the setting (every sentence would be refused
    as too long, scored as no answer), which a model's contract may have set (its trained budget)."""
    if generator.context_tokens is None:
        return None
    left = generator.context_tokens - sampling.max_new_tokens
    if left < MIN_PROMPT_TOKENS:
        raise ValueError(
            f"max_new_tokens={sampling.max_new_tokens} leaves {left} of the model's "
            f"{generator.context_tokens} context tokens for the prompt: lower max_new_tokens (unset, it is "
            "the budget the model was trained with: its prompt contract) or give the backend a longer "
            "context (vllm: max_model_len)"
        )
    return left


class NERModel:
    """A generation backend plus the prompt contract a model was trained with.

    `generator` is any `generation.Generator` (a scripted one in tests); the model closes it only
    when it built it (`from_pretrained`). `prompt` must match training: it chooses the prompt
    wording and the answer parser (`from_pretrained` reads it from the model's saved contract).
    Decoding is greedy unless `sampling` says otherwise. `max_prompt_chars` bounds the prompt of
    `predict`, which asks longer texts in windows (module docstring).
    """

    def __init__(
        self,
        generator: Generator,
        prompt: PromptArguments | None = None,
        *,
        sampling: SamplingConfig | None = None,
        labels: Sequence[str] = (),
        descriptions: Mapping[str, str] | None = None,
        max_prompt_chars: int | None = None,
        owns_generator: bool = False,
    ) -> None:
        self.generator = generator
        self.prompt = prompt or PromptArguments()
        self.output_format = get_format(self.prompt.output_format)
        self.sampling = sampling or SamplingConfig(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        self.labels = list(labels)  # what the model was trained to find, when its contract says
        self.descriptions = dict(descriptions or {})  # of those labels, as its training prompts had them
        self._told_descriptions_unused = False
        if max_prompt_chars is not None and max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars must be at least 1, got {max_prompt_chars}")
        self._max_prompt_chars = max_prompt_chars
        self._chars_given = max_prompt_chars is not None
        self._owns_generator = owns_generator

    @functools.cached_property
    def max_prompt_chars(self) -> int:
        """The given bound, else the context's (`prompt_chars_for`), asked of the backend when first
        needed: a deferred backend is not built for it."""
        return self._max_prompt_chars or prompt_chars_for(self.generator, self.sampling)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        backend: str = "transformers",
        prompt: PromptArguments | None = None,
        *,
        max_new_tokens: int | None = None,
        max_prompt_chars: int | None = None,
        **options: Any,
    ) -> NERModel:
        """Load `path` with the named backend; `options` go to it (`generation.build_generator`),
        e.g. `batch_size=16` for transformers or `tensor_parallel_size=2` for vllm. Greedy decoding.
        The prompt settings `prompt` leaves unset, and `max_new_tokens`, come from the model's
        `prompt_contract.json`."""
        generation = GenerationArguments(
            model_name_or_path=str(path),
            backend=backend,
            backend_options=options,
            max_new_tokens=max_new_tokens,
        )
        return cls.from_generation(generation, prompt, max_prompt_chars=max_prompt_chars)

    @classmethod
    def from_generation(
        cls,
        generation: GenerationArguments,
        prompt: PromptArguments | None = None,
        *,
        max_prompt_chars: int | None = None,
        deferred: bool = False,
    ) -> NERModel:
        """The model that `generation` describes (backend, model, sampling), asked with `prompt`, whose
        unset fields (and an unset `max_new_tokens`) come from the prompt contract saved beside the model;
        `deferred`: its backend is built when first asked (`generation.DeferredGenerator`)."""
        return cls.from_contract(
            generation,
            generation.prompt_contract(),
            prompt,
            max_prompt_chars=max_prompt_chars,
            deferred=deferred,
        )

    @classmethod
    def from_contract(
        cls,
        generation: GenerationArguments,
        contract: PromptContract | None,
        prompt: PromptArguments | None = None,
        *,
        max_prompt_chars: int | None = None,
        deferred: bool = False,
    ) -> NERModel:
        """`from_generation` with the model's contract already read (evaluation reads it first, for its
        label sets: a Hub model's is not asked of the Hub twice)."""
        generation = generation.within_budget(contract)
        check_wording(contract)
        if contract is None:
            logger.warning(
                "%s has no prompt contract (a base model, or one trained elsewhere): asked with %s; a model "
                "trained here and asked otherwise than it learnt answers worse",
                generation.model_name_or_path,
                prompt or PromptArguments(),
            )
        generator = (
            DeferredGenerator(generation.build_generator) if deferred else generation.build_generator()
        )
        return cls(
            generator,
            (prompt or PromptArguments()).resolve(contract),
            sampling=generation.sampling(),
            labels=contract.labels if contract is not None else (),
            descriptions=contract.descriptions if contract is not None else None,
            max_prompt_chars=max_prompt_chars,
            owns_generator=True,
        )

    def conversation(
        self, text: str, schema: Schema, label_map: Mapping[str, str] | None = None
    ) -> Conversation:
        """The chat the model is asked: the training prompt as the only user turn (a memorization
        probe's `label_map` renames the labels of its format example)."""
        return [{"role": "user", "content": ner_instruction(text, schema, self.prompt, label_map)}]

    def run(
        self, items: Sequence[tuple[str, Schema] | tuple[str, Schema, Mapping[str, str] | None]]
    ) -> Iterator[tuple[int, Completion, ParseResult]]:
        """Generate and parse for every `(text, schema[, label_map])`, yielding `(index, raw completion,
        parse)` as each finishes (backend order), so that callers can write results as they come.

        Evaluation asks whole sentences: one whose prompt is over the tokens the context leaves after
        `max_new_tokens` (where the backend can count them), or over `max_prompt_chars` (when given, or
        when the backend cannot count: a server), is not asked (it
        would not fit the context, and could end the batch) but answered at once with no entity and
        the problem `prompt_too_long`, which scores it as a format failure. One the backend gives up on
        (a server that refused it, or kept failing) is answered empty with `generation_failed`, and the
        others go on.
        """
        conversations = [self.conversation(*item) for item in items]
        budget = self.prompt_token_budget()
        counts = self.generator.prompt_tokens(conversations) if budget is not None and items else None
        too_long = {
            i: f"over {self.max_prompt_chars} characters"
            for i, chat in enumerate(conversations)
            if (counts is None or self._chars_given) and len(chat[0]["content"]) > self.max_prompt_chars
        }
        if budget is not None and counts is not None:
            too_long |= {
                i: f"{count} tokens, over the {budget} the context leaves"
                for i, count in enumerate(counts)
                if count > budget and i not in too_long
            }
        if too_long:
            logger.warning(
                "%d of %d prompts do not fit (over max_prompt_chars=%d, or over the %s tokens the context "
                "leaves): answered empty (prompt_too_long)",
                len(too_long), len(items), self.max_prompt_chars, budget,
            )  # fmt: skip
            for index in sorted(too_long):
                yield index, Completion("", 0), ParseResult([], problems=[Problem(TOO_LONG, too_long[index])])
        asked = [i for i in range(len(items)) if i not in too_long]
        chats = [conversations[i] for i in asked]
        for position, outcome in self.generator.generate_outcomes(chats, self.sampling):
            if isinstance(outcome, ConversationFailed):
                failed = ParseResult([], problems=[Problem(FAILED, str(outcome))])
                yield asked[position], Completion("", 0), failed
                continue
            text, schema = items[asked[position]][:2]
            completion = outcome[0]
            yield asked[position], completion, self.output_format.parse(completion.text, text, schema)

    def predict(
        self,
        texts: Sequence[str],
        labels: Sequence[str] | Schema,
        descriptions: Mapping[str, str] | None = None,
        return_rationale: bool = False,
        *,
        threshold: float = 0.0,
        flat_ner: bool = False,
        num_samples: int = 1,
    ) -> list[Prediction]:
        """One `Prediction` (a list of `Entity`) per text, in input order; blank texts get an empty one
        (with rationale "" when asked for) without generating. Every window of every text, with all
        its samples, is asked in one generate call.

        `labels` are the entity types to find, in prompt order; `descriptions` (label -> one line)
        go into the prompt, which zero-shot types need; a label without one is described as in the
        model's training prompts (its contract), if they described it. `num_samples` > 1 samples each
        text that many times to score its entities (module docstring), at the model's temperature, or
        0.7 when that is greedy; `threshold` drops entities scoring below it; `flat_ner` keeps a
        non-overlapping subset (`flat_entities`: higher score, then longer, then earlier).
        """
        if isinstance(texts, str) or isinstance(labels, str):
            raise TypeError("texts and labels are lists of strings; wrap a single one in a list")
        texts = list(texts)  # an iterator is read once
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("every text must be a string")
        check_scoring(threshold, num_samples)
        schema = self.schema(labels, descriptions)
        # A lone surrogate (from surrogateescape decoding, or a JSON "\\ud800") fails the tokenizer of
        # the whole batch: the model is asked with U+FFFD in its place, one character for one, so that
        # offsets still slice the text given.
        asked: list[str] = without_lone_surrogates(texts)
        size = self._window_size(schema) if any(text.strip() for text in asked) else 0
        pieces = self.fit_to_context(
            asked,
            [
                (index, start, end)
                for index, text in enumerate(asked)
                if text.strip()
                for start, end in windows(text, size)
            ],
            schema,
        )
        conversations = [self.conversation(asked[index][start:end], schema) for index, start, end in pieces]
        answers: dict[int, _Answers] = {index: {} for index, _, _ in pieces}
        sampling = self._sampling(num_samples)
        for position, outcome in self.generator.generate_outcomes(conversations, sampling):
            index, start, end = pieces[position]
            if isinstance(outcome, ConversationFailed):
                answers[index][start] = ([ParseResult([], problems=[Problem(FAILED, str(outcome))])], "")
                continue
            window = asked[index][start:end]
            parses = [self._parse(completion, window, schema) for completion in outcome]
            answers[index][start] = (parses, split_answer(outcome[0].text)[0] or "")
        return [
            _combine(
                text,
                answers[index],
                schema,
                samples=num_samples,
                threshold=threshold,
                flat_ner=flat_ner,
                rationale=return_rationale,
            )
            if index in answers
            else Prediction(rationale="" if return_rationale else None)
            for index, text in enumerate(texts)
        ]

    def _parse(self, completion: Completion, text: str, schema: Schema) -> ParseResult:
        """The parse of a prediction's output, with `CUT_OFF` when it ran into max_new_tokens."""
        parsed = self.output_format.parse(completion.text, text, schema)
        if completion.finish_reason == "length":
            limit = self.sampling.max_new_tokens
            parsed.problems.append(Problem(CUT_OFF, f"the output ran into max_new_tokens={limit}"))
        return parsed

    def schema(self, labels: Sequence[str] | Schema, descriptions: Mapping[str, str] | None = None) -> Schema:
        """The label set asked as evaluation asks it (`PromptContract.asked`): `descriptions` (and a
        Schema's own) first, then the contract's; exactly the trained labels in the training order."""
        names = labels.labels if isinstance(labels, Schema) else tuple(labels)
        given = {**(labels.descriptions if isinstance(labels, Schema) else {}), **(descriptions or {})}
        if given and not self.prompt.descriptions and not self._told_descriptions_unused:
            self._told_descriptions_unused = True
            logger.warning(
                "label descriptions given, but this model was trained without them in its prompts "
                "(descriptions: false): they are left out, as in training"
            )
        contract = PromptContract(self.prompt, self.labels, descriptions=self.descriptions)
        return contract.asked(Schema(names, given))

    def predict_entities(
        self,
        text: str,
        labels: Sequence[str] | Schema,
        descriptions: Mapping[str, str] | None = None,
        return_rationale: bool = False,
        *,
        threshold: float = 0.0,
        flat_ner: bool = False,
        num_samples: int = 1,
    ) -> Prediction:
        """`predict` for one text (GLiNER's name), with the same options."""
        if not isinstance(text, str):
            raise TypeError("predict_entities takes one text; use predict for a list")
        [prediction] = self.predict(
            [text],
            labels,
            descriptions,
            return_rationale,
            threshold=threshold,
            flat_ner=flat_ner,
            num_samples=num_samples,
        )
        return prediction

    def prompt_token_budget(self) -> int | None:
        """Tokens a prompt may take: the context less `max_new_tokens` (None when it is not known)."""
        return context_left(self.generator, self.sampling)

    def fit_to_context(
        self, texts: Sequence[str], pieces: list[tuple[int, int, int]], schema: Schema
    ) -> list[tuple[int, int, int]]:
        """`pieces` (text index, start, end), each whose prompt is over `prompt_token_budget` cut again
        into windows of the characters its tokens allow, until every prompt fits; as they are when the
        backend cannot count tokens."""
        budget = self.prompt_token_budget()
        frame = self._frame_tokens(schema, budget) if pieces else None
        if budget is None or frame is None:
            return pieces
        fitted = []
        while pieces:
            counts = self.generator.prompt_tokens(
                [self.conversation(texts[index][start:end], schema) for index, start, end in pieces]
            )
            over = []
            for (index, start, end), count in zip(pieces, counts or [], strict=True):
                if count <= budget:
                    fitted.append((index, start, end))
                    continue
                if end - start == 1:
                    raise ValueError(
                        f"a prompt with one character of text is {count} tokens, and the context leaves "
                        f"{budget} after max_new_tokens={self.sampling.max_new_tokens}: lower "
                        "max_new_tokens, or shorten the label descriptions"
                    )
                # The text's share of the tokens scaled to what the prompt around it leaves, and at
                # least one character less, so that every round cuts.
                room = budget - frame
                size = max(min((end - start) * room // max(count - frame, 1), end - start - 1), 1)
                over += [(index, start + a, start + b) for a, b in windows(texts[index][start:end], size)]
            pieces = over
        return sorted(fitted)

    def _frame_tokens(self, schema: Schema, budget: int | None) -> int | None:
        """Tokens of the prompt around the text, where the backend counts them and the context is known;
        one leaving no room for text is an error naming what to change."""
        if budget is None:
            return None
        counts = self.generator.prompt_tokens([self.conversation("", schema)])
        if counts is None:  # a backend that cannot count tokens
            return None
        if counts[0] >= budget:
            raise ValueError(
                f"the prompt without the text is {counts[0]} tokens, and the context leaves {budget} after "
                f"max_new_tokens={self.sampling.max_new_tokens}: lower max_new_tokens, or shorten the label "
                "descriptions"
            )
        return counts[0]

    def _window_size(self, schema: Schema) -> int:
        """Characters of text a prompt has room for in a first cut: the given limit less the prompt
        around the text; unless given, where the backend counts tokens, the tokens the context leaves
        after that prompt, counted as characters (`fit_to_context` cuts again where a token covers less),
        since labels and wording (English, several characters a token) cost fewer tokens than characters."""
        budget = None if self._chars_given else self.prompt_token_budget()
        frame = self._frame_tokens(schema, budget)
        if budget is not None and frame is not None:
            return budget - frame
        room = self.max_prompt_chars - len(self.conversation("", schema)[0]["content"])
        if room < 1:
            raise ValueError(
                f"the prompt without the text is {self.max_prompt_chars - room} characters, more than "
                f"max_prompt_chars={self.max_prompt_chars}: raise it, or shorten the label descriptions"
            )
        return room

    def _sampling(self, num_samples: int) -> SamplingConfig:
        """The model's sampling for one answer; for several, sampled (never k copies of a greedy one)."""
        if num_samples == 1:
            return replace(self.sampling, n=1)
        return replace(
            self.sampling, n=num_samples, temperature=self.sampling.temperature or SAMPLING_TEMPERATURE
        )

    def close(self) -> None:
        if self._owns_generator:
            self.generator.close()

    def __enter__(self) -> NERModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
