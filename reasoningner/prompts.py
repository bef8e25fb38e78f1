"""Prompts: the NER instruction every stage shows a model, and the assistant target it learns.

One wording for the teacher (stage 1), the student in SFT and GRPO (stages 2-3), and evaluation,
so that what a model is trained on is exactly what it is asked at test time.
"""

from __future__ import annotations

from reasoningner.formats import OutputFormat
from reasoningner.rationale import assertion
from reasoningner.spans import Schema

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def label_block(schema: Schema, descriptions: bool = True) -> str:
    """One line per label, with its description when known and wanted (zero-shot needs them)."""
    lines = []
    for label in schema.labels:
        description = schema.describe(label) if descriptions else None
        lines.append(f"- {label}: {description}" if description else f"- {label}")
    return "\n".join(lines)


def ner_instruction(
    text: str,
    schema: Schema,
    output_format: OutputFormat,
    *,
    reasoning: bool = True,
    descriptions: bool = True,
    compact: bool = False,
) -> str:
    """The user turn: task, label set, answer format, sentence.

    `compact` drops the wording a pretrained model needs to understand the task and keeps what a
    model trained from scratch (the tiny CPU model) needs to tell prompts apart: labels, format
    name, whether to reason. It makes prompts about three times shorter.
    """
    if compact:
        mode = "reason" if reasoning else "answer"
        return f"NER {output_format.name} {mode}\n{label_block(schema, descriptions)}\nSentence: {text}"
    if reasoning:
        how = (
            f"First reason inside {THINK_OPEN}...{THINK_CLOSE}: state every decision as "
            f'{assertion("entity text", "label")} (or "text" is not an entity), '
            "then give the answer."
        )
    else:
        how = "Give the answer directly."
    return (
        "Find the named entities in the sentence, using only these entity types:\n"
        f"{label_block(schema, descriptions)}\n"
        f"Answer format: {output_format.instruction()}\n"
        f"{how}\n"
        f"Sentence: {text}"
    )


def teacher_instruction(
    text: str, schema: Schema, output_format: OutputFormat, *, descriptions: bool = True
) -> str:
    """The teacher's turn: the student's instruction plus what makes its rationale checkable."""
    return (
        ner_instruction(text, schema, output_format, reasoning=True, descriptions=descriptions)
        + "\n\nIn your reasoning, go through the sentence in order; for each candidate span, say briefly "
        "why its context makes it an entity of that type (or not), using exactly the statement form above. "
        "Do not state a decision you do not keep in the answer."
    )


def assistant_target(answer: str, rationale: str | None) -> str:
    """`<think>rationale</think>` then the answer; the answer alone for the direct-answer baseline."""
    if rationale is None:
        return answer
    return f"{THINK_OPEN}\n{rationale.strip()}\n{THINK_CLOSE}\n{answer}"
