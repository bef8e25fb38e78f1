"""Stage 3 rewards and data: every component on hand-built completions (right, wrong, malformed,
hacked), the guards against reward hacking, TRL's calling convention, totality (hypothesis), the
registry, the dataset sampler, and a GRPO smoke run of the stage script on the tiny-cpu recipe."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasoningner import rewards
from reasoningner.configs import DataArguments, PromptArguments, PromptContract
from reasoningner.formats import FORMATS, get_format
from reasoningner.metrics import MATCH_MODES, Counts, match_counts, match_totals
from reasoningner.rationale import assertion
from reasoningner.readers import read_dataset
from reasoningner.rewards import (
    DEFAULT_WEIGHTS,
    MAX_COMPLETION_CHARS,
    REWARDS,
    analyse,
    answer_only_warning,
    default_weight,
    entity_counts,
    get_rewards,
    reasoningie_answer,
)
from reasoningner.spans import Example, Schema, Span, spans_from_dicts
from reasoningner.training_data import proportional_sizes, rl_prompts, rl_record, sample_mixture

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
LABELS = ["organisation", "misc", "person", "location"]
SCHEMA = Schema(tuple(LABELS))

TEXT = "EU rejects German call to boycott British lamb ."
GOLD = [
    {"start": 0, "end": 2, "label": "organisation", "text": "EU"},
    {"start": 11, "end": 17, "label": "misc", "text": "German"},
    {"start": 34, "end": 41, "label": "misc", "text": "British"},
]
RATIONALE = '"EU" is an organisation\n"German" is a misc\n"British" is a misc'
ANSWER = '{"entities": {"organisation": ["EU"], "misc": ["German", "British"]}}'
NOTHING = "No span names an entity of the given types."
EMPTY = '{"entities": {}}'
NO_ENTITY_TEXT = "Nothing happened on Thursday ."
NAMES = ["format", "f1", "f1_exact", "consistency", "schema", "grounding"]


def complete(rationale: str, answer: str) -> str:
    """A completion the way the chat template makes the model write it."""
    return f"<think>\n{rationale}\n</think>\n{answer}"


def score(
    completion: Any,
    text: str = TEXT,
    entities: list[dict[str, Any]] | None = None,
    fmt: str = "grouped_json",
    **options: Any,
) -> dict[str, float]:
    """Every component that scores a completion on its own (`NAMES`), called as TRL calls them (a batch
    of one); `options` are `get_rewards`' (parse, fold_label_case)."""
    columns = {
        "text": [text],
        "entities": [GOLD if entities is None else entities],
        "labels": [LABELS],
        "output_format": [fmt],
    }
    functions = get_rewards(NAMES, **options)
    return {
        name: function([completion], **columns)[0] for name, function in zip(NAMES, functions, strict=True)
    }


def expect(*values: float) -> dict[str, float]:
    """Expected scores in the order format, f1, f1_exact, consistency, schema, grounding."""
    return dict(zip(NAMES, values, strict=True))


ALL_ONE = expect(1, 1, 1, 1, 1, 1)
ALL_ZERO = expect(0, 0, 0, 0, 0, 0)

# Gold is EU/organisation, German/misc, British/misc. Format is 0.5 for a closed non-empty rationale
# plus 0.5 × (1 - 0.25 per distinct syntax problem) for a readable answer; F1 is 2tp / (2tp + fp + fn);
# consistency is the F1 between asserted and answered pairs; schema and grounding are shares of the
# predicted entities.
MALFORMED = {
    "truncated": complete(RATIONALE, ANSWER[: ANSWER.index("British") + 3]),
    "code-fence": complete(RATIONALE, f"```json\n{ANSWER}\n```"),
    "python-literal": complete(RATIONALE, ANSWER.replace('"', "'")),
    "invalid-json": complete(
        RATIONALE, '{"entities": {"organisation": ["EU"] "misc": ["German", "British"]}}'
    ),
    "no-wrapper": complete(RATIONALE, '{"organisation": ["EU"], "misc": ["German", "British"]}'),
    "text-around": complete(RATIONALE, f"Here it is: {ANSWER} Done."),
}

