"""Evaluation and prediction: hand-computed scores, junk generations, error analysis, probes, offsets.

Model outputs are scripted (a `Generator` that answers from a table) except in the two runs that go
through the real tiny model: the `predict` CLI and `stages/eval.py` end to end.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reasoningner.cli import main
from reasoningner.configs import EvalArguments, GenerationArguments, PromptArguments, PromptContract
from reasoningner.evaluate import EvalSet, error_counts, evaluate, load_items, probe_mapping
from reasoningner.files import write_lines
from reasoningner.formats import FORMATS, ParseResult, Problem, get_format
from reasoningner.generation import (
    Completion,
    Conversation,
    ConversationFailed,
    Generator,
    Outcome,
    SamplingConfig,
)
from reasoningner.metrics import Counts, Scorer, match_counts
from reasoningner.predict import NERModel
from reasoningner.readers import Dataset, read_dataset, write_jsonl
from reasoningner.results import ErrorCounts, Evaluation, log_wandb_tables, spread_sample
from reasoningner.score import score_files
from reasoningner.spans import Example, Schema, Span
from tests.scripts import load_stage

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
SCHEMA = Schema(("person", "location", "DNA", "protein", "cell_type"))


class Scripted(Generator):
    """Answers each conversation with `answer(sentence, prompt)`; records every prompt it is asked."""

    name = "scripted"

    def __init__(self, answer: Callable[[str, str], str]) -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def _generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
    ) -> Iterator[tuple[int, list[Completion]]]:
        for index, conversation in enumerate(conversations):
            prompt = conversation[-1]["content"]
            self.prompts.append(prompt)
            sentence = prompt.rsplit("Sentence: ", 1)[1]
            yield index, [Completion(self.answer(sentence, prompt), 3)]


def from_table(outputs: dict[str, str]) -> Scripted:
    return Scripted(lambda sentence, _: outputs[sentence])


def write_set(path: Path, examples: list[tuple[str, list[tuple[int, int, str]]]]) -> Path:
    write_jsonl(
        Dataset(
            [
                Example(t, tuple(Span(*s) for s in spans), SCHEMA, f"{path.stem}-{i}")
                for i, (t, spans) in enumerate(examples)
            ],
            SCHEMA,
            path.stem,
        ),
        path,
    )
    return path


def eval_args(tmp_path: Path, datasets: list, **overrides) -> EvalArguments:
    return EvalArguments(datasets=datasets, output_dir=str(tmp_path / "out"), **overrides)


def run_eval(args: EvalArguments, generator: Generator, output_format: str = "grouped_json") -> Evaluation:
    """`evaluate` with a scripted generator in place of the backend, greedy, the default prompt."""
    return evaluate(args, PromptArguments(output_format), GenerationArguments(), generator=generator)


# --- scores: hand-computed on nested and repeated entities -------------------------------------------

NESTED = "IL-2 gene expression in T cells ."
REPEATED = "Paris said Paris is nice ."
MIXED = "Acme hired Bob in Rome ."
EMPTY = "Nothing here ."
TWICE = "Bob met Bob ."
OUTPUTS = {
    # DNA and protein right (nested), cell_type cut short: a boundary error.
    NESTED: '<think>x</think>{"entities": {"DNA": ["IL-2 gene"], "protein": ["IL-2"], "cell_type": ["T"]}}',
    # "Paris" listed once under location is its first occurrence, which gold calls a person.
    REPEATED: '<think>x</think>{"entities": {"location": ["Paris"]}}',
    # Bob right, Alice invented, Acme spurious, Rome missed.
    MIXED: '<think>x</think>{"entities": {"person": ["Bob", "Alice"], "location": ["Acme"]}}',
    EMPTY: "<think>cut off before the answer",
    # Truncated, but both complete mentions are kept.
    TWICE: '<think>x</think>{"entities": {"person": ["Bob", "Bob"',
}


@pytest.fixture
def hand_sets(tmp_path: Path) -> list[dict]:
    first = write_set(
        tmp_path / "first.jsonl",
        [
            (NESTED, [(0, 9, "DNA"), (0, 4, "protein"), (24, 31, "cell_type")]),
            (REPEATED, [(0, 5, "person"), (11, 16, "location")]),
        ],
    )
    second = write_set(
        tmp_path / "second.jsonl",
        [
            (MIXED, [(11, 14, "person"), (18, 22, "location")]),
            (EMPTY, []),
            (TWICE, [(0, 3, "person"), (8, 11, "person")]),
        ],
    )
    return [{"path": str(first), "name": "first"}, {"path": str(second), "name": "second"}]


def test_scores_match_hand_computed_numbers_and_the_scorer(tmp_path: Path, hand_sets: list[dict]) -> None:
    evaluation = run_eval(eval_args(tmp_path, hand_sets), from_table(OUTPUTS))
    exact, text = evaluation.reports["normal"]["exact"], evaluation.reports["normal"]["text"]
    # exact: first tp 2 (DNA, protein) fp 2 (T, Paris@0 as location) fn 3 (T cells, Paris person, Paris@11)
    #        second tp 3 (Bob, Bob, Bob) fp 2 (Alice, Acme) fn 1 (Rome)
    assert exact.datasets["first"].micro == Counts(2, 2, 3)
    assert exact.datasets["second"].micro == Counts(3, 2, 1)
    # text: first tp 3 (il-2 gene, il-2, paris/location) fp 1 (t) fn 2 (t cells, paris/person)
    #       second tp 2 (bob, twice one key) fp 2 (alice, acme) fn 1 (rome)
    assert text.datasets["first"].micro == Counts(3, 1, 2)
    assert text.datasets["second"].micro == Counts(2, 2, 1)
    assert exact.datasets["first"].micro.f1 == pytest.approx(4 / 9)  # P 1/2, R 2/5
    assert exact.average.f1 == pytest.approx((4 / 9 + 2 / 3) / 2)
    assert text.average.f1 == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert exact.datasets["first"].per_label["cell_type"] == Counts(0, 1, 1)
    assert text.datasets["first"].per_label["location"] == Counts(1, 0, 0)

    # The same parses fed to `metrics.Scorer` directly give identical reports.
    for mode in ("exact", "text"):
        scorer = Scorer(mode)
        for entry in hand_sets:
            for example in read_dataset(entry["path"]).examples:
                parsed = get_format("grouped_json").parse(OUTPUTS[example.text], example.text, example.schema)
                scorer.add(example, parsed.spans, parsed.ungrounded, entry["name"])
        assert scorer.report().to_dict() == evaluation.reports["normal"][mode].to_dict()

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["primary_mode"] == "text"
    assert results["scores"]["exact"] == exact.to_dict()
    assert results["errors"]["first"] | {"problems": {}} == {
        "outputs": 2, "format_failures": 0, "no_answer": 0, "cut_off": 0, "hallucinated": 0,
        "boundary_errors": 1, "type_errors": 1, "missed": 1, "spurious": 0, "problems": {},
    }  # fmt: skip
    second = results["errors"]["second"]
    assert (second["format_failures"], second["no_answer"], second["hallucinated"]) == (2, 1, 1)
    assert (second["spurious"], second["missed"], second["boundary_errors"], second["type_errors"]) == (
        1,
        1,
        0,
        0,
    )
    assert second["problems"] == {"truncated": 1, "unclosed_think": 1, "ungrounded": 1}

    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## text-pair F1 (primary)" in markdown and "## exact-span F1" in markdown
    assert "| first | 75.00 | 60.00 | 66.67 |" in markdown  # text P 3/4, R 3/5
    lines = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert [line["text"] for line in lines] == [NESTED, REPEATED, MIXED, EMPTY, TWICE]
    mixed = lines[2]
    assert mixed["output"] == OUTPUTS[MIXED]
    assert mixed["ungrounded"] == [{"text": "Alice", "label": "person"}]
    assert mixed["gold"] == [
        {"start": 11, "end": 14, "label": "person", "text": "Bob"},
        {"start": 18, "end": 22, "label": "location", "text": "Rome"},
    ]
    assert {"start": 0, "end": 4, "label": "location", "text": "Acme"} in mixed["predicted"]
    assert [p["kind"] for p in lines[3]["problems"]] == ["unclosed_think"]


def test_compat_puts_the_papers_counting_in_the_results_as_score_counts_the_same_outputs(
    tmp_path: Path, hand_sets: list[dict]
) -> None:
    """`compat: reasoningie` in an evaluation recipe reports ReasoningNER's Table 1 counting (it took
    `reasoningner score --compat` over generations.jsonl by hand); exact scores stay ours."""
    ours = run_eval(eval_args(tmp_path / "ours", hand_sets), from_table(OUTPUTS))
    paper = run_eval(eval_args(tmp_path, hand_sets, compat="reasoningie"), from_table(OUTPUTS))
    generations = tmp_path / "out" / "generations.jsonl"
    scored = score_files([(Path(entry["path"]), generations) for entry in hand_sets], compat="reasoningie")
    assert paper.reports["normal"]["text"].to_dict() == scored.reports["normal"]["text"].to_dict()
    assert paper.reports["normal"]["text"].to_dict() != ours.reports["normal"]["text"].to_dict()
    assert paper.reports["normal"]["exact"].to_dict() == ours.reports["normal"]["exact"].to_dict()
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## text-pair F1 (primary), as reasoningie counts" in markdown
    assert "counted as reasoningie's scripts count it" in markdown
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["compat"] == "reasoningie"
    assert results["counting"] == {"text": "reasoningie", "exact": "ours"}
    # In W&B a figure counted the paper's way never shares a column with ours; each set's F1 is a summary.
    run = SimpleNamespace(summary={}, log=lambda tables: None)
    log_wandb_tables(run, paper, generations)
    text = paper.reports["normal"]["text"]
    assert run.summary["text[reasoningie]/avg_f1"] == text.average.f1 and "text/avg_f1" not in run.summary
    assert run.summary["text[reasoningie]/first/f1"] == text.datasets["first"].micro.f1
    assert run.summary["exact/avg_f1"] == paper.reports["normal"]["exact"].average.f1
    assert [column.header for column in paper.table().columns][2] == "text[reasoningie] P"
    # LLMs4NER's scripts read whole outputs of models that answer at once.
    answer_only = {sentence: output.split("</think>")[-1] for sentence, output in OUTPUTS.items()}
    llms4ner = evaluate(
        eval_args(tmp_path / "l", hand_sets, compat="llms4ner"),
        PromptArguments("grouped_json", reasoning=False),
        GenerationArguments(),
        generator=from_table(answer_only),
    )
    theirs = score_files(
        [(Path(entry["path"]), tmp_path / "l" / "out" / "generations.jsonl") for entry in hand_sets],
        compat="llms4ner",
    )
    assert llms4ner.reports["normal"]["exact"].to_dict() == theirs.reports["normal"]["exact"].to_dict()
    assert llms4ner.reports["normal"]["exact"].to_dict() != ours.reports["normal"]["exact"].to_dict()
    unasked = Scripted(lambda sentence, _: pytest.fail("asked before its answers were known to be countable"))
    with pytest.raises(ValueError, match="reads grouped_json answers"):
        run_eval(eval_args(tmp_path / "xml", hand_sets, compat="reasoningie"), unasked, "xml")
    with pytest.raises(ValueError, match="a model that reasons first would be scored on its rationale"):
        run_eval(eval_args(tmp_path / "x", hand_sets, compat="llms4ner"), unasked)
    with pytest.raises(ValueError, match="compat 'paper'"):
        eval_args(tmp_path, hand_sets, compat="paper")


def test_compat_reasoningie_leaves_out_gold_misc_by_its_dataset_label_under_a_probe(tmp_path: Path) -> None:
    """ReasoningIE's reader drops gold misc: under a probe, misc renamed B is still misc, and person renamed
    misc is still a person; per-type rows keep the schema's names (its keys lower-case them)."""
    path = tmp_path / "m.jsonl"
    entities = [{"start": 0, "end": 3, "label": "Person"}, {"start": 10, "end": 16, "label": "misc"}]
    record = {"text": "Bob likes Python .", "labels": ["Person", "misc"], "entities": entities}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    args = eval_args(
        tmp_path, [{"path": str(path), "name": "m"}], compat="reasoningie", probes=["opaque", "shuffled"]
    )
    evaluation = run_eval(args, Scripted(lambda sentence, _: '{"entities": {}}'))
    for variant in ("normal", "opaque", "shuffled"):
        text = evaluation.reports[variant]["text"].datasets["m"]
        assert text.micro == Counts(0, 0, 1), variant  # Bob missed; Python, gold misc, left out
    assert list(evaluation.reports["normal"]["text"].datasets["m"].per_label) == ["Person"]
    # Renamed by the recipe, misc is still the data's misc.
    renamed = {"path": str(path), "name": "m", "labels": {"Person": "Person", "misc": "other thing"}}
    args = eval_args(tmp_path / "r", [renamed], compat="reasoningie", probes=["opaque", "shuffled"])
    evaluation = run_eval(args, Scripted(lambda sentence, _: '{"entities": {}}'))
    for variant in ("normal", "opaque", "shuffled"):
        assert evaluation.reports[variant]["text"].datasets["m"].micro == Counts(0, 0, 1), variant


