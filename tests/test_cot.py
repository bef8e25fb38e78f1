"""Stage 1: validation and consistency scoring, resume after a kill, shards, teacher backends."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reasoningner import cot
from reasoningner.configs import DEFAULT_MAX_NEW_TOKENS, CoTArguments, GenerationArguments, PromptArguments
from reasoningner.cot import Progress, annotate, best_sample, merge_shards, score_sample
from reasoningner.formats import get_format
from reasoningner.generation import Completion
from reasoningner.readers import DataError, read_dataset
from reasoningner.records import read_records, record_example
from reasoningner.spans import Example, Schema, Span
from tests.scripts import load_stage

ROOT = Path(__file__).parents[1]
STAGE = load_stage("cot")

DATA = Path(__file__).parent / "data"
SCHEMA = Schema(("person", "organisation", "location", "misc"))
EXAMPLE = Example(
    "Peter Blackburn met EU officials in Brussels .",
    (Span(0, 15, "person"), Span(20, 22, "organisation"), Span(36, 44, "location")),
    SCHEMA,
    "ex-0",
)
GROUPED = get_format("grouped_json")


def completion(rationale: str | None, answer: str) -> Completion:
    text = answer if rationale is None else f"<think>\n{rationale}\n</think>\n{answer}"
    return Completion(text, 7)


RIGHT_RATIONALE = (
    '"Peter Blackburn" is a person\n"EU" is an organisation\n"Brussels" is a location\n'
    '"officials" is not an entity'
)
RIGHT_ANSWER = (
    '{"entities": {"person": ["Peter Blackburn"], "organisation": ["EU"], "location": ["Brussels"]}}'
)


def test_a_right_and_consistent_annotation_scores_one_on_both():
    sample = score_sample(EXAMPLE, completion(RIGHT_RATIONALE, RIGHT_ANSWER), GROUPED, "text")
    assert (sample.f1, sample.consistency) == (1.0, 1.0)
    assert sample.completion_tokens == 7
    assert json.loads(sample.answer) == json.loads(RIGHT_ANSWER)


def test_a_wrong_label_lowers_f1_and_a_rationale_that_disagrees_lowers_consistency():
    answer = '{"entities": {"person": ["Peter Blackburn"], "location": ["EU", "Brussels"]}}'
    sample = score_sample(EXAMPLE, completion(RIGHT_RATIONALE, answer), GROUPED, "text")
    # gold 3, predicted 3, 2 right: P = R = F1 = 2/3; rationale asserts EU as organisation: 2 of 3 agree.
    assert sample.f1 == pytest.approx(2 / 3)
    assert sample.consistency == pytest.approx(2 / 3)


def test_an_entity_answered_but_never_reasoned_about_lowers_consistency_only():
    rationale = '"Peter Blackburn" is a person\n"EU" is an organisation'
    sample = score_sample(EXAMPLE, completion(rationale, RIGHT_ANSWER), GROUPED, "text")
    assert sample.f1 == 1.0
    assert sample.consistency == pytest.approx(2 * 2 / (2 + 3))


@pytest.mark.parametrize(
    "text",
    [
        "",
        '<think>unfinished reasoning about "EU" is an organisation',
        '<think>"EU" is an organisation</think>{"entities": {"organisation": ["EU"',
        "```json\nnot json at all\n```",
        '{"entities": ["EU", 3, null]}',
        '<think></think>{"entities": {"weapon": ["EU"]}}',
    ],
)
def test_malformed_teacher_outputs_are_scored_not_raised(text):
    sample = score_sample(EXAMPLE, Completion(text, 0), GROUPED, "text")
    assert 0.0 <= sample.f1 < 1.0
    assert 0.0 <= sample.consistency <= 1.0
    # The stored answer is always a well-formed rendering, whatever the teacher wrote.
    assert GROUPED.parse(sample.answer, EXAMPLE.text, SCHEMA).ok


def test_the_best_sample_is_highest_f1_then_consistency_then_earliest():
    wrong = completion(RIGHT_RATIONALE, '{"entities": {"person": ["Peter Blackburn"]}}')
    right_unreasoned = completion('"EU" is an organisation', RIGHT_ANSWER)
    right = completion(RIGHT_RATIONALE, RIGHT_ANSWER)
    samples = [
        score_sample(EXAMPLE, c, GROUPED, "text", i)
        for i, c in enumerate([wrong, right_unreasoned, right, right])
    ]
    assert best_sample(samples, CoTArguments(output_dir="unused")).index == 2


def run_stage(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "cot.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=True,
    )


def gold_args(tmp_path: Path, **overrides) -> tuple[CoTArguments, PromptArguments, GenerationArguments]:
    """The three configs of a gold-template run over two small files, `overrides` for CoTArguments."""
    values = {
        "datasets": [str(DATA / "conll2003_mini.txt"), str(DATA / "ace2005_mini.json")],
        "output_dir": str(tmp_path),
    } | overrides
    return CoTArguments(**values), PromptArguments(), GenerationArguments(backend="gold-template")


@pytest.mark.parametrize("context_words", [0, 3])
def test_gold_template_context_words_set_what_each_rationale_line_quotes(tmp_path, context_words):
    args = gold_args(tmp_path, template_context_words=context_words)
    annotate(*args)
    records = [r for r in read_records(tmp_path / "annotations.jsonl") if r["entities"]]
    with_entities = sum(bool(e.spans) for path in args[0].datasets for e in read_dataset(path).examples)
    assert with_entities and len(records) == with_entities
    for record in records:
        lines = record["rationale"].splitlines()
        assert len(lines) == len(record["entities"]) + 1  # one assertion per entity, then "no other"
        assert all(("from its context: " in line) == (context_words > 0) for line in lines[:-1])
        assert record["consistency"] == 1.0 and record["accepted"]


def test_gold_template_annotations_are_accepted_and_labelled(tmp_path):
    report = annotate(*gold_args(tmp_path))
    records = read_records(tmp_path / "annotations.jsonl")
    assert report["sentences"] == len(records) == 7
    assert report["acceptance_rate"] == 1.0
    assert {r["teacher"] for r in records} == {"gold-template"}
    for record in records:
        example = record_example(record)
        assert GROUPED.parse(record["answer"], example.text, example.schema).spans == list(example.spans) or (
            not GROUPED.expresses(example)
        )
    assert json.loads((tmp_path / "report.json").read_text())["sentences"] == 7


def test_a_rerun_does_nothing_twice_and_repairs_a_half_written_line(tmp_path):
    annotate(*gold_args(tmp_path))
    path = tmp_path / "annotations.jsonl"
    complete = path.read_bytes()
    lines = complete.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + lines[3][:25])  # killed while writing the 4th record
    report = annotate(*gold_args(tmp_path))
    assert report["annotated_this_run"] == len(lines) - 3
    assert path.read_bytes() == complete
    assert annotate(*gold_args(tmp_path))["annotated_this_run"] == 0


def test_shards_merge_into_exactly_the_unsharded_result(tmp_path, monkeypatch):
    annotate(*gold_args(tmp_path / "whole"))
    texts = [record["text"] for record in read_records(tmp_path / "whole" / "annotations.jsonl")]
    instruction = cot.teacher_instruction
    asked: list[str] = []  # a shard builds only its share's prompts (all of 500k: ~0.6 GB more each)
    monkeypatch.setattr(
        cot, "teacher_instruction", lambda text, *a: asked.append(text) or instruction(text, *a)
    )
    for index in range(3):
        asked.clear()
        STAGE.main(*gold_args(tmp_path / "sharded", shard=f"{index}/3"))  # the stage, as array tasks run it
        assert sorted(asked) == sorted(texts[index::3])
    monkeypatch.setattr(cot, "teacher_instruction", instruction)
    assert not (tmp_path / "sharded" / "manifest.json").exists()  # a shard's would clash with the others'
    merged = merge_shards(*gold_args(tmp_path / "sharded")[:2])
    assert merged.read_bytes() == (tmp_path / "whole" / "annotations.jsonl").read_bytes()
    STAGE.main(*gold_args(tmp_path / "sharded", merge=True))  # the stage's --merge true, again
    assert merged.read_bytes() == (tmp_path / "whole" / "annotations.jsonl").read_bytes()
    report, whole = (json.loads((tmp_path / run / "report.json").read_text()) for run in ("sharded", "whole"))
    assert report["sentences"] == 7
    timing = {"annotated_this_run", "seconds_this_run", "sentences_per_second_this_run"}
    assert {k: v for k, v in report.items() if k not in timing} == {
        k: v for k, v in whole.items() if k not in timing
    }  # the merged set's counts, F1, consistency and tokens are the whole run's
    # The manifest beside the merged file is the whole run's, as SFT reads it for the lineage.
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert manifest["summary"]["sentences"] == 7 and manifest["config"]["merge"] is True


def test_a_relaunch_with_other_settings_is_refused_before_it_opens_the_first_attempt_s_wandb_run(
    tmp_path, monkeypatch
):
    """The W&B run of the first attempt would be resumed with the refused settings, then marked failed."""
    STAGE.main(*gold_args(tmp_path, template_context_words=0))
    opened: list[str] = []
    monkeypatch.setattr(STAGE, "continue_wandb_run", lambda *args, **kwargs: opened.append("resumed"))
    monkeypatch.setattr(STAGE, "wandb_run", lambda *args, **kwargs: opened.append("opened"))
    with pytest.raises(ValueError, match=r"annotations.jsonl:1: .* was annotated with other settings"):
        STAGE.main(*gold_args(tmp_path, template_context_words=3, report_to="wandb"))
    assert opened == []


def test_merging_an_incomplete_set_of_shards_is_refused(tmp_path):
    annotate(*gold_args(tmp_path, shard="0/3"))
    with pytest.raises(ValueError, match="complete set"):
        merge_shards(*gold_args(tmp_path)[:2])


def transformers_args(tmp_path: Path, teacher: Path) -> list[str]:
    return [
        "--datasets", str(DATA / "conll2003_mini.txt"), str(DATA / "crossner_ai_mini.txt"),
        "--output_dir", str(tmp_path),
        "--backend", "transformers",
        "--model_name_or_path", str(teacher),
        "--temperature", "0",
        "--max_new_tokens", "24",
        "--chunk_size", "1",
        "--descriptions", "false",
    ]  # fmt: skip


def test_transformers_teacher_writes_scored_records(tmp_path, tiny_model_dir):
    run_stage(*transformers_args(tmp_path, tiny_model_dir))
    records = read_records(tmp_path / "annotations.jsonl")
    assert len(records) == 7
    assert all(r["teacher"] == f"transformers:{tiny_model_dir}" for r in records)
    # The fixture's precondition: the random model never ends a reply within max_new_tokens.
    assert all(r["completion_tokens"] == 24 for r in records), "the random tiny model stopped early"
    # A random tiny model does not annotate well: its records are kept but not accepted. It rambles
    # past max_new_tokens, so they are failed, with the reason; greedy on a local engine, not retried.
    assert not any(r["accepted"] for r in records)
    assert {(r["status"], r["reason"]) for r in records} == {
        ("failed", "no usable reply in 1 try: cut off at max_new_tokens")
    }
    assert json.loads((tmp_path / "report.json").read_text())["failed"] == 7


def test_greedy_samples_are_one_answer_counted_once_and_said_so(tmp_path, tiny_model_dir):
    """At temperature 0 a backend answers once and repeats it: its tokens were counted per copy, inflating
    the throughput stage 1 logs, and nothing said that the samples could not differ."""
    args = transformers_args(tmp_path, tiny_model_dir)
    done = run_stage(*args, "--samples_per_sentence", "3", "--datasets", str(DATA / "conll2003_mini.txt"))
    assert "the 3 samples per sentence are one greedy answer repeated" in done.stderr
    records = read_records(tmp_path / "annotations.jsonl")
    assert records and all(r["completion_tokens"] == 24 for r in records)  # one reply of max_new_tokens


def test_a_run_killed_mid_way_resumes_to_the_same_result(tmp_path, tiny_model_dir):
    clean = tmp_path / "clean"
    run_stage(*transformers_args(clean, tiny_model_dir))
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / "cot.py"), *transformers_args(killed, tiny_model_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = killed / "annotations.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 2:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    partial = path.read_bytes().count(b"\n")
    assert 2 <= partial < 7
    run_stage(*transformers_args(killed, tiny_model_dir))
    # The same records, but that a sentence which failed before the kill was tried once more (greedy:
    # failed again, alike) and says so (its tries, and their count in its reason).
    resumed, uninterrupted = read_records(path), read_records(clean / "annotations.jsonl")

    def but_tries(record: dict) -> dict:
        return record | {"tries": None, "reason": re.sub(r"in \d+ tr(y|ies)", "", record["reason"] or "")}

    assert [but_tries(r) for r in resumed] == [but_tries(r) for r in uninterrupted]
    assert all((a["tries"] or 0) >= (b["tries"] or 0) for a, b in zip(resumed, uninterrupted, strict=True))


def test_settings_that_cannot_work_fail_before_the_teacher_loads(tmp_path):
    with pytest.raises(ValueError, match=r"match_mode 'txt': choose one of \['exact', 'text'\]"):
        STAGE.make_parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--match_mode", "txt"])
    args, prompt, _ = gold_args(tmp_path)
    absent = str(tmp_path / "no-teacher")  # loading it would fail with another error
    generation = GenerationArguments(
        backend="transformers", model_name_or_path=absent, backend_options={"batchsize": 2}
    )
    with pytest.raises(
        ValueError, match=r"unknown backend_options \['batchsize'\]: .* accepts \[.*'batch_size'"
    ):
        STAGE.main(args, prompt, generation)
    command = [
        sys.executable, str(ROOT / "stages" / "cot.py"),
        "--datasets", str(DATA / "conll2003_mini.txt"), "--output_dir", str(tmp_path),
        "--backend", "transformers", "--model_name_or_path", str(ROOT / "recipes"),  # a folder, not a model
        "--backend_options", '{"batchsize": 2}',
    ]  # fmt: skip
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: unknown backend_options ['batchsize']")


def test_the_reader_setting_is_how_stage_1_reads_its_files(tmp_path):
    conll = str(DATA / "conll2003_mini.txt")
    with pytest.raises(DataError, match=r"conll2003_mini.txt:1: .*invalid JSON"):
        annotate(*gold_args(tmp_path, datasets=[conll], reader="jsonl"))
    assert annotate(*gold_args(tmp_path, datasets=[conll], reader="conll"))["sentences"] == 4


def test_texts_with_unicode_line_separators_survive_writing_resuming_and_reading(tmp_path):
    """JSON leaves U+2028, U+2029 and U+0085 unescaped; lines must still end at "\\n" only."""
    texts = ["Ann\u2028Lee met Bo .", "Cy\x85left Oslo .", "Di\u2029came ."]
    data = tmp_path / "separators.jsonl"
    rows = [{"id": f"s{i}", "text": t, "entities": [], "labels": ["person"]} for i, t in enumerate(texts)]
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    annotate(*gold_args(tmp_path / "out", datasets=[str(data)]))
    assert [r["text"] for r in read_records(tmp_path / "out" / "annotations.jsonl")] == texts
    assert annotate(*gold_args(tmp_path / "out", datasets=[str(data)]))["annotated_this_run"] == 0


def test_backend_options_can_be_overridden_on_the_command_line_as_json():
    from reasoningner.generation import options_from

    _, _, generation = STAGE.make_parser().parse_args_and_config(
        args=[
            "--output_dir",
            "out",
            "--backend",
            "openai",
            "--backend_options",
            '{"base_url": "http://127.0.0.1:8000/v1"}',
        ]  # fmt: skip
    )
    assert generation.backend_options == {"base_url": "http://127.0.0.1:8000/v1"}
    with pytest.raises(ValueError, match="JSON object"):
        options_from("{not json")


def test_main_runs_stage_1_from_parsed_configs_and_writes_its_manifest(tmp_path):
    STAGE.main(*gold_args(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stage"] == "cot" and manifest["summary"]["accepted"] == 7
    assert (
        manifest["config"]["backend"] == "gold-template"
        and manifest["config"]["output_format"] == "grouped_json"
    )
    assert manifest["config"]["max_new_tokens"] == DEFAULT_MAX_NEW_TOKENS  # what it asked with, not null


def test_the_compact_prompt_keeps_labels_format_mode_and_sentence_in_a_third_of_the_length():
    from reasoningner.prompts import ner_instruction

    full = ner_instruction(EXAMPLE.text, SCHEMA, PromptArguments())
    compact = ner_instruction(EXAMPLE.text, SCHEMA, PromptArguments(compact_prompt=True))
    direct = ner_instruction(EXAMPLE.text, SCHEMA, PromptArguments(compact_prompt=True, reasoning=False))
    assert compact.endswith(f"Sentence: {EXAMPLE.text}") and all(label in compact for label in SCHEMA.labels)
    assert "grouped_json" in compact and compact != direct
    assert 3 * len(compact) < len(full)


ANY_RUN = CoTArguments(output_dir="unused")


@pytest.mark.parametrize(
    "text",
    [
        "<think>I am not able to help with this.</think>Sorry, I cannot answer.",
        '<think>hmm</think>{"entities": {"person": ["Nothing',
        "<think>nothing here, but the answer was cut",
        "<think>nothing here</think>",
    ],
)
def test_an_unreadable_answer_is_never_accepted_even_for_a_sentence_without_entities(text):
    empty = Example("Nothing happened on Monday .", (), SCHEMA, "ex-1")
    sample = score_sample(empty, Completion(text, 1), GROUPED, "text")
    assert sample.unreadable and not sample.acceptable(ANY_RUN)
    readable = score_sample(
        empty, completion("No entity: nothing here.", '{"entities": {}}'), GROUPED, "text"
    )
    assert (readable.f1, readable.unreadable, readable.acceptable(ANY_RUN)) == (1.0, (), True)
    fenced = score_sample(empty, completion("Nothing.", '```json\n{"entities": {}}\n```'), GROUPED, "text")
    assert fenced.acceptable(ANY_RUN)  # a wrapper around a clean answer


def test_an_answer_with_entities_in_another_shape_is_judged_by_its_f1():
    """No `entities` wrapper, a Python literal: read whole, stored re-rendered, so acceptable."""
    for answer in (
        '{"person": ["Peter Blackburn"], "organisation": ["EU"], "location": ["Brussels"]}',
        "{'entities': {'person': ['Peter Blackburn'], 'organisation': ['EU'], 'location': ['Brussels']}}",
    ):
        sample = score_sample(EXAMPLE, completion(RIGHT_RATIONALE, answer), GROUPED, "text")
        assert (sample.f1, sample.unreadable, sample.acceptable(ANY_RUN)) == (1.0, (), True)
        assert json.loads(sample.answer) == json.loads(RIGHT_ANSWER)
    empty = Example("Nothing happened on Monday .", (), SCHEMA, "ex-1")
    assert not score_sample(empty, completion("Nothing.", "{}"), GROUPED, "text").acceptable(ANY_RUN)


def test_the_best_sample_is_an_acceptable_one_before_a_higher_f1():
    # F1 1 but a rationale reasoning about two of three entities; F1 0.8 with a rationale that matches.
    right_unreasoned = completion('"Peter Blackburn" is a person\n"EU" is an organisation', RIGHT_ANSWER)
    partial = completion(
        '"Peter Blackburn" is a person\n"EU" is an organisation',
        '{"entities": {"person": ["Peter Blackburn"], "organisation": ["EU"]}}',
    )
    samples = [
        score_sample(EXAMPLE, c, GROUPED, "text", i) for i, c in enumerate([right_unreasoned, partial])
    ]
    assert [(s.f1, s.consistency) for s in samples] == [(1.0, pytest.approx(0.8)), (pytest.approx(0.8), 1.0)]
    lenient_f1 = CoTArguments(output_dir="unused", f1_threshold=0.75, min_consistency=1.0)
    assert best_sample(samples, lenient_f1).index == 1
    assert best_sample(samples, ANY_RUN).index == 0  # neither acceptable: the higher F1


def test_with_gold_answer_consistency_is_measured_against_the_gold_answer_it_is_stored_with():
    rationale = '"Peter Blackburn" is a person\n"EU" is an organisation\n"Brussels" is not an entity'
    answer = '{"entities": {"person": ["Peter Blackburn"], "organisation": ["EU"]}}'
    teacher = score_sample(EXAMPLE, completion(rationale, answer), GROUPED, "text")
    gold = score_sample(EXAMPLE, completion(rationale, answer), GROUPED, "text", gold_answer=True)
    assert teacher.f1 == gold.f1 == pytest.approx(0.8)
    assert teacher.consistency == 1.0  # the rationale agrees with the teacher's own answer
    assert gold.consistency < 1.0  # not with gold, which holds Brussels
    assert not gold.acceptable(CoTArguments(output_dir="unused", f1_threshold=0.75, gold_answer=True))


def test_progress_reports_the_records_since_its_last_report_and_the_time_left(monkeypatch) -> None:
    """Sentences done are those a rerun keeps (a failed one is asked again); the clock starts at the first
    record (an engine's start-up is no slow teacher)."""
    logged: list[dict[str, float]] = []
    progress = Progress(logged.append, every=3600, done=10, total=20)
    for status, f1 in [("accepted", 1.0), ("rejected", 0.5), ("failed", None)]:
        scores = {"f1": f1, "consistency": None if f1 is None else 1.0}
        progress.add(
            {
                "status": status,
                "accepted": status == "accepted",
                **scores,
                "completion_tokens": 4,
                "teacher": "t",
            }
        )
    assert logged == []  # not due yet: the end of the run reports it
    progress.report()
    [row] = logged
    assert (row["cot/sentences_done"], row["cot/sentences_left"]) == (12, 8)
    assert row["cot/acceptance_rate"] == row["cot/failure_rate"] == pytest.approx(1 / 3)
    assert (row["cot/teacher_f1_mean"], row["cot/consistency_mean"]) == (0.75, 1.0)  # over the scored
    speed = row["cot/sentences_per_second"]
    assert row["cot/hours_left"] == pytest.approx(8 / speed / 3600)
    assert row["cot/completion_tokens_per_second"] == pytest.approx(4 * speed)
    progress.report()
    assert len(logged) == 1  # nothing since: nothing logged

    every_record = Progress(logged.append, every=0, done=0, total=3)
    record = {
        "status": "accepted",
        "accepted": True,
        "f1": 1.0,
        "consistency": 1.0,
        "completion_tokens": 1,
        "teacher": "t",
    }
    every_record.add(record)
    assert len(logged) == 1  # the first starts the clock
    every_record.add(record)
    assert (logged[-1]["cot/sentences_done"], logged[-1]["cot/sentences_left"]) == (2, 1)

    # Speeds count the time from the first record: it came with the clock's start, not in that time.
    clock = iter([100.0, 101.0, 102.0, 102.0, 102.0, 103.0, 104.0, 104.0, 104.0, 104.0, 104.0])
    monkeypatch.setattr(cot.time, "monotonic", lambda: next(clock))
    timed = Progress(logged.append, every=3600, done=0, total=10)
    record = {"status": "accepted", "accepted": True, "f1": 1.0, "consistency": 1.0, "teacher": "t"}
    for tokens in (7, 3, 5):  # at 100, 101 and 102 s
        timed.add(record | {"completion_tokens": tokens})
    timed.report()  # at 102 s: 2 records in 2 s, the clock then 102 s
    assert logged[-1]["cot/sentences_per_second"] == 1.0
    assert logged[-1]["cot/completion_tokens_per_second"] == 4.0
    assert logged[-1]["cot/hours_left"] == pytest.approx(7 / 3600)
    timed.add(record | {"completion_tokens": 6})  # at 103 s
    timed.report()  # at 104 s: 1 record in 2 s
    assert logged[-1]["cot/sentences_per_second"] == 0.5
    alone = Progress(logged.append, every=3600, done=0, total=1)
    alone.add(record | {"completion_tokens": 1})  # at 104 s
    alone.report()  # a single record took no time it can show: no speed, the rest logged
    assert "cot/sentences_per_second" not in logged[-1] and logged[-1]["cot/sentences_done"] == 1