CASES = [
    # -- right ---------------------------------------------------------------------------------------
    pytest.param(complete(RATIONALE, ANSWER), ALL_ONE, id="right"),
    # `</think>` alone: the chat template opened the rationale.
    pytest.param(f"{RATIONALE}\n</think>\n{ANSWER}", ALL_ONE, id="right-template-opened-think"),
    # -- wrong ---------------------------------------------------------------------------------------
    # EU right, German as a person (fp + fn), British missed (fn): 2·1 / (2 + 1 + 2) = 0.4; the
    # rationale states exactly that answer, so consistency is 1.
    pytest.param(
        complete(
            '"EU" is an organisation\n"German" is a person',
            '{"entities": {"organisation": ["EU"], "person": ["German"]}}',
        ),
        expect(1, 0.4, 0.4, 1, 1, 1),
        id="partly-wrong",
    ),
    # Right answer, but the rationale only asserts EU: consistency 2·1 / (1 + 3) = 0.5.
    pytest.param(complete('"EU" is an organisation', ANSWER), expect(1, 1, 1, 0.5, 1, 1), id="inconsistent"),
    # -- malformed ----------------------------------------------------------------------------------
    # Strict (the default): an answer with a syntax problem is no answer a program could use; only
    # format pays, 0.5 for the rationale + 0.375 (one problem costs a quarter of the answer half).
    # `LENIENT_CASES` score the entities the parser salvages from the same completions.
    pytest.param(MALFORMED["truncated"], expect(0.875, 0, 0, 0, 0, 0), id="truncated"),
    # Cut inside the rationale: no closed rationale, no answer, nothing to score.
    pytest.param(f"<think>\n{RATIONALE}", ALL_ZERO, id="unclosed-think"),
    pytest.param(MALFORMED["code-fence"], expect(0.875, 0, 0, 0, 0, 0), id="code-fence"),
    pytest.param(MALFORMED["python-literal"], expect(0.875, 0, 0, 0, 0, 0), id="python-literal"),
    pytest.param(MALFORMED["invalid-json"], expect(0.875, 0, 0, 0, 0, 0), id="invalid-json"),
    pytest.param(MALFORMED["no-wrapper"], expect(0.875, 0, 0, 0, 0, 0), id="no-wrapper"),
    pytest.param(MALFORMED["text-around"], expect(0.875, 0, 0, 0, 0, 0), id="text-around"),
    # Nothing after the rationale: only the rationale half of the format reward.
    pytest.param(complete(RATIONALE, ""), expect(0.5, 0, 0, 0, 0, 0), id="no-answer"),
    # Prose where JSON is due: nothing can be read, so it is no answer either.
    pytest.param(
        complete(RATIONALE, "EU is an organisation, German and British are misc."),
        expect(0.5, 0, 0, 0, 0, 0),
        id="unreadable-answer",
    ),
    pytest.param("", ALL_ZERO, id="empty-output"),
    # -- hacked -------------------------------------------------------------------------------------
    # No reasoning: the rationale half of format and all of consistency are lost.
    pytest.param(f"<think></think>{ANSWER}", expect(0.5, 1, 1, 0, 1, 1), id="empty-rationale"),
    pytest.param(ANSWER, expect(0.5, 1, 1, 0, 1, 1), id="no-rationale"),
    # The answer restated in the rationale, as teachers write: it asserts nothing, so it neither earns nor
    # costs consistency (stage 1 accepts such rationales and SFT teaches them).
    pytest.param(
        complete(f"{RATIONALE}\nSo the answer is {ANSWER}", ANSWER),
        expect(1, 1, 1, 1, 1, 1),
        id="answer-restated",
    ),
    pytest.param(complete(RATIONALE + "\nHmm." * MAX_COMPLETION_CHARS, ANSWER), ALL_ZERO, id="giant-output"),
    # Paris is not in the sentence: F1 2·3 / (6 + 1) = 6/7 (text and exact: an ungrounded mention is a
    # false positive in both); the rationale asserts it too, so consistency is 1; grounding 3/4.
    pytest.param(
        complete(
            RATIONALE + '\n"Paris" is a location',
            '{"entities": {"organisation": ["EU"], "misc": ["German", "British"], "location": ["Paris"]}}',
        ),
        expect(1, 6 / 7, 6 / 7, 1, 1, 0.75),
        id="invented-entity",
    ),
    # "ORG" is not a label of the schema: EU/ORG is a false positive and EU/organisation a false
    # negative: F1 2·2 / (4 + 1 + 1) = 2/3; the rationale cannot assert "ORG": consistency 2/3;
    # schema 2/3. `unknown_label` is judged by the schema reward, not by format.
    pytest.param(
        complete(RATIONALE, '{"entities": {"ORG": ["EU"], "misc": ["German", "British"]}}'),
        expect(1, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1),
        id="label-outside-schema",
    ),
    # Answering nothing when there are entities: F1 0; schema and grounding are not paid for saying
    # nothing (only an empty gold makes an empty answer right); format and consistency still hold.
    pytest.param(complete(NOTHING, EMPTY), expect(1, 0, 0, 1, 0, 0), id="empty-answer"),
    # Listing entities more often than they occur adds nothing (`duplicate`, kept once).
    pytest.param(
        complete(
            RATIONALE,
            '{"entities": {"organisation": ["EU", "EU", "EU"], "misc": ["German", "British", "British"]}}',
        ),
        ALL_ONE,
        id="repeated-entities",
    ),
    # An invented entity listed three times counts once, as stated once: grounding 3/4, F1 6/7.
    pytest.param(
        complete(
            RATIONALE + '\n"Paris" is a location',
            '{"entities": {"organisation": ["EU"], "misc": ["German", "British"], '
            '"location": ["Paris", "Paris", "Paris"]}}',
        ),
        expect(1, 6 / 7, 6 / 7, 1, 1, 0.75),
        id="repeated-invented-entity",
    ),
]


@pytest.mark.parametrize(("completion", "expected"), CASES)
def test_components_on_hand_built_completions(completion: str, expected: dict[str, float]) -> None:
    assert score(completion) == pytest.approx(expected)


LENIENT_CASES = [
    # Cut inside "British": the complete entries EU and German are kept. F1 2·2 / (4 + 1) = 0.8;
    # consistency 2·2 / (3 + 2) = 0.8.
    pytest.param(MALFORMED["truncated"], expect(0.875, 0.8, 0.8, 0.8, 1, 1), id="truncated"),
    pytest.param(MALFORMED["code-fence"], expect(0.875, 1, 1, 1, 1, 1), id="code-fence"),
    pytest.param(MALFORMED["python-literal"], expect(0.875, 1, 1, 1, 1, 1), id="python-literal"),
    # Missing comma: the entries before the error are kept, EU alone: F1 2·1 / (2 + 2) = 0.5.
    pytest.param(MALFORMED["invalid-json"], expect(0.875, 0.5, 0.5, 0.5, 1, 1), id="invalid-json"),
    pytest.param(MALFORMED["no-wrapper"], expect(0.875, 1, 1, 1, 1, 1), id="no-wrapper"),
    pytest.param(MALFORMED["text-around"], expect(0.875, 1, 1, 1, 1, 1), id="text-around"),
]