def test_primary_mode_exact_leads(tmp_path: Path, hand_sets: list[dict]) -> None:
    evaluation = run_eval(eval_args(tmp_path, hand_sets, primary_mode="exact"), from_table(OUTPUTS))
    markdown = evaluation.to_markdown()
    assert markdown.index("## exact-span F1 (primary)") < markdown.index("## text-pair F1")
    assert evaluation.table().columns[2].header == "exact P"


# --- robustness: junk generations never crash evaluation ---------------------------------------------

JUNK: list[Callable[[random.Random, str], str]] = [
    lambda rng, s: "".join(rng.choice("{}[]<>\"':,|/ \nabcXYZ0123") for _ in range(rng.randrange(200))),
    lambda rng, s: f'<think>"{s.split()[0]}" is a person</think>{{"entities": {{"person": ["{s}"]}}}}'[
        : rng.randrange(1, 60)
    ],
    lambda rng, s: "a" * 50_000 if rng.random() < 0.5 else '{"entities": {"person": [' + '"x", ' * 1_000,
    lambda rng, s: (
        "<think>ü😀\u200b\u202e\x00\ud800</think>" + rng.choice(["😀", "\ud83d", "ß", "\x00"]) * 50
    ),
    lambda rng, s: (
        "<think><think></think></think><person><person>" + s + "</person>[[ | person]]]</location>"
    ),
    lambda rng, s: "[" * 5000 + "]" * rng.randrange(5000),
    lambda rng, s: '{"entities": {"person": [1, null, {"a": 2}, "", "   "], "": ["x"], "3": 4}}',
    lambda rng, s: "```json\n{'entities': {'person': ['" + s.split()[-1] + "',],}}\n```",
    lambda rng, s: (
        '[{"text": "' + s + '", "label": "person", "start": "x", "end": -5, "occurrence_index": 99}]'
    ),
    lambda rng, s: "",
    lambda rng, s: "</think>" * 3 + "<think>",
    # Nearly right, so that spans come out of every format's parser too.
    lambda rng, s: f'{{"entities": {{"person": ["{s.split()[0]}", "{s.split()[-1].upper()}"]}}}}',
    lambda rng, s: f"[{s.split()[0]} | person] {s}",
]


