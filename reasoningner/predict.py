"""Entities of raw texts from a trained model: the Python API behind `reasoningner predict`.

    from reasoningner.predict import NERModel

    with NERModel.from_pretrained("outputs/tiny-cpu/sft") as model:
        [entities] = model.predict(["Peter Blackburn met EU officials ."], ["person", "organisation"])
    entities[0]  # Entity(text='Peter Blackburn', label='person', start=0, end=15)

Every text is asked with the prompt the model was trained on (`prompts.ner_instruction`) and the
answer is read by the format's own parser (`formats`), the same path evaluation takes, so what
`predict` returns is what evaluation scores.

Offsets. The parser grounds each generated entity text in the input, so `start`/`end` are
character offsets of the ORIGINAL text and `text[e.start:e.end] == e.text` always holds (`e.text`
is the input's characters, even where the model's string differed in case or spacing). Which
occurrence a repeated mention denotes is the format's rule: grouped_json - a text listed k times
under a label is its first k occurrences (word-boundary aware); occurrence_json - the stated
occurrence index; offset_json - the stated offsets, else the occurrence nearest them; bracketed
and xml - the position of the markup in the rewritten sentence.

What is not an entity. A mention that cannot be found in the text is returned on the result's
`.ungrounded` as `(text, label)`; an entity with a label outside the requested ones is dropped,
and `.problems` says so (`unknown_label`), with every other parse problem.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasoningner.configs import GenerationArguments, PromptArguments, PromptContract
from reasoningner.formats import ParseResult, Problem, get_format, split_answer
from reasoningner.generation import Completion, Conversation, Generator, SamplingConfig
from reasoningner.prompts import ner_instruction
from reasoningner.spans import Schema


@dataclass(frozen=True)
class Entity:
    """A predicted entity: its text as it stands in the input, label, half-open character offsets."""

    text: str
    label: str
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "label": self.label, "start": self.start, "end": self.end}


class Prediction(list[Entity]):
    """The entities of one text (reading order, outer before inner), plus what did not make it.

    A list, so that `predict` returns `list[list[Entity]]`; `ungrounded` holds `(text, label)` the
    model stated but the text does not contain, `problems` the parser's findings, `rationale` the
    `<think>` text when asked for ("" if the output had none; None when not asked for).
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


class NERModel:
    """A generation backend plus the prompt contract a model was trained with.

    `generator` is any `generation.Generator` (a scripted one in tests); the model closes it only
    when it built it (`from_pretrained`). `prompt` must match training: it chooses the prompt
    wording and the answer parser (`from_pretrained` reads it from the model's saved contract).
    Decoding is greedy unless `sampling` says otherwise.
    """

    def __init__(
        self,
        generator: Generator,
        prompt: PromptArguments | None = None,
        *,
        sampling: SamplingConfig | None = None,
        labels: Sequence[str] = (),
        owns_generator: bool = False,
    ) -> None:
        self.generator = generator
        self.prompt = prompt or PromptArguments()
        self.output_format = get_format(self.prompt.output_format)
        self.sampling = sampling or SamplingConfig(max_new_tokens=1024)
        self.labels = list(labels)  # what the model was trained to find, when its contract says
        self._owns_generator = owns_generator

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        backend: str = "transformers",
        prompt: PromptArguments | None = None,
        *,
        max_new_tokens: int = 1024,
        **options: Any,
    ) -> NERModel:
        """Load `path` with the named backend; `options` go to it (`generation.build_generator`),
        e.g. `batch_size=16` for transformers or `tensor_parallel_size=2` for vllm. Greedy decoding.
        The prompt settings `prompt` leaves unset come from the model's `prompt_contract.json`."""
        generation = GenerationArguments(
            model_name_or_path=str(path),
            backend=backend,
            backend_options=options,
            max_new_tokens=max_new_tokens,
        )
        return cls.from_generation(generation, prompt)

    @classmethod
    def from_generation(
        cls, generation: GenerationArguments, prompt: PromptArguments | None = None
    ) -> NERModel:
        """The model that `generation` describes (backend, model, sampling), asked with `prompt`, whose
        unset fields come from the prompt contract saved beside the model."""
        contract = PromptContract.load(generation.model_name_or_path)
        return cls(
            generation.build_generator(),
            (prompt or PromptArguments()).resolve(contract),
            sampling=generation.sampling(),
            labels=contract.labels if contract is not None else (),
            owns_generator=True,
        )

    def conversation(self, text: str, schema: Schema) -> Conversation:
        """The chat the model is asked: the training prompt as the only user turn."""
        return [{"role": "user", "content": ner_instruction(text, schema, self.prompt)}]

    def run(self, items: Sequence[tuple[str, Schema]]) -> Iterator[tuple[int, Completion, ParseResult]]:
        """Generate and parse for every `(text, schema)`, yielding `(index, raw completion, parse)` as
        each finishes (backend order), so that callers can write results as they come."""
        conversations = [self.conversation(text, schema) for text, schema in items]
        for index, completions in self.generator.generate_iter(conversations, self.sampling):
            text, schema = items[index]
            completion = completions[0]
            yield index, completion, self.output_format.parse(completion.text, text, schema)

    def predict(
        self,
        texts: Sequence[str],
        labels: Sequence[str] | Schema,
        descriptions: Mapping[str, str] | None = None,
        return_rationale: bool = False,
    ) -> list[Prediction]:
        """One `Prediction` (a list of `Entity`) per text, in input order; blank texts get an empty one
        (with rationale "" when asked for) without generating.

        `labels` are the entity types to find, in prompt order; `descriptions` (label -> one line)
        go into the prompt, which zero-shot types need.
        """
        if isinstance(texts, str) or isinstance(labels, str):
            raise TypeError("texts and labels are lists of strings; wrap a single one in a list")
        if isinstance(labels, Schema):
            schema = labels if descriptions is None else Schema(labels.labels, descriptions)
        else:
            schema = Schema(tuple(labels), dict(descriptions or {}))
        results = [Prediction(rationale="" if return_rationale else None) for _ in texts]
        todo = [index for index, text in enumerate(texts) if text.strip()]
        for position, completion, parsed in self.run([(texts[index], schema) for index in todo]):
            index = todo[position]
            text = texts[index]
            results[index] = Prediction(
                [
                    Entity(span.text(text), span.label, span.start, span.end)
                    for span in parsed.spans
                    if span.label in schema
                ],
                ungrounded=parsed.ungrounded,
                problems=parsed.problems,
                rationale=(split_answer(completion.text)[0] or "") if return_rationale else None,
            )
        return results

    def close(self) -> None:
        if self._owns_generator:
            self.generator.close()

    def __enter__(self) -> NERModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