@pytest.mark.parametrize(("completion", "expected"), LENIENT_CASES)
def test_lenient_parsing_pays_the_salvaged_entities(completion: str, expected: dict[str, float]) -> None:
    assert score(completion, parse="lenient") == pytest.approx(expected)


def test_clean_answers_score_alike_strict_and_lenient() -> None:
    for completion, _ in [case.values for case in CASES]:
        if completion not in MALFORMED.values():
            assert score(completion) == score(completion, parse="lenient")


def test_label_case_is_folded_only_when_asked() -> None:
    shouted = complete(RATIONALE, '{"entities": {"ORGANISATION": ["EU"], "Misc": ["German", "British"]}}')
    as_written = score(shouted)
    assert as_written["f1"] == 0 and as_written["schema"] == 0
    assert score(shouted, fold_label_case=True) == pytest.approx(ALL_ONE)


def test_reward_options_are_checked_and_keep_the_function_names() -> None:
    with pytest.raises(ValueError, match="parse must be one of"):
        get_rewards(["f1"], parse="forgiving")
    bound = get_rewards(list(DEFAULT_WEIGHTS), parse="lenient", fold_label_case=True)
    assert [f.__name__ for f in bound] == [REWARDS[name].__name__ for name in DEFAULT_WEIGHTS]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        # Nothing to find and nothing found: F1 and consistency are 1.0, not undefined.
        pytest.param(complete(NOTHING, EMPTY), ALL_ONE, id="both-empty"),
        # One invented entity against no gold entity: 2·0 / (0 + 1 + 0) = 0.
        pytest.param(
            complete('"Thursday" is a misc', '{"entities": {"misc": ["Thursday"]}}'),
            expect(1, 0, 0, 1, 1, 1),
            id="spurious-entity",
        ),
    ],
)
def test_sentence_without_entities(completion: str, expected: dict[str, float]) -> None:
    assert score(completion, NO_ENTITY_TEXT, []) == pytest.approx(expected)


def test_exact_f1_tells_occurrences_apart_and_text_f1_does_not() -> None:
    # grouped_json grounds a listed "Paris" at its first occurrence outside "Paris Hilton", while the
    # gold location is the last: exact F1 2·1 / (2 + 1 + 1) = 0.5, text F1 1.0 (same text and label).
    text = "Paris is not Paris Hilton ; Paris is a city ."
    gold = [{"start": 13, "end": 25, "label": "person"}, {"start": 28, "end": 33, "label": "location"}]
    completion = complete(
        '"Paris Hilton" is a person\n"Paris" is a location',
        '{"entities": {"person": ["Paris Hilton"], "location": ["Paris"]}}',
    )
    assert score(completion, text, gold) == pytest.approx(expect(1, 1, 0.5, 1, 1, 1))


# --- guards: each test fails when its guard is taken out of rewards.py -----------------------------


def test_guard_oversized_completion_scores_zero_everywhere() -> None:
    padding = "x" * (MAX_COMPLETION_CHARS - len(complete(RATIONALE + "\n", ANSWER)))
    at_limit = complete(RATIONALE + "\n" + padding, ANSWER)
    assert len(at_limit) == MAX_COMPLETION_CHARS
    assert score(at_limit) == ALL_ONE
    assert score(at_limit.replace("x", "xx", 1)) == ALL_ZERO


def test_guard_an_answer_nested_past_the_stack_is_no_answer_not_a_crash() -> None:
    """A 1,000-character `[[[...'a'...]]]` is a Python literal JSON cannot read, decoded one frame per
    level: a RecursionError stopped the GRPO run (and an evaluation) instead of scoring it."""
    deep = "[" * 2000 + "'a'" + "]" * 2000
    for name, fmt in FORMATS.items():
        assert fmt.parse(deep, TEXT, SCHEMA).spans == [], name
    assert score(complete(RATIONALE, deep))["f1"] == 0.0
    nested = "[" * 5000 + "]" * 5000
    assert REWARDS["reasoningie_f1"]([nested], text=[TEXT], entities=[[]], labels=[["PER"]]) == [0.0]
    assert REWARDS["reasoningie_schema"]([nested], labels=[["PER"]]) == [0.0]


def test_an_answer_copied_into_the_rationale_asserts_nothing_as_in_stage_1() -> None:
    """Consistency reads only the rationale's assertions, for the reward as for stage 1's filter: a
    copied answer (any format) adds none, so it cannot fake consistency and is not charged either."""
    from reasoningner.cot import score_sample
    from reasoningner.generation import Completion

    assert score(complete(ANSWER, ANSWER))["consistency"] == 0.0  # the copy alone asserts nothing
    restated = complete(f"{RATIONALE}\nSo the answer is: {ANSWER}", ANSWER)
    assert score(restated)["consistency"] == 1.0
    example = Example(TEXT, tuple(spans_from_dicts(GOLD)), Schema(tuple(LABELS)), "x")
    sample = score_sample(example, Completion(restated, 1), get_format("grouped_json"), "text")
    assert sample.consistency == 1.0


@pytest.mark.parametrize(
    "answer", ["", "   ", "none", "EU (organisation)", '{"entities": {"organisation": [EU]}}']
)
@pytest.mark.parametrize(
    ("text", "gold"), [(TEXT, GOLD), (NO_ENTITY_TEXT, [])], ids=["entities", "no-entities"]
)
def test_guard_no_readable_answer_gets_no_credit(answer: str, text: str, gold: list[dict[str, Any]]) -> None:
    # Not even on a sentence without entities, where "nothing found" would otherwise be F1 1.0,
    # and not with a rationale that asserts nothing, which would otherwise be consistent with it.
    for rationale in (RATIONALE, NOTHING):
        assert score(complete(rationale, answer), text, gold) == expect(0.5, 0, 0, 0, 0, 0)