@pytest.mark.parametrize(
    ("output_format", "limit"), [("grouped_json", 1000), *((f, 100) for f in FORMATS if f != "grouped_json")]
)
def test_junk_generations_never_crash(tmp_path: Path, output_format: str, limit: int) -> None:
    rng = random.Random(0)
    generator = Scripted(lambda sentence, _: rng.choice(JUNK)(rng, sentence))
    args = eval_args(
        tmp_path,
        [
            {
                "path": str(ROOT / "data" / "conll2003" / "train-slice.txt"),
                "labels": ["person", "location", "organisation", "misc"],
            }
        ],
        limit=limit,
    )
    evaluation = run_eval(args, generator, output_format)
    errors = evaluation.errors["normal"]["conll2003-train"]
    assert errors.outputs == limit
    assert errors.format_failures > limit / 2
    lines = (tmp_path / "out" / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == limit
    records = [json.loads(line) for line in lines]
    assert any(record["predicted"] for record in records)
    for record in records:
        for span in record["predicted"]:
            assert record["text"][span["start"] : span["end"]] == span["text"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["generation"]["sentences"] == limit


# --- error analysis -----------------------------------------------------------------------------------


def parse_result(spans: list[tuple[int, int, str]], ungrounded=(), problems=()) -> ParseResult:
    return ParseResult([Span(*s) for s in spans], list(ungrounded), [Problem(k, "") for k in problems])


GOLD = Example(
    "IL-2 gene and IL-2 in Bob Smith cells .",
    (Span(0, 9, "DNA"), Span(0, 4, "protein"), Span(14, 18, "protein"), Span(22, 31, "person")),
    SCHEMA,
)


@pytest.mark.parametrize(
    ("predicted", "expected"),
    [
        ([(0, 9, "DNA"), (0, 4, "protein")], dict(missed=2)),
        ([(14, 18, "DNA")], dict(type_errors=1, missed=3)),  # gold offsets, other label
        ([(22, 25, "person")], dict(boundary_errors=1, missed=3)),  # too short
        ([(14, 24, "protein")], dict(boundary_errors=1, missed=3)),  # too long, only the protein counts
        ([(22, 25, "location")], dict(spurious=1, missed=4)),  # other offsets and other label
        ([(32, 37, "cell_type")], dict(spurious=1, missed=4)),  # nothing there
        ([(0, 4, "DNA")], dict(type_errors=1, missed=3)),  # nested: the inner gold's offsets, outer's label
        # a span stated twice (`score` keeps repeats) is one false positive, as the metrics count it
        ([(32, 37, "cell_type"), (32, 37, "cell_type")], dict(spurious=1, missed=4)),
    ],
)
def test_error_categories(predicted: list, expected: dict) -> None:
    counts = error_counts(GOLD, parse_result(predicted))
    assert counts == ErrorCounts(outputs=1, **expected)


def test_hallucinations_are_distinct_keys_and_format_failures_ignore_content_problems() -> None:
    ungrounded = [("Alice", "person"), ("alice", "person"), ("Alice", "location")]
    counts = error_counts(GOLD, parse_result([], ungrounded, ["ungrounded", "unknown_label", "duplicate"]))
    assert (counts.hallucinated, counts.format_failures, counts.no_answer) == (2, 0, 0)
    assert error_counts(GOLD, parse_result([], (), ["code_fence"])).format_failures == 1
    no_answer = error_counts(GOLD, parse_result([], (), ["no_answer"]))
    assert (no_answer.format_failures, no_answer.no_answer, no_answer.missed) == (1, 1, 4)
    summed = counts + no_answer
    assert summed.outputs == 2 and summed.problems["no_answer"] == 1 and summed.missed == 8


spans = st.builds(
    lambda start, length, label: Span(start, start + length, label),
    st.integers(0, 30),
    st.integers(1, 8),
    st.sampled_from(["person", "location", "protein"]),
)


@settings(max_examples=150, deadline=None)
@given(
    gold=st.sets(spans, max_size=6),
    predicted=st.sets(spans, max_size=6),
    invented=st.lists(st.sampled_from(["x", "X", "y"]), max_size=3),
)
def test_categories_add_up_to_the_exact_false_positives(
    gold: set[Span], predicted: set[Span], invented: list[str]
) -> None:
    example = Example("x" * 40, tuple(gold), SCHEMA)
    parsed = parse_result([(s.start, s.end, s.label) for s in predicted], [(t, "person") for t in invented])
    counts = error_counts(example, parsed)
    total = sum(match_counts(example, parsed.spans, parsed.ungrounded, "exact").values(), Counts())
    assert total.fp == counts.type_errors + counts.boundary_errors + counts.spurious + counts.hallucinated
    assert counts.missed <= total.fn


# --- memorization probe ---------------------------------------------------------------------------------


def test_probe_mappings_are_opaque_letters_or_seeded_derangements() -> None:
    labels = ["person", "organisation", "location", "misc"]
    assert probe_mapping(labels, "opaque") == {
        "person": "A",
        "organisation": "B",
        "location": "C",
        "misc": "D",
    }
    assert list(probe_mapping([f"l{i}" for i in range(28)], "opaque").values())[-3:] == ["Z", "AA", "AB"]
    for seed in range(20):
        shuffled = probe_mapping(labels, "shuffled", seed)
        assert shuffled == probe_mapping(labels, "shuffled", seed)  # deterministic
        assert sorted(shuffled.values()) == sorted(labels)
        assert all(new != old for old, new in shuffled.items())
    assert len({tuple(probe_mapping(labels, "shuffled", seed).values()) for seed in range(20)}) > 1
    assert probe_mapping(["only"], "shuffled") == {"only": "only"}
    with pytest.raises(ValueError, match="unknown probe"):
        probe_mapping(labels, "reversed")


def test_probes_relabel_gold_consistently_and_descriptions_stay_with_the_type(tmp_path: Path) -> None:
    args = eval_args(
        tmp_path, [{"path": str(DATA / "genia_mini.json"), "probes": ["opaque", "shuffled"]}], probe_seed=3
    )
    items, datasets, label_maps = load_items(args)
    normal = [item for item in items if item.variant == "normal"]
    source = normal[0].example.schema
    for probe in ("opaque", "shuffled"):
        mapping = label_maps[probe]["genia_mini"]
        probed = [item for item in items if item.variant == probe]
        assert [item.example.text for item in probed] == [item.example.text for item in normal]
        for before, after in zip(normal, probed, strict=True):
            assert set(after.example.spans) == {
                Span(s.start, s.end, mapping[s.label]) for s in before.example.spans
            }
            for label in source.labels:
                assert after.example.schema.describe(mapping[label]) == source.describe(label)
    assert label_maps["shuffled"]["genia_mini"] == probe_mapping(source.labels, "shuffled", 3)


def test_a_model_that_memorized_label_names_shows_the_drop(tmp_path: Path) -> None:
    """A scripted 'model' that always answers with the real names is perfect normally and scores 0 on
    opaque labels; the report shows the whole F1 as the drop."""
    dataset = read_dataset(DATA / "conll2003_mini.txt")
    gold = {e.text: get_format("grouped_json").render(e) for e in dataset.examples}
    args = eval_args(
        tmp_path, [{"path": str(DATA / "conll2003_mini.txt"), "name": "conll"}], probes=["opaque"]
    )
    evaluation = run_eval(args, from_table(gold))
    assert evaluation.reports["normal"]["text"].datasets["conll"].micro.f1 == 1.0
    assert evaluation.reports["opaque"]["text"].datasets["conll"].micro.f1 == 0.0
    assert evaluation.drops()["conll"]["opaque"] == {"text": 1.0, "exact": 1.0}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["probe_drops"]["conll"]["opaque"]["text"] == 1.0
    assert results["probes"]["opaque"]["label_maps"]["conll"]["person"] in "ABCD"
    assert "| conll | 100.00 | 0.00 | 100.00 |" in (tmp_path / "out" / "results.md").read_text()


def test_a_probe_prompt_shows_its_format_example_relabelled_not_the_names_it_hides(tmp_path: Path) -> None:
    """The format's example names person and organisation: left as it is, a shuffled probe's own prompt
    would contradict its gold, and an opaque one's would show the real names."""
    generator = from_table({})
    generator.answer = lambda sentence, prompt: "{}"
    args = eval_args(tmp_path, [{"path": str(DATA / "conll2003_mini.txt"), "name": "conll"}], limit=1)
    args.probes = ["opaque", "shuffled"]
    evaluation = run_eval(args, generator)
    normal, opaque, shuffled = generator.prompts
    assert '{"entities": {"person": ["Alice"], "organisation": ["Acme Corp"]}}' in normal
    for prompt, probe in ((opaque, "opaque"), (shuffled, "shuffled")):
        mapping = evaluation.label_maps[probe]["conll"]
        example = {mapping["person"]: ["Alice"], mapping["organisation"]: ["Acme Corp"]}
        assert json.dumps({"entities": example}) in prompt and '"person": ["Alice"]' not in prompt


def test_label_subset_rename_and_descriptions_reach_the_prompt(tmp_path: Path) -> None:
    entry = {
        "path": str(DATA / "conll2003_mini.txt"),
        "labels": {"person": "PER", "location": "LOC"},
        "descriptions": {"PER": "a human being"},
    }
    items, datasets, _ = load_items(eval_args(tmp_path, [entry]))
    assert all({s.label for s in item.example.spans} <= {"PER", "LOC"} for item in items)
    info = datasets["conll2003_mini"]
    assert info["labels"] == ["PER", "LOC"] and info["dropped_entities"] > 0 and info["reader_notes"] == 0
    iob1 = tmp_path / "iob1.txt"  # an entity opened by I-: read, and counted as a reader's note
    iob1.write_text("Ann\tI-person\nruns\tO\n", encoding="utf-8")
    _, iob1_sets, _ = load_items(eval_args(tmp_path, [{"path": str(iob1)}]))
    assert iob1_sets["iob1"]["reader_notes"] == 1
    generator = Scripted(lambda sentence, prompt: "{}")
    run_eval(eval_args(tmp_path, [entry], limit=1), generator)
    assert "- PER: a human being\n- LOC\n" in generator.prompts[0]
    # A description's line break would list a label never asked ("drug"), whose answers are then dropped.
    broken = {**entry, "descriptions": {"PER": "a human\n- drug: a medicine"}}
    run_eval(eval_args(tmp_path, [broken], limit=1), generator)
    assert "- PER: a human - drug: a medicine\n- LOC\n" in generator.prompts[-1]
    with pytest.raises(ValueError, match="unknown keys"):
        load_items(eval_args(tmp_path, [{**entry, "lables": []}]))
    with pytest.raises(ValueError, match="descriptions given for labels outside"):
        load_items(eval_args(tmp_path, [{**entry, "descriptions": {"person": "x"}}]))
    # Several sets of a source in one entry would be asked with all their labels and scored as one.
    with pytest.raises(ValueError, match="name one set per entry"):
        EvalSet.from_config("hf:ZWK/InstructUIE_data/IE_INSTRUCTIONS/NER@test?sets=CrossNER_AI,CoNLL 2003")


# --- the real tiny model: predict CLI and stages/eval.py ---------------------------------------------


def test_predict_cli_with_the_tiny_model(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """The CLI end to end on the real backend: one record per line, a blank one included (the untrained
    model names no entity: offsets are checked with scripted answers, test_predict)."""
    source = tmp_path / "texts.txt"
    source.write_text("EU rejects German call .\n\nPeter Blackburn met Peter .\n", encoding="utf-8")
    descriptions = tmp_path / "descriptions.json"
    descriptions.write_text(json.dumps({"person": "a human"}), encoding="utf-8")
    code = main(
        ["predict", "--model", str(tiny_model_dir), "--labels", "person,location", "--descriptions-file",
         str(descriptions), "--rationale", "--max-new-tokens", "12", str(source)]
    )  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["EU rejects German call .", "", "Peter Blackburn met Peter ."]
    assert all(set(record) >= {"entities", "ungrounded", "problems"} for record in records)
    assert "rationale" in records[0]
    assert main(["predict", "--model", str(tmp_path / "nowhere"), "--labels", "person", str(source)]) == 2
    assert main(["predict", "--model", str(tiny_model_dir), "--labels", "bad|label", str(source)]) == 2
    assert "'bad|label' is not usable" in capsys.readouterr().err
    # Given empty (a shell variable left unset) it is an error, not the model's own labels.
    assert main(["predict", "--model", str(tiny_model_dir), "--labels", "", str(source)]) == 2
    assert "--labels '' names no label" in capsys.readouterr().err
    # A type of several words is asked as it is named (zero-shot: any name a user gives).
    spaced = ["--labels", "musical artist,person", "--max-new-tokens", "4", str(source)]
    assert main(["predict", "--model", str(tiny_model_dir), *spaced]) == 0


def test_predict_says_when_outputs_ran_out_of_tokens(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rationale cut off has no answer: no entities, which must not pass for a model that found none."""
    from reasoningner.generation import TransformersGenerator

    def cut_off(self: Any, conversations: Sequence, sampling: Any, seeds: Any) -> Iterator:
        for index, _ in enumerate(conversations):
            yield index, [Completion("<think>Peter is a", 12, "length")]

    monkeypatch.setattr(TransformersGenerator, "_generate", cut_off)
    source = tmp_path / "texts.txt"
    source.write_text("EU rejects German call .\nPeter met Ann .\n", encoding="utf-8")
    argv = ["predict", "--model", str(tiny_model_dir), "--labels", "person", "--max-new-tokens", "12"]
    assert main([*argv, str(source)]) == 0
    err = capsys.readouterr().err
    assert (
        "predict: 2 of 2 outputs stop short (cut_off, unclosed_think, truncated): raise --max-new-tokens "
        "(now 12), or ask texts much longer than the model's training sentences in windows "
        "(--max-prompt-chars)" in err
    )


def test_eval_stage_end_to_end_with_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_model_dir),
                "output_dir": str(tmp_path / "out"),
                "backend_options": {"batch_size": 4},
                "max_new_tokens": 12,
                "limit": 5,
                "datasets": [{"path": str(ROOT / "data" / "conll2003" / "dev-slice.txt"), "name": "conll"}],
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "eval.py"), "--config", str(recipe)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "generations.jsonl",
        "generations.jsonl.lock",  # held while it is written (`files.exclusive`)
        "manifest.json",
        "results.json",
        "results.md",
    ]
    assert len((out / "generations.jsonl").read_text().splitlines()) == 5
    results = json.loads((out / "results.json").read_text())
    assert results["scores"]["text"]["datasets"]["conll"]["examples"] == 5
    assert results["config"]["model_name_or_path"] == str(tiny_model_dir)
    assert "conll" in result.stdout and "Avg" in result.stdout


class Preempted(Exception):
    """Stands for a kill in the middle of an evaluation."""


def test_a_relaunched_evaluation_asks_only_what_it_lacks(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill mid-evaluation loses only the outputs in flight: the relaunch asks the rest and ends with
    the scores of a run never killed. Outputs asked otherwise (another setting, a model changed in place)
    are asked again; a garbled file is refused naming file:line."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    sets = [{"path": str(ROOT / "data" / "conll2003" / "dev-slice.txt"), "name": "conll"}]

    def run(out: str, max_new_tokens: int = 12, limit: int = 6) -> Evaluation:
        args = EvalArguments(datasets=sets, limit=limit, probes=["opaque"], output_dir=str(tmp_path / out))
        generation = GenerationArguments(
            model_name_or_path=str(model), backend_options={"batch_size": 2}, max_new_tokens=max_new_tokens
        )
        return evaluate(args, PromptArguments(), generation)

    asked: list[int] = []
    original_run = NERModel.run

    def counted(self: NERModel, items: Sequence) -> Iterator:
        asked.append(len(items))
        yield from original_run(self, items)

    def killed_after_five(self: NERModel, items: Sequence) -> Iterator:
        for number, output in enumerate(original_run(self, items), 1):
            yield output
            if number == 5:
                raise Preempted

    reference = run("reference")
    with monkeypatch.context() as patch, pytest.raises(Preempted):
        patch.setattr(NERModel, "run", killed_after_five)
        run("out")
    generations = tmp_path / "out" / "generations.jsonl"
    assert len(generations.read_text().splitlines()) == 5

    def outputs(out: str) -> list[tuple]:
        records = [
            json.loads(line) for line in (tmp_path / out / "generations.jsonl").read_text().splitlines()
        ]
        return sorted((r["variant"], r["id"], r["output"], r["asked"]) for r in records)

    monkeypatch.setattr(NERModel, "run", counted)
    resumed = run("out")
    assert asked == [12 - 5]  # 6 sentences and their opaque-label probe
    assert resumed.generation["reused"] == 5
    assert resumed.to_dict()["scores"] == reference.to_dict()["scores"]
    assert resumed.errors == reference.errors  # the kept outputs' cut-offs too (the tiny model runs on)
    assert reference.errors["normal"]["conll"].cut_off > 0
    assert outputs("out") == outputs("reference")

    built = GenerationArguments.build_generator
    with monkeypatch.context() as patch:  # complete: nothing to ask, no model loaded
        patch.setattr(GenerationArguments, "build_generator", lambda self: pytest.fail("model loaded"))
        assert run("out").to_dict()["scores"] == reference.to_dict()["scores"]
    assert len(asked) == 1 and GenerationArguments.build_generator is built

    def newly_asked(out: str, **settings: int) -> int:
        """The sentences a run asks (a run with nothing to ask asks no model at all)."""
        before = len(asked)
        run(out, **settings)
        return sum(asked[before:])

    run("out", max_new_tokens=8)  # other settings: every output asked anew
    assert asked[-1] == 12
    import reasoningner.evaluate as evaluating

    rewrites: list[Path] = []

    def killed_while_rewriting(path: Path, lines: Iterable[bytes]) -> None:
        rewrites.append(path)
        if len(rewrites) == kill_at + 1:  # after the first rewrite, or the second
            raise Preempted
        write_lines(path, lines)

    # Killed between its rewrites of the two files, outputs moving one way, then the other: no output of
    # either settings is lost.
    for tokens in (12, 8, 12):
        for kill_at in (1, 2):
            rewrites.clear()
            with monkeypatch.context() as patch, pytest.raises(Preempted):
                patch.setattr(evaluating, "write_lines", killed_while_rewriting)
                run("out", max_new_tokens=tokens)
            for either in (8, 12):  # those of the first settings were set aside, not lost
                assert newly_asked("out", max_new_tokens=either) == 0, (tokens, kill_at, either)
    before = len(asked)
    assert run("out", limit=2).generation["reused"] == 4 and len(asked) == before  # a quick look at a few
    assert len(generations.read_text().splitlines()) == 4
    assert run("out").to_dict()["scores"] == reference.to_dict()["scores"] and len(asked) == before
    for record in ("manifest.json", "trainer_state.json", "training_args.bin", "README.md", "training.lock"):
        (model / record).write_text("rewritten")  # as a finished training run relaunched rewrites them
    assert newly_asked("out") == 0
    (model / "notes.txt").write_text("retrained here")  # the model folder changed
    assert newly_asked("out") == 12
    other = tmp_path / "out" / "generations.other.jsonl"
    assert len(other.read_text().splitlines()) == 24  # both settings' outputs of the model before

    generations.write_text(generations.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=f"{generations}:13: not an output record"):
        run("out")
    assert len(other.read_text().splitlines()) == 24  # a refused run changes nothing


@pytest.mark.parametrize("marker", ["config.json", "adapter_config.json"])  # an adapter has no config.json
def test_a_hub_model_s_outputs_are_known_by_the_commit_of_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    """A Hub repository updated since an evaluation is another model: its outputs are asked anew."""
    from huggingface_hub import constants

    from reasoningner.evaluate import generation_identity

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repository = tmp_path / "models--me--ner"
    for commit in ("aaaa", "bbbb"):
        (repository / "snapshots" / commit).mkdir(parents=True)
        (repository / "snapshots" / commit / marker).write_text("{}")
    (repository / "refs").mkdir()
    loaded = GenerationArguments(model_name_or_path="me/ner")
    served = GenerationArguments(model_name_or_path="me/ner", backend="openai",
                                 backend_options={"base_url": "http://127.0.0.1:9/v1"})  # fmt: skip
    identities = []
    for commit in ("aaaa", "bbbb", "aaaa"):
        (repository / "refs" / "main").write_text(commit)
        identities.append((generation_identity(loaded), generation_identity(served)))
    assert identities[0][0] != identities[1][0] and identities[0] == identities[2]
    assert identities[0][1] == identities[1][1]  # a server's model is known by its name only


def test_an_output_left_in_both_files_by_a_kill_is_one_output(tmp_path: Path) -> None:
    """A sentence asked twice (sampling) takes two outputs only where there were two."""
    from reasoningner.evaluate import earlier_outputs

    line = json.dumps({"asked": "k", "output": "A"})
    for name in ("generations.jsonl", "generations.other.jsonl"):
        (tmp_path / name).write_text(line + "\n")
    found, others = earlier_outputs(
        [tmp_path / "generations.jsonl", tmp_path / "generations.other.jsonl"], ["k", "k"]
    )
    assert list(found) == [0] and others == []


def test_where_and_how_fast_a_model_is_asked_leaves_its_outputs_known() -> None:
    """A relaunch after running out of memory, with a smaller batch, or on another server, keeps what
    was asked; what changes the text (a seed, the dtype, sampling) asks anew."""
    from reasoningner.evaluate import generation_identity

    def identity(temperature: float = 0.0, **options: object) -> str:
        served = {"base_url": "http://127.0.0.1:9/v1", "max_concurrency": 8} | options
        generation = GenerationArguments(
            model_name_or_path="me/ner", backend="openai", temperature=temperature, backend_options=served
        )
        return generation_identity(generation)

    first = identity()
    assert identity(max_concurrency=2, base_url="http://node-7:8000/v1", request_timeout=60) == first
    assert identity(seed=1) != first and identity(dtype="float16") != first and identity(0.7) != first
    assert identity(kv_cache_dtype="fp8") != first  # an engine option not known here may change the text


# --- the prompt contract saved beside a model: every consumer reads it ----------------------------------

CONTRACT = PromptContract(
    PromptArguments("xml", reasoning=False, descriptions=False, compact_prompt=True), ["person", "location"]
)


@pytest.fixture()
def contracted_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with a prompt contract beside it, as SFT and GRPO save their models."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    CONTRACT.save(model)
    return model


def test_predict_cli_with_a_hub_model_takes_its_labels_and_prompt_from_its_hub_repository(
    contracted_model: Path, tmp_path: Path
) -> None:
    """What the model card tells Hub users to run: `reasoningner predict --model owner/name texts.txt`,
    without --labels (here from the Hub cache, offline, as `hf download` leaves a model)."""
    snapshot = tmp_path / "hub" / "models--me--tiny-ner" / "snapshots" / "0123abcd"
    shutil.copytree(contracted_model, snapshot)
    (tmp_path / "hub" / "models--me--tiny-ner" / "refs").mkdir()
    (tmp_path / "hub" / "models--me--tiny-ner" / "refs" / "main").write_text("0123abcd")
    texts = tmp_path / "texts.txt"
    texts.write_text("Peter Blackburn met Peter .\n", encoding="utf-8")
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "reasoningner.cli", "predict", "--model", "me/tiny-ner",
         "--max-new-tokens", "8", str(texts)], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["text"] == "Peter Blackburn met Peter ."
    assert "no prompt contract" not in result.stderr


def test_predict_lets_a_model_write_as_long_as_it_was_trained_to_unless_told(
    contracted_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataclasses.replace(CONTRACT, max_new_tokens=3).save(contracted_model)
    with NERModel.from_pretrained(contracted_model) as model:
        assert model.sampling.max_new_tokens == 3
    with NERModel.from_pretrained(contracted_model, max_new_tokens=5) as model:
        assert model.sampling.max_new_tokens == 5
    texts = tmp_path / "texts.txt"
    texts.write_text("Peter Blackburn met Peter .\n", encoding="utf-8")
    assert main(["predict", "--model", str(contracted_model), str(texts)]) == 0
    err = capsys.readouterr().err  # the random model's 3 tokens end no answer
    assert "1 of 1 outputs stop short" in err and "raise --max-new-tokens (now 3)" in err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_predict_reads_a_hub_model_s_labels_at_the_revision_its_backend_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import huggingface_hub

    CONTRACT.save(tmp_path / "snapshot")
    asked: list[str | None] = []

    def download(repo_id: str, filename: str, revision: str | None = None) -> str:
        asked.append(revision)
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    texts = tmp_path / "texts.txt"
    texts.write_text("Jo runs .\n", encoding="utf-8")
    # vLLM is not installed here: the run stops at the model load (one line), after the labels were read.
    argv = ["predict", "--model", "me/ner", "--backend", "vllm", "--backend-options", '{"revision": "v1"}']
    assert main([*argv, str(texts)]) == 2
    assert "needs vLLM" in capsys.readouterr().err
    assert asked and set(asked) == {"v1"}


def test_the_transformers_backend_loads_a_hub_model_at_the_revision_its_contract_is_read_at(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pinned release (`revision`), for the default backend as for vLLM: tokenizer, weights, contract."""
    import huggingface_hub
    import transformers

    CONTRACT.save(tmp_path / "snapshot")
    asked: list[tuple[str, str | None]] = []

    def download(repo_id: str, filename: str, revision: str | None = None) -> str:
        asked.append((filename, revision))
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):

        def loaded(name: str, *args: Any, _load: Any = auto.from_pretrained, **options: Any) -> Any:
            asked.append((name, options.pop("revision")))
            return _load(tiny_model_dir, *args, **options)  # the Hub's snapshot, here

        monkeypatch.setattr(auto, "from_pretrained", loaded)
    with NERModel.from_pretrained("me/ner", revision="v1", max_new_tokens=4) as model:
        assert model.prompt == CONTRACT.prompt
    assert asked == [("prompt_contract.json", "v1"), ("me/ner", "v1"), ("me/ner", "v1")]
    # An evaluation reads the contract once, for its label sets and the model alike.
    asked.clear()
    generation = GenerationArguments(
        model_name_or_path="me/ner", backend_options={"revision": "v1"}, max_new_tokens=4
    )
    args = eval_args(tmp_path, [{"path": str(DATA / "conll2003_mini.txt")}], limit=1)
    evaluate(args, PromptArguments(), generation)
    assert [name for name, _ in asked].count("prompt_contract.json") == 1


def test_a_model_without_a_contract_is_asked_with_the_given_settings_and_a_warning(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    given = PromptArguments("xml", descriptions=False)
    with caplog.at_level("WARNING"), NERModel.from_pretrained(tiny_model_dir, prompt=given) as model:
        assert model.prompt == given
    assert f"{tiny_model_dir} has no prompt contract (a base model, or one trained elsewhere)" in caplog.text


def test_ner_model_asks_as_the_contract_says_and_a_contradicting_setting_warns(
    contracted_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with NERModel.from_pretrained(contracted_model, max_new_tokens=4) as model:
        assert (model.prompt, model.labels) == (CONTRACT.prompt, CONTRACT.labels)
        schema = Schema(("person", "location"), {"person": "a human"})
        assert (
            model.conversation("Jo runs .", schema)[0]["content"]
            == "NER xml answer\n- person\n- location\nSentence: Jo runs ."
        )
    assert not caplog.records
    with NERModel.from_pretrained(
        contracted_model, prompt=PromptArguments(output_format="bracketed")
    ) as model:
        assert model.prompt == PromptArguments("bracketed", False, False, True)
    assert "output_format='bracketed' contradicts the prompt contract" in caplog.text


def test_evaluation_and_predict_default_to_the_contract(
    contracted_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    stage = load_stage("eval")
    args = ["--model_name_or_path", str(contracted_model), "--output_dir", str(tmp_path / "out"),
            "--limit", "2", "--max_new_tokens", "4"]  # fmt: skip
    eval_args, prompt, generation = stage.make_parser().parse_args_and_config(args=args)
    eval_args.datasets = [{"path": str(DATA / "conll2003_mini.txt")}]
    stage.main(eval_args, prompt, generation)
    config = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert {key: config[key] for key in PromptArguments.DEFAULTS} == asdict(CONTRACT.prompt)
    assert config["prompt_contradicts_contract"] == []
    # A recipe's setting that contradicts the contract is used, and the results say so.
    eval_args, prompt, generation = stage.make_parser().parse_args_and_config(
        args=[*args[:3], str(tmp_path / "other"), *args[4:], "--output_format", "bracketed"]
    )
    eval_args.datasets = [{"path": str(DATA / "conll2003_mini.txt")}]
    stage.main(eval_args, prompt, generation)
    config = json.loads((tmp_path / "other" / "results.json").read_text())["config"]
    assert config["output_format"] == "bracketed"
    [contradiction] = config["prompt_contradicts_contract"]
    assert contradiction.startswith("output_format='bracketed' contradicts the prompt contract")
    assert f"**Not asked as trained:** {contradiction}" in (tmp_path / "other" / "results.md").read_text()
    capsys.readouterr()
    source = tmp_path / "texts.txt"
    source.write_text("Jo runs .\n", encoding="utf-8")
    assert main(["predict", "--model", str(contracted_model), "--max-new-tokens", "4", str(source)]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Jo runs ."  # labels from the contract
    assert main(["predict", "--model", str(tmp_path / "base"), str(source)]) == 2
    assert "base does not exist" in capsys.readouterr().err  # checked before its contract is looked for
    (tmp_path / "base").mkdir()
    assert main(["predict", "--model", str(tmp_path / "base"), str(source)]) == 2
    assert "prompt contract naming its labels: give --labels" in capsys.readouterr().err


def test_a_sentence_too_long_for_the_context_is_a_format_failure_not_a_crash(tmp_path: Path) -> None:
    long = " ".join(["word"] * 400) + " ."
    path = tmp_path / "mixed.jsonl"
    records = [{"id": "0", "text": "Peter ran .", "entities": [{"start": 0, "end": 5, "label": "person"}]},
               {"id": "1", "text": long, "entities": []}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    generator = Scripted(lambda sentence, _: '{"entities": {"person": ["Peter"]}}')
    generator.context_tokens = 1024 + 600  # room for a 600-character prompt after max_new_tokens
    args = eval_args(tmp_path, [{"path": str(path), "name": "mixed", "labels": ["person"]}])
    evaluation = evaluate(
        args, PromptArguments(), GenerationArguments(max_new_tokens=1024), generator=generator
    )
    assert len(generator.prompts) == 1 and long not in generator.prompts[0]  # never asked
    errors = evaluation.errors["normal"]["mixed"]
    assert (errors.outputs, errors.format_failures, errors.problems["prompt_too_long"]) == (2, 1, 1)
    assert evaluation.reports["normal"]["exact"].datasets["mixed"].micro.f1 == 1.0


def test_a_sentence_whose_tokens_overflow_the_context_is_not_asked_where_the_backend_counts_them(
    tmp_path: Path,
) -> None:
    class ByteCounted(Scripted):
        def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int]:
            return [len(conversation[-1]["content"].encode("utf-8")) for conversation in conversations]

    dense = "上海" * 100  # 200 characters, 600 bytes
    path = tmp_path / "mixed.jsonl"
    records = [{"id": "0", "text": "Peter ran .", "entities": [{"start": 0, "end": 5, "label": "person"}]},
               {"id": "1", "text": dense, "entities": []}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    generator = ByteCounted(lambda sentence, _: '{"entities": {"person": ["Peter"]}}')
    generator.context_tokens = 1024 + 800  # 800 characters or tokens after max_new_tokens
    args = eval_args(tmp_path, [{"path": str(path), "name": "mixed", "labels": ["person"]}])
    evaluation = evaluate(
        args, PromptArguments(), GenerationArguments(max_new_tokens=1024), generator=generator
    )
    assert len(generator.prompts) == 1 and dense not in generator.prompts[0]  # never asked
    dense_prompt = generator.prompts[0].replace("Peter ran .", dense)
    assert len(dense_prompt) < 800 < len(dense_prompt.encode())  # it fits as characters, not as tokens
    errors = evaluation.errors["normal"]["mixed"]
    assert (errors.outputs, errors.format_failures, errors.problems["prompt_too_long"]) == (2, 1, 1)


def test_a_long_sentence_that_fits_in_tokens_is_asked_unless_max_prompt_chars_says_otherwise(
    tmp_path: Path,
) -> None:
    """Characters bound tokens only as a first guess: a backend that counts tokens decides."""

    class FourCharsAToken(Scripted):
        def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int]:
            return [len(conversation[-1]["content"]) // 4 for conversation in conversations]

    long = " ".join(["word"] * 400) + " ."  # 2,000 characters, about 500 tokens
    path = tmp_path / "long.jsonl"
    record = {"id": "0", "text": long, "entities": [], "labels": ["person"]}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    generator = FourCharsAToken(lambda sentence, _: '{"entities": {}}')
    generator.context_tokens = 1024 + 1000  # 1,000 characters, or tokens, after max_new_tokens
    sets = [{"path": str(path), "name": "long", "labels": ["person"]}]
    generation = GenerationArguments(max_new_tokens=1024)
    evaluation = evaluate(eval_args(tmp_path / "a", sets), PromptArguments(), generation, generator=generator)
    assert len(generator.prompts) == 1 and long in generator.prompts[0]
    assert evaluation.errors["normal"]["long"].format_failures == 0
    bounded = eval_args(tmp_path / "b", sets, max_prompt_chars=1500)
    evaluation = evaluate(bounded, PromptArguments(), generation, generator=generator)
    assert len(generator.prompts) == 1  # not asked again
    assert evaluation.errors["normal"]["long"].problems["prompt_too_long"] == 1


def test_a_sentence_the_backend_gives_up_on_is_a_format_failure_and_the_others_are_scored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server's 400 for one sentence used to end the evaluation, and every relaunch at that sentence."""

    class Refusing(Scripted):
        def _generate(
            self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
        ) -> Iterator[tuple[int, Outcome]]:
            for index, outcome in super()._generate(conversations, sampling, seeds):
                refused = MIXED in conversations[index][-1]["content"]
                yield index, ConversationFailed("HTTP 400: prompt too long") if refused else outcome

    path = write_set(tmp_path / "set.jsonl", [(MIXED, [(11, 14, "person")]), (TWICE, [(0, 3, "person")])])
    generator = Refusing(lambda sentence, _: '<think>x</think>{"entities": {"person": ["Bob"]}}')
    with caplog.at_level(logging.WARNING):
        evaluation = run_eval(eval_args(tmp_path, [{"path": str(path), "name": "set"}]), generator)
    errors = evaluation.errors["normal"]["set"]
    assert (errors.outputs, errors.format_failures, errors.problems["generation_failed"]) == (2, 1, 1)
    assert evaluation.reports["normal"]["exact"].datasets["set"].micro.tp == 1  # TWICE's first Bob
    assert "gave up on 1 of 2 sentences" in caplog.text and "a rerun asks them again" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert {r["text"]: r["asked"] for r in records}[MIXED] is None  # never reused: asked again


def test_a_set_without_gold_entities_is_said_to_weigh_on_avg(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its F1 is 0 whatever the model answers, and Avg is the mean over sets: a --limit too small read as
    a worse model."""
    path = write_set(tmp_path / "none.jsonl", [(EMPTY, [])])
    with caplog.at_level(logging.WARNING):
        load_items(eval_args(tmp_path, [{"path": str(path), "name": "none"}]))
    assert "evaluation set 'none' has no gold entity" in caplog.text
    caplog.clear()
    load_items(
        eval_args(tmp_path, [{"path": str(write_set(tmp_path / "one.jsonl", [(TWICE, [(0, 3, "person")])]))}])
    )
    assert "no gold entity" not in caplog.text


def test_a_model_trained_on_labels_written_with_underscores_is_told_how_to_be_asked_as_trained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before labels kept their spaces, "programming language" was trained as programming_language."""
    PromptContract(PromptArguments(), ["programming_language", "person"]).save(tmp_path / "model")
    path = tmp_path / "s.jsonl"
    entities = [{"start": 0, "end": 6, "label": "programming language"}]
    path.write_text(json.dumps({"text": "Python rocks", "entities": entities}) + "\n", encoding="utf-8")
    generation = GenerationArguments(model_name_or_path=str(tmp_path / "model"))
    with caplog.at_level(logging.WARNING):
        load_items(eval_args(tmp_path, [{"path": str(path), "name": "s"}]), generation.prompt_contract())
    assert "rename them in the set's labels: {'programming language': 'programming_language'}" in caplog.text
    caplog.clear()
    renamed = {"path": str(path), "name": "s", "labels": {"programming language": "programming_language"}}
    load_items(eval_args(tmp_path, [renamed]), generation.prompt_contract())
    assert "rename them" not in caplog.text


def test_a_set_with_the_model_s_labels_is_asked_in_the_training_order(tmp_path: Path) -> None:
    file_order = list(read_dataset(DATA / "conll2003_mini.txt").schema.labels)
    trained = list(reversed(file_order))
    PromptContract(PromptArguments(), trained).save(tmp_path / "model")
    generator = Scripted(lambda sentence, prompt: "{}")
    args = eval_args(tmp_path, [{"path": str(DATA / "conll2003_mini.txt")}], limit=1)
    evaluate(
        args, PromptArguments(), GenerationArguments(model_name_or_path=str(tmp_path / "model")), generator
    )
    assert "\n".join(f"- {label}" for label in trained) in generator.prompts[0]
    listed = eval_args(tmp_path, [{"path": str(DATA / "conll2003_mini.txt"), "labels": file_order}], limit=1)
    evaluate(
        listed, PromptArguments(), GenerationArguments(model_name_or_path=str(tmp_path / "model")), generator
    )
    assert "\n".join(f"- {label}" for label in trained) in generator.prompts[1]  # not the recipe's order
    subset = eval_args(
        tmp_path, [{"path": str(DATA / "conll2003_mini.txt"), "labels": file_order[:2]}], limit=1
    )
    evaluate(
        subset, PromptArguments(), GenerationArguments(model_name_or_path=str(tmp_path / "model")), generator
    )
    assert (
        "\n".join(f"- {label}" for label in file_order[:2]) in generator.prompts[2]
    )  # other labels: as listed


def test_outputs_that_ran_into_max_new_tokens_are_counted_and_kept_with_their_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the backend says (finish_reason "length"): the one sign of a budget too small."""

    class CutLong(Scripted):
        def _generate(self, conversations, sampling, seeds):  # type: ignore[no-untyped-def]
            for index, completions in super()._generate(conversations, sampling, seeds):
                cut = "Paris" in conversations[index][-1]["content"]
                yield index, [Completion(c.text, 3, "length" if cut else "stop") for c in completions]

    path = write_set(tmp_path / "set.jsonl", [(REPEATED, [(0, 5, "location")]), (TWICE, [(0, 3, "person")])])
    args = eval_args(tmp_path, [{"path": str(path), "name": "set"}])
    with caplog.at_level(logging.WARNING):
        evaluation = run_eval(args, CutLong(lambda sentence, _: '<think>x</think>{"entities": {}}'))
    assert evaluation.errors["normal"]["set"].cut_off == 1
    assert "1 of 2 outputs ran into max_new_tokens=1024" in caplog.text
    report = (tmp_path / "out" / "results.md").read_text()
    assert "| No answer | Cut off at 1024 tokens |" in report and "| set | 2 | 0 | 0 | 1 |" in report
    records = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["finish_reason"] for r in records) == ["length", "stop"]


def test_a_model_trained_here_writes_as_long_as_it_learnt_to_unless_the_recipe_says(tmp_path: Path) -> None:
    """No max_new_tokens in the recipe: the contract's budget (a model trained on long rationales was
    cut at a fixed 1024, no answer, read as "no entities"); results and the outputs' keys say it."""
    PromptContract(PromptArguments(), ["person"], max_new_tokens=3000).save(tmp_path / "model")
    budgets: list[int] = []

    class Budgeted(Scripted):
        def _generate(self, conversations, sampling, seeds):  # type: ignore[no-untyped-def]
            budgets.append(sampling.max_new_tokens)
            return super()._generate(conversations, sampling, seeds)

    args = eval_args(tmp_path, [{"path": str(DATA / "conll2003_mini.txt")}], limit=1)
    generation = GenerationArguments(model_name_or_path=str(tmp_path / "model"))
    evaluation = evaluate(args, PromptArguments(), generation, Budgeted(lambda sentence, prompt: "{}"))
    assert budgets == [3000]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["max_new_tokens"] == 3000
    assert evaluation.config["max_new_tokens"] == 3000
    told = GenerationArguments(model_name_or_path=str(tmp_path / "model"), max_new_tokens=64)
    evaluate(eval_args(tmp_path / "told", [{"path": str(DATA / "conll2003_mini.txt")}], limit=1),
             PromptArguments(), told, Budgeted(lambda sentence, prompt: "{}"))  # fmt: skip
    assert budgets == [3000, 64]


def test_labels_are_described_as_in_the_model_s_training_prompts_unless_the_recipe_says_otherwise(
    tmp_path: Path,
) -> None:
    """As `NERModel.predict` asks: a label the recipe and the file leave undescribed gets its trained one."""
    described = PromptArguments(descriptions=True)
    labels = list(read_dataset(DATA / "conll2003_mini.txt").schema.labels)
    PromptContract(described, labels, descriptions={"person": "a human being"}).save(tmp_path / "model")
    generation = GenerationArguments(model_name_or_path=str(tmp_path / "model"))
    generator = Scripted(lambda sentence, prompt: "{}")
    conll = {"path": str(DATA / "conll2003_mini.txt")}
    evaluate(eval_args(tmp_path, [conll], limit=1), described, generation, generator)
    assert "- person: a human being\n" in generator.prompts[0]
    model = NERModel(generator, described, labels=labels, descriptions={"person": "a human being"})
    text = read_dataset(DATA / "conll2003_mini.txt").examples[0].text
    assert model.conversation(text, model.schema(labels))[-1]["content"] == generator.prompts[0]
    recipe = conll | {"descriptions": {"person": "someone"}}
    evaluate(eval_args(tmp_path / "again", [recipe], limit=1), described, generation, generator)
    assert "- person: someone\n" in generator.prompts[1] and "a human being" not in generator.prompts[1]


def test_a_hub_model_s_training_order_comes_from_its_hub_contract(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    trained = list(reversed(read_dataset(DATA / "conll2003_mini.txt").schema.labels))
    PromptContract(PromptArguments(), trained).save(tmp_path / "snapshot")
    asked: list[str] = []

    def download(repo_id: str, filename: str) -> str:
        asked.append(f"{repo_id}/{filename}")
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    generator = Scripted(lambda sentence, prompt: "{}")
    args = eval_args(tmp_path, [{"path": str(DATA / "conll2003_mini.txt")}], limit=1)
    evaluate(args, PromptArguments(), GenerationArguments(model_name_or_path="me/ner"), generator)
    assert asked == ["me/ner/prompt_contract.json"]
    assert "\n".join(f"- {label}" for label in trained) in generator.prompts[0]
    # A server serves a Hub model under its id (`vllm serve me/ner`): its contract is read from the Hub too.
    served = GenerationArguments(model_name_or_path="me/ner", backend="openai")
    evaluate(args, PromptArguments(), served, generator)
    assert asked == ["me/ner/prompt_contract.json"] * 2
    assert "\n".join(f"- {label}" for label in trained) in generator.prompts[1]


def test_results_say_in_domain_when_the_model_was_trained_on_a_set(tmp_path: Path) -> None:
    args = eval_args(tmp_path, [{"path": str(DATA / "conll2003_mini.txt")}], limit=1)
    args.datasets.append({"path": str(DATA / "genia_mini.json")})  # zero-shot beside it
    args.in_domain = ["conll2003_mini.txt (trained on conll2003)"]
    args.in_domain_sources = [str(DATA / "conll2003_mini.txt")]
    run_eval(args, Scripted(lambda sentence, prompt: "{}"))
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "**In domain:** conll2003_mini (allow_overlap; conll2003_mini.txt (trained on" in markdown
    datasets = json.loads((tmp_path / "out" / "results.json").read_text())["datasets"]
    assert {name: info["in_domain"] for name, info in datasets.items()} == {
        "conll2003_mini": True,
        "genia_mini": False,
    }
    args.in_domain, args.in_domain_sources = [], []
    run_eval(args, Scripted(lambda sentence, prompt: "{}"))
    assert "In domain" not in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize(("total", "shown"), [(6, 6), (500, 500), (1234, 412)])
def test_the_wandb_generations_table_spreads_over_the_file(tmp_path: Path, total: int, shown: int) -> None:
    """generations.jsonl is in completion order (longest prompts first with local generation): the table
    takes every k-th output, from the first to near the last, not the first 500."""
    generations = tmp_path / "generations.jsonl"
    generations.write_text("".join(json.dumps({"line": n}) + "\n" for n in range(total)), encoding="utf-8")
    records = spread_sample(generations, total, 500)
    lines = [record["line"] for record in records]
    step = lines[1] - lines[0]
    assert len(lines) == shown and lines == list(range(0, total, step)) and lines[-1] >= total - step


def test_a_typo_in_a_set_s_labels_is_pointed_out_with_the_gold_it_drops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = ["person", "organisation", "locaton", "misc"]  # location misspelled
    entry = {"path": str(DATA / "conll2003_mini.txt"), "name": "conll", "labels": labels}
    with caplog.at_level(logging.WARNING):
        _, datasets, _ = load_items(eval_args(tmp_path, [entry]))
    assert "labels ['locaton'] never occur" in caplog.text and "did you mean 'location'?" in caplog.text
    dropped = datasets["conll"]["dropped_entities"]
    assert (
        dropped > 0
        and f"the file's labels {{'location': {dropped}}} are not in the set's labels" in caplog.text
    )
