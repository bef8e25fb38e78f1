"""Prompts: the NER instruction every stage shows a model, and the assistant target it learns.

One wording for the teacher (stage 1), the student in SFT and GRPO (stages 2-3), and evaluation,
so that what a model is trained on is exactly what it is asked at test time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from reasoningner.configs import PromptArguments, PromptContract
from reasoningner.formats import THINK_CLOSE, THINK_OPEN, format_example, get_format, join_answer
from reasoningner.rationale import assertion
from reasoningner.spans import Schema

logger = logging.getLogger(__name__)


def prompt_hash(conversation: Sequence[Mapping[str, str]]) -> str:
    """A short fingerprint of the exact prompt: what stage 1's records and evaluation's outputs are kept
    under, so that a resumed run knows what was asked how."""
    return hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).hexdigest()[:16]


def wording(prompt: PromptArguments) -> str:
    """A fingerprint of how this version of the code words the instruction under `prompt`'s settings (the
    prompt of a fixed sentence and label set), which a trained model's contract records (`PromptContract`)."""
    schema = Schema(("person", "location"), {"person": "a human being"})
    return prompt_hash([{"role": "user", "content": ner_instruction("Ann lives in Rome .", schema, prompt)}])


def check_wording(contract: PromptContract | None) -> None:
    """Warn when a model was trained on prompts worded otherwise than this version of the code words them:
    it is asked the new way, and answers worse than it learnt to."""
    if contract is not None and contract.wording and contract.wording != wording(contract.prompt):
        logger.warning(
            "%s: the model was trained on prompts worded otherwise than this version of reasoningner words "
            "them; it is asked with today's wording and may answer worse: train it again, or install the "
            "version it was trained with (its manifest.json names the commit)",
            contract.source,
        )


def label_block(schema: Schema, descriptions: bool = True) -> str:
    """One line per label, with its description when known and wanted (zero-shot needs them)."""
    lines = []
    for label in schema.labels:
        description = schema.describe(label) if descriptions else None
        lines.append(f"- {label}: {description}" if description else f"- {label}")
    return "\n".join(lines)


def ner_instruction(
    text: str, schema: Schema, prompt: PromptArguments, label_map: Mapping[str, str] | None = None
) -> str:
    """The user turn: task, label set, answer format, sentence, as the prompt contract says. A
    memorization probe's `label_map` renames the labels of the format's example too.

    `compact_prompt` drops the wording a pretrained model needs to understand the task and keeps what a
    model trained from scratch (the tiny CPU model) needs to tell prompts apart: labels, format
    name, whether to reason. It makes prompts about three times shorter.
    """
    labels = label_block(schema, prompt.descriptions)
    if prompt.compact_prompt:
        mode = "reason" if prompt.reasoning else "answer"
        return f"NER {prompt.output_format} {mode}\n{labels}\nSentence: {text}"
    if prompt.reasoning:
        how = (
            f"First reason inside {THINK_OPEN}...{THINK_CLOSE}: state every decision as "
            f'{assertion("entity text", "label")} (or "text" is not an entity), '
            "then give the answer."
        )
    else:
        how = "Give the answer directly."
    return (
        "Find the named entities in the sentence, using only these entity types:\n"
        f"{labels}\n"
        f"Answer format: {get_format(prompt.output_format).instruction(format_example(label_map))}\n"
        f"{how}\n"
        f"Sentence: {text}"
    )


def teacher_instruction(text: str, schema: Schema, prompt: PromptArguments) -> str:
    """The teacher's turn: the full reasoning instruction in the contract's format, plus what makes
    its rationale checkable."""
    full = replace(prompt, reasoning=True, compact_prompt=False)
    return (
        ner_instruction(text, schema, full)
        + "\n\nIn your reasoning, go through the sentence in order; for each candidate span, say briefly "
        "why its context makes it an entity of that type (or not), using exactly the statement form above. "
        "Do not state a decision you do not keep in the answer."
    )


def assistant_target(answer: str, rationale: str | None) -> str:
    """`<think>rationale</think>` then the answer; the answer alone for the direct-answer baseline."""
    return answer if rationale is None else join_answer(rationale, answer)