def test_guard_empty_rationale_earns_no_consistency() -> None:
    # An empty rationale asserts nothing, like an empty answer: consistent, were it not guarded.
    for completion in ("<think></think>" + EMPTY, "<think>\n \n</think>" + EMPTY, EMPTY):
        assert score(completion, NO_ENTITY_TEXT, []) == expect(0.5, 1, 1, 0, 1, 1)


# --- TRL's calling convention -----------------------------------------------------------------------


def test_string_and_conversational_completions_score_the_same() -> None:
    for completion in [complete(RATIONALE, ANSWER), complete(RATIONALE, ANSWER[:30]), ANSWER, ""]:
        conversational = [{"role": "assistant", "content": completion}]
        assert score(conversational) == score(completion)
    assert score([]) == score([{"role": "assistant"}]) == score(None) == score("")
    # A tokenizer that parses responses (TRL uses transformers' parse_response then) splits the rationale off.
    parsed = [{"role": "assistant", "reasoning_content": RATIONALE, "content": ANSWER}]
    assert score(parsed) == score(complete(RATIONALE, ANSWER)) and score(parsed) != score(ANSWER)
    # parse_response fills the reasoning only after a <think> it read: no content is a completion cut
    # inside its rationale, whose draft answer must not be read as the answer (12.4 of 14 before).
    draft = f"{RATIONALE}\nDraft: {ANSWER}"
    cut = [{"role": "assistant", "reasoning_content": draft, "content": ""}]
    assert score(cut) == score(f"<think>\n{draft}") == ALL_ZERO


def test_one_batch_is_analysed_once_and_a_new_batch_never_gets_stale_scores() -> None:
    """TRL calls every component with the same column lists; a batch with other lists is read afresh,
    even when its lengths match and the previous batch's lists are reused objects elsewhere."""
    first = {
        "completions": [complete(RATIONALE, ANSWER), complete(NOTHING, EMPTY)],
        "text": [TEXT, TEXT],
        "entities": [GOLD, GOLD],
        "labels": [LABELS, LABELS],
        "output_format": ["grouped_json", "grouped_json"],
    }
    analyse.cache_clear()
    scores = {name: REWARDS[name](**first) for name in DEFAULT_WEIGHTS}
    assert analyse.cache_info().misses == 2  # the four components after the first parsed nothing
    assert scores["f1"] == [1.0, 0.0]
    second = dict(first, completions=[complete(NOTHING, EMPTY), complete(RATIONALE, ANSWER)])
    assert REWARDS["f1"](**second) == [0.0, 1.0]
    assert REWARDS["f1"](**first) == [1.0, 0.0]
    # A batch whose analysis failed is not remembered: asked again, it is not taken for the last one.
    failing = dict(first, completions=[complete(NOTHING, EMPTY), complete(RATIONALE, ANSWER)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rewards, "analyse", lambda *args: 1 / 0)
        for name in ("format", "f1"):
            with pytest.raises(ZeroDivisionError):
                REWARDS[name](**failing)


def test_a_batch_is_known_by_its_lists_not_by_their_contents() -> None:
    """Equal columns in new lists (the next step's batch, say) are read again, through `analyse`'s
    cache; only the very lists of the last batch get its analyses back."""

    def columns() -> dict[str, list[Any]]:
        return {
            "completions": [complete(RATIONALE, ANSWER)],
            "text": [TEXT],
            "entities": [GOLD],
            "labels": [LABELS],
            "output_format": ["grouped_json"],
        }

    batch = columns()
    analyse.cache_clear()
    assert REWARDS["f1"](**batch) == REWARDS["format"](**batch) == [1.0]
    assert (analyse.cache_info().hits, analyse.cache_info().misses) == (0, 1)
    assert REWARDS["f1"](**columns()) == [1.0]
    assert (analyse.cache_info().hits, analyse.cache_info().misses) == (1, 1)


def test_batches_of_dataset_rows_with_extra_columns_as_trl_passes_them() -> None:
    """Rows go through Arrow (`datasets.Dataset`) as in training; TRL passes every column but the prompt
    as a keyword list, plus keywords of its own, which the rewards ignore; each row is scored against
    its own sentence, labels and format."""
    conll = read_dataset(DATA / "conll2003_mini.txt").examples
    ai = read_dataset(DATA / "crossner_ai_mini.txt").examples
    pairs = [
        (conll[0], "grouped_json"),
        (ai[0], "xml"),
        (conll[1], "offset_json"),
        (conll[0], "grouped_json"),
    ]
    rows = list(Dataset.from_list([rl_record(e, PromptArguments(f), dataset="d") for e, f in pairs]))
    columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
    assert set(columns) >= {"text", "entities", "labels", "output_format", "dataset"}
    columns["id"] = ["a", "b", "c", "d"]  # any other dataset column
    reasoned = "\n".join(assertion(text, label) for text, label in conll[0].span_texts())
    answers = [get_format(f).render(e) for e, f in pairs]
    completions = [complete(reasoned, answers[0]), complete("", answers[1]), complete("", answers[2]), ""]
    trl_keywords = {
        "prompts": [row["prompt"] for row in rows],
        "completion_ids": [[1, 2]] * len(rows),
        "trainer_state": None,
        "log_extra": lambda *_: None,
        "log_metric": lambda *_: None,
    }
    results = {
        name: function(
            completions=[[{"role": "assistant", "content": c}] for c in completions],
            **columns,
            **trl_keywords,
        )
        for name, function in REWARDS.items()
        if not name.startswith("reasoningie_")  # the paper's read grouped JSON only: tested on their own
    }
    # Rows 2 and 3 have an empty rationale: half the format reward and no consistency.
    expected = [ALL_ONE, expect(0.5, 1, 1, 0, 1, 1), expect(0.5, 1, 1, 0, 1, 1), ALL_ZERO]
    for i, row_expected in enumerate(expected):
        # Every answer is right (or no answer): the micro F1 credit is the F1.
        micro = {"f1_micro": row_expected["f1"], "f1_micro_exact": row_expected["f1_exact"]}
        assert {name: values[i] for name, values in results.items()} == row_expected | micro, i
    assert all(type(v) is float for values in results.values() for v in values)


# --- properties ---------------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        "<think>",
        "</think>",
        "\n",
        " ",
        '{"entities": {',
        '"misc": [',
        '"organisation": ',
        '"EU"',
        '"Paris"',
        '"ORG"',
        '", "',
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        '"',
        "'",
        "```",
        "```json\n",
        '"EU" is an organisation',
        '"German" is not a misc',
        "<person>",
        "</person>",
        "[EU | organisation]",
        '[{"text": "EU", "label": "misc", "start": 0, "end": 2, "occurrence_index": 1}]',
        "x" * 50,
    ]
)
COMPLETIONS = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=4)), max_size=40).map("".join),
    st.sampled_from([c.values[0] for c in CASES]),
)
SENTENCES = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(["EU", "German", "Paris", "[", "|", "<", '"', "U.S.", ",", "é", "_"]), max_size=12
    ).map(" ".join),
)


def draw_spans(draw: st.DrawFn, text: str, labels: list[str], most: int = 3) -> set[Span]:
    """Valid spans of `text` (trimmed, distinct) with labels drawn from `labels`."""
    spans: set[Span] = set()
    for _ in range(draw(st.integers(0, most))):
        if not text.strip():
            break
        start = draw(st.integers(0, len(text) - 1))
        end = draw(st.integers(start + 1, len(text)))
        covered = text[start:end]
        if covered.strip():
            start += len(covered) - len(covered.lstrip())
            end -= len(covered) - len(covered.rstrip())
            spans.add(Span(start, end, draw(st.sampled_from(labels))))
    return spans


@st.composite
def gold_rows(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    """A sentence with valid gold spans of it, as the RL dataset's columns hold them."""
    text = draw(SENTENCES)
    return text, Example(text, tuple(draw_spans(draw, text, LABELS)), SCHEMA).entity_dicts()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion=COMPLETIONS, row=gold_rows(), fmt=st.sampled_from(list(FORMATS)))
def test_components_are_total_deterministic_and_bounded(
    completion: str, row: tuple[str, list[dict[str, Any]]], fmt: str
) -> None:
    text, gold = row
    first = score(completion, text, gold, fmt)
    assert score([{"role": "assistant", "content": completion}], text, gold, fmt) == first  # cached
    analyse.cache_clear()
    assert score(completion, text, gold, fmt) == first  # recomputed
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in first.values()), first


@settings(max_examples=200, deadline=None)
@given(row=gold_rows(), data=st.data())
def test_f1_totals_are_the_per_label_counts_summed(
    row: tuple[str, list[dict[str, Any]]], data: st.DataObject
) -> None:
    """The F1 reward counts micro totals directly (`match_totals`), not per label and then summed."""
    text, gold = row
    example = Example(text, spans_from_dicts(gold), SCHEMA)
    predicted = sorted(draw_spans(data.draw, text, [*LABELS, "ORG"], most=4))
    ungrounded = data.draw(
        st.lists(st.tuples(st.sampled_from(["EU", "eu ", "Paris", "x"]), st.sampled_from(LABELS)))
    )
    for mode in MATCH_MODES:
        summed = sum(match_counts(example, predicted, ungrounded, mode).values(), Counts())
        assert match_totals(example, predicted, ungrounded, mode) == summed


# --- registry -----------------------------------------------------------------------------------------


def test_unknown_reward_names_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown reward") as error:
        get_rewards(["f1", "accuracy"])
    assert "accuracy" in str(error.value)
    assert all(name in str(error.value) for name in REWARDS)


def grouped(**entities: list[str]) -> str:
    """A reasoned completion answering `entities` (label -> mentions) in grouped JSON."""
    answer = json.dumps({"entities": entities})
    rationale = "\n".join(
        f'"{mention}" is a {label}' for label, mentions in entities.items() for mention in mentions
    )
    return complete(rationale or NOTHING, answer)


def micro_credits(name: str, rows: list[tuple[str, str, list[dict[str, Any]]]]) -> list[float]:
    """The `name` reward of one batch of (completion, sentence, gold) rows."""
    (function,) = get_rewards([name])
    return function(
        [c for c, _, _ in rows],
        text=[t for _, t, _ in rows],
        entities=[g for _, _, g in rows],
        labels=[LABELS] * len(rows),
        output_format=["grouped_json"] * len(rows),
    )


@pytest.mark.parametrize("name", ["f1_micro", "f1_micro_exact"])
def test_micro_f1_credit_by_hand(name: str) -> None:
    """Batch TP 5, FP 2, FN 7 (the unreadable answer misses its 3), so J = 5 / 14: a found entity earns
    1 / gold count, an invented one costs J / gold count (J with no gold, where saying nothing is 1)."""
    rows = [
        (complete(RATIONALE, ANSWER), TEXT, GOLD),  # 3 found
        (grouped(organisation=["EU"]), TEXT, GOLD),  # 1 found, 2 missed
        (grouped(organisation=["EU"], misc=["lamb"]), TEXT, GOLD),  # 1 found, 1 invented, 2 missed
        ("<think>\nhm\n</think>\n{{{", TEXT, GOLD),  # no answer: 3 missed
        (complete(NOTHING, EMPTY), NO_ENTITY_TEXT, []),
        (grouped(misc=["Thursday"]), NO_ENTITY_TEXT, []),  # 1 invented
    ]
    j = 5 / 14
    assert micro_credits(name, rows) == pytest.approx([1, 1 / 3, (1 - j) / 3, 0, 1, 1 - j])


def test_micro_f1_credit_ranks_answers_as_the_batch_micro_f1_does() -> None:
    """Stating 4 wrong entities to find 1 more right one pays when the batch finds little (an entity
    right more often than F1 / 2 raises micro F1) and costs when it finds much; per-sentence F1
    prefers the cautious answer in both batches."""
    cautious = grouped(organisation=["EU"])  # 1 found, 0 invented
    bold = grouped(organisation=["EU"], misc=["German", "lamb", "rejects", "boycott", "call"])  # 2, 4
    wrong = grouped(person=["EU"], location=["German"])
    right = complete(RATIONALE, ANSWER)

    def micro_f1(completions: list[str]) -> float:
        analyses = [analyse(c, TEXT, tuple(LABELS), "grouped_json") for c in completions]
        return sum((entity_counts(a, TEXT, GOLD, LABELS, "text") for a in analyses), Counts()).f1

    preferred = {}
    for batch, context in {"finds little": [wrong] * 3 + [right], "finds much": [right] * 3}.items():
        credit_cautious, credit_bold = micro_credits(
            "f1_micro", [(c, TEXT, GOLD) for c in [*context, cautious, bold]]
        )[-2:]
        assert (credit_bold > credit_cautious) == (
            micro_f1([*context, bold]) > micro_f1([*context, cautious])
        )
        preferred[batch] = "bold" if credit_bold > credit_cautious else "cautious"
    assert preferred == {"finds little": "bold", "finds much": "cautious"}
    f1_cautious, f1_bold = micro_credits("f1", [(c, TEXT, GOLD) for c in [cautious, bold]])
    assert f1_cautious > f1_bold


def test_micro_f1_credit_pays_no_answer_no_more_than_the_worst_readable_one() -> None:
    """A readable answer with only invented entities has a negative credit (J = 3 / 11 here); no answer
    gets that same floor, so the composite reward still pays the readable answer more."""
    wrong = grouped(person=["EU"], location=["German"])  # 0 found, 2 invented
    unreadable = "<think>\nhm\n</think>\n{{{"
    rows = [(c, TEXT, GOLD) for c in [complete(RATIONALE, ANSWER), wrong, unreadable]]
    assert micro_credits("f1_micro", rows) == pytest.approx([1, -2 / 11, -2 / 11])
    names = ["format", "f1_micro", "consistency", "schema", "grounding"]
    totals = [
        sum(default_weight(n) * r for n, r in zip(names, scores, strict=True))
        for scores in zip(*(micro_credits(n, rows) for n in names), strict=True)
    ]
    assert totals[1] > totals[2]


def test_rewards_that_pay_a_rationale_are_named_for_an_answer_only_model() -> None:
    rationale = complete(RATIONALE, ANSWER)
    assert score(rationale)["format"] > score(ANSWER)["format"]  # what the warning is about
    assert score(rationale)["consistency"] > score(ANSWER)["consistency"]
    warning = answer_only_warning(["format", "f1", "consistency"], reasoning=False)
    assert warning is not None and "['format', 'consistency'] pay a rationale" in warning
    assert answer_only_warning(["format", "f1", "consistency"], reasoning=True) is None
    assert answer_only_warning(["f1", "schema"], reasoning=False) is None


def test_registry_names_weights_and_function_names() -> None:
    assert set(DEFAULT_WEIGHTS) <= set(REWARDS)
    assert get_rewards(list(DEFAULT_WEIGHTS)) == [REWARDS[name] for name in DEFAULT_WEIGHTS]
    # TRL logs each function as rewards/<__name__>: two components under one name would be merged.
    names = [function.__name__ for function in REWARDS.values()]
    assert len(set(names)) == len(names)
    assert REWARDS["f1"].__name__ == "f1_reward" and REWARDS["f1_exact"].__name__ == "f1_exact_reward"
    assert REWARDS["f1_micro"].__name__ == "f1_micro_reward"
    assert REWARDS["f1_micro_exact"].__name__ == "f1_micro_exact_reward"
    # A recipe without weights: every F1 variant stands in for f1 and weighs what it weighs.
    assert [default_weight(n) for n in ["format", "f1", "f1_exact", "f1_micro", "f1_micro_exact"]] == [
        1,
        10,
        10,
        10,
        10,
    ]
    # The paper's F1 weighs 10 against its schema's 1 (grpo.py), its recipe's weights left out or not.
    assert [default_weight(n) for n in ["reasoningie_f1", "reasoningie_schema"]] == [10, 1]


# --- dataset sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "total", "cap", "expected"),
    [
        ([50, 30, 20], 10, None, [5, 3, 2]),  # exact shares
        ([10, 20, 30], 7, None, [1, 2, 4]),  # shares 1.17, 2.33, 3.5: the largest remainder gets the 7th
        ([1, 1, 1], 2, None, [1, 1, 0]),  # equal remainders: the earlier dataset first
        ([4, 3], None, None, [4, 3]),  # no total: everything
        ([4, 3], 100, None, [4, 3]),  # more asked than there is
        ([100, 10], None, 50, [50, 10]),  # the cap binds alone
        ([100, 10], 25, 20, [20, 3]),  # shares 22.7 and 2.3: the first capped at 20, nothing moves over
        ([0, 5], 3, None, [0, 3]),
    ],
)
def test_proportional_sizes(
    sizes: list[int], total: int | None, cap: int | None, expected: list[int]
) -> None:
    assert proportional_sizes(sizes, total, cap) == expected


@given(sizes=st.lists(st.integers(0, 500), min_size=1, max_size=6), data=st.data())
def test_proportional_sizes_add_up_and_respect_the_cap(sizes: list[int], data: st.DataObject) -> None:
    total = data.draw(st.integers(0, max(sum(sizes) - 1, 0)))
    takes = proportional_sizes(sizes, total, None)
    assert sum(takes) == min(total, sum(sizes))
    for take, size in zip(takes, sizes, strict=True):
        assert take <= size and abs(take - total * size / max(sum(sizes), 1)) < 1
    cap = data.draw(st.integers(0, 500))
    capped = proportional_sizes(sizes, total, cap)
    assert sum(capped) <= total and all(t <= min(s, cap) for t, s in zip(capped, sizes, strict=True))


def test_sample_mixture_is_seeded_proportional_and_without_duplicates() -> None:
    datasets = [
        [Example(f"first sentence {i} .", (), SCHEMA) for i in range(40)],
        [Example(f"second sentence {i} .", (), SCHEMA) for i in range(20)],
    ]
    drawn = sample_mixture(datasets, 12, None, seed=3)
    assert [len(d) for d in drawn] == [8, 4]
    assert drawn == sample_mixture(datasets, 12, None, seed=3)
    assert any(sample_mixture(datasets, 12, None, seed=s) != drawn for s in range(4, 8))
    for examples, source in zip(drawn, datasets, strict=True):
        assert len(set(examples)) == len(examples)
        assert examples == sorted(examples, key=source.index)  # original order kept
    assert [len(d) for d in sample_mixture(datasets, None, 5, seed=0)] == [5, 5]


def test_rl_prompts_over_two_files_keep_gold_labels_format_and_dataset() -> None:
    paths = [DATA / "conll2003_mini.txt", DATA / "crossner_ai_mini.txt"]
    datasets = [read_dataset(path) for path in paths]
    prompts = rl_prompts([str(p) for p in paths], PromptArguments("xml", descriptions=False))
    assert len(prompts) == sum(len(d.examples) for d in datasets) == 7
    examples = [(d, e) for d in datasets for e in d.examples]
    for prompt, (dataset, example) in zip(prompts, examples, strict=True):
        assert prompt["text"] == example.text
        assert prompt["entities"] == example.entity_dicts()
        assert prompt["labels"] == list(dataset.schema.labels)
        assert prompt["output_format"] == "xml"
        assert prompt["dataset"] == dataset.name
        [message] = prompt["prompt"]
        assert message["role"] == "user" and example.text in message["content"]
        assert all(f"- {label}" in message["content"] for label in dataset.schema.labels)
    # 4 and 3 sentences, 4 asked: shares 2.29 and 1.71, the larger remainder gets the fourth.
    schemas: list[Schema] = []
    sampled = rl_prompts([str(p) for p in paths], PromptArguments(), total=4, seed=1, schemas=schemas)
    assert [list(schema.labels) for schema in schemas] == [p["labels"] for p in sampled]
    assert [p["dataset"] for p in sampled].count("conll2003_mini") == 2
    assert [p["dataset"] for p in sampled].count("crossner_ai_mini") == 2
    first = rl_prompts([str(p) for p in paths], PromptArguments(), DataArguments(limit=1))
    assert [p["text"] for p in first] == [d.examples[0].text for d in datasets]
    # The policy's training order, for the file with exactly its labels; the other keeps its own.
    trained = list(reversed(datasets[0].schema.labels))
    ordered = rl_prompts(
        [str(p) for p in paths],
        PromptArguments(),
        DataArguments(limit=1),
        trained=PromptContract(PromptArguments(), trained),
    )
    assert [p["labels"] for p in ordered] == [trained, list(datasets[1].schema.labels)]
    assert "\n".join(f"- {label}" for label in trained) in ordered[0]["prompt"][0]["content"]
    # A label the data leave undescribed is described as in the policy's training prompts.
    described = PromptArguments(descriptions=True)
    contract = PromptContract(described, trained, descriptions={trained[0]: "as trained"})
    asked = rl_prompts([str(p) for p in paths], described, DataArguments(limit=1), trained=contract)
    assert f"- {trained[0]}: as trained\n" in asked[0]["prompt"][0]["content"]


# --- GRPO smoke run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory: Callable[..., Path], conll_mini_texts: tuple[str, ...]) -> Path:
    """A random-init tiny model: it writes junk, which is all a smoke test of the plumbing needs."""
    return tiny_model_factory(conll_mini_texts * 20, vocab_size=512, num_layers=2)


def test_grpo_smoke_run_of_the_tiny_cpu_recipe(tiny_model: Path, tmp_path: Path) -> None:
    """Two GRPO steps; the policy's prompt contract decides what is left unset (the recipe sets no
    prompt key), a contradicting format given wins with a warning, and the RL model carries the result."""
    policy = tmp_path / "sft"
    shutil.copytree(tiny_model, policy)
    # SFT also taught "product", which the GRPO data lacks: the RL model still carries it.
    sft_contract = PromptContract(
        PromptArguments("xml", reasoning=False, compact_prompt=True),
        ["person", "product"],
        descriptions={"product": "goods"},
        max_new_tokens=900,
    )
    sft_contract.save(policy)
    out = tmp_path / "rl"
    overrides = {
        "model_name_or_path": policy,
        "output_dir": out,
        "max_steps": 2,
        "total": 8,
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "max_completion_length": 16,
        "save_strategy": "no",
        "output_format": "grouped_json",
    }
    command = [sys.executable, str(ROOT / "stages" / "rl.py"), "--config", "recipes/tiny-cpu/rl.yaml"]
    command += [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    resolved = PromptArguments("grouped_json", reasoning=False, descriptions=True, compact_prompt=True)
    assert f"rl: 8 prompts, {resolved}, rewards format×1, f1×10, consistency×1, schema×1, grounding×1" in log
    assert "output_format='grouped_json' contradicts the prompt contract" in log
    saved = PromptContract.load(out)
    assert saved.prompt == resolved and saved.labels[:2] == ["person", "product"]
    assert sorted(saved.labels) == ["location", "misc", "organisation", "person", "product"]
    assert saved.descriptions["product"] == "goods"
    assert saved.max_new_tokens == 16  # the policy learnt to finish within max_completion_length, not SFT's
    step_logs = re.findall(r"\{'loss'.*?\}", log)
    assert len(step_logs) == 2, log[-5000:]
    for name in ("format_reward", "f1_reward", "consistency_reward", "schema_reward", "grounding_reward"):
        assert all(f"'rewards/{name}/mean'" in step for step in step_logs), name


# --- ReasoningIE's own rewards ------------------------------------------------------------------------


def paper_process_completion(completion: str) -> str:
    """ReasoningIE's `rner.utils.process_completion` as written (its regexes), an error as no answer."""
    if "<think>" in completion or "</think>" in completion:
        completion = re.sub("<think>.*?</think>", "", completion, flags=re.S)
        completion = completion.replace("<think>", "").replace("</think>", "")
    if "<answer>" in completion:
        found = re.findall("<answer>(.*?)</answer>", completion, flags=re.S)
        if not found:
            return ""  # its code raises here
        completion = found[0]
    if "```json" in completion:
        found = re.findall("```json(.*?)```", completion, re.S)
        if not found:
            return ""  # ... and here
        completion = found[0]
    return completion.strip()


@given(
    st.lists(
        st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "```json", "```", "x", " ", "\n"])
    )
)
def test_the_answer_is_read_as_the_paper_s_regexes_read_it(pieces: list[str]) -> None:
    """By string search, linear: its regexes rescanned to the end from every unclosed tag (seconds for a
    completion of repeated tags, every reward of a step)."""
    completion = "".join(pieces)
    assert reasoningie_answer(completion) == paper_process_completion(completion)


PARIS = "The Paris office opened ."
PARIS_GOLD = [{"start": 4, "end": 9, "label": "location"}]


@pytest.mark.parametrize(
    ("completion", "gold", "f1", "schema"),
    [
        # Both empty: F1 0 (its safe division), schema 1: no signal between saying nothing and anything valid.
        ('<think>\nnone\n</think>\n{"entities": {}}', [], 0.0, 1.0),
        ('{"entities": {"location": ["Paris"]}}', [], 0.0, 1.0),
        (
            '<think>\n"Paris" is a location\n</think>\n{"entities": {"location": ["Paris"]}}',
            PARIS_GOLD,
            1.0,
            1.0,
        ),
        # A fenced answer, a capitalised label and a text with an article and punctuation are read.
        (
            '<think>\nx\n</think>\n```json\n{"entities": {"Location": ["the Paris."]}}\n```',
            PARIS_GOLD,
            1.0,
            1.0,
        ),
        ('{"entities": {"city": ["Paris"]}}', PARIS_GOLD, 0.0, 0.0),  # a label outside the schema
        ("{'entities': {'location': ['Paris']}}", PARIS_GOLD, 0.0, 0.0),  # not JSON
        ('{"entities": ["Paris"]}', PARIS_GOLD, 0.0, 0.0),  # its code fails on a list
        ('{"entities": {"location": ["Paris", "office"]}}', PARIS_GOLD, 2 / 3, 1.0),
        # <answer> never closed: its code raises (the F1 reward's run crashes, the schema reward pays 0).
        ('<answer>{"entities": {"location": ["Paris"]}}', PARIS_GOLD, 0.0, 0.0),
        ('<answer>{"entities": {"location": ["Paris"]}}</answer> and more', PARIS_GOLD, 1.0, 1.0),
    ],
)
def test_reasoningie_rewards_pay_what_the_paper_s_functions_pay(
    completion: str, gold: list[dict], f1: float, schema: float
) -> None:
    """ReasoningIE's grpo.py f1_reward and schema_reward (rner/metric.py, rner/protocol.py, rner/utils.py)
    on the same answers, for the recipes that reproduce the paper."""
    rewards = get_rewards(["reasoningie_f1", "reasoningie_schema"])
    columns = {
        "text": [PARIS],
        "entities": [gold],
        "labels": [["location", "person"]],
        "output_format": ["grouped_json"],
    }
    assert [r([completion], **columns)[0] for r in rewards] == [pytest.approx(f1), schema]
    assert [r([[{"role": "assistant", "content": completion}]], **columns)[0] for r in rewards] == [
        pytest.approx(f1),
        schema,
    ]  # conversational completions alike
