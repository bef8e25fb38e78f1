"""Stage 1 as a preemptible cluster and a flaky teacher treat it: every sentence ends in the output
exactly once (accepted, rejected or failed), whatever fails and wherever a run is killed.

The teacher is a fake OpenAI-compatible server on 127.0.0.1 that knows the gold answer of every
prompt and draws each request's fate from a seeded mix (HTTP 500, a hang past the client's timeout,
invalid JSON, no choices, empty content, a cut-off answer, a wrong answer, the right one). Fates
are drawn from (seed, prompt, attempt), so a sentence meets the same faults in whatever order the
requests arrive. Nothing here leaves loopback, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from reasoningner.configs import CoTArguments, GenerationArguments, PromptArguments
from reasoningner.cot import (
    FAILURES_IN_A_ROW,
    RETRY_SEED_STRIDE,
    Task,
    annotate,
    annotation_settings,
    fresh_start,
    gold_template_sample,
    load_tasks,
    merge_shards,
    resume,
    teacher_name,
    unusable,
)
from reasoningner.files import exclusive
from reasoningner.formats import get_format
from reasoningner.generation import Completion, GenerationError
from reasoningner.jobs import STOPPED, TERMINATED
from reasoningner.readers import DataError
from reasoningner.records import read_records
from tests.conftest import HeldElsewhere
from tests.fake_openai import ChatHandler, ChatServer, serving
from tests.scripts import load_stage

ROOT = Path(__file__).parents[1]
SEED = 7
HANG_S = 1.5  # how long a hung request keeps its server thread; the client gives up after TIMEOUT_S
TIMEOUT_S = 0.5
LABELS = ["person", "organisation", "location"]
FAULT_MIX = {
    "http500": 0.20,
    "hang": 0.04,
    "badjson": 0.06,
    "nochoices": 0.06,
    "empty": 0.08,
    "length": 0.08,
    "wrong": 0.12,
    "right": 0.36,
}
Fate = Callable[[str, int], str]


def draw(mix: dict[str, float], *seed: object) -> str:
    """The fate `seed` picks from `mix` (probabilities summing to 1)."""
    point = random.Random("|".join(map(str, seed))).random()
    for fate, share in mix.items():
        point -= share
        if point < 0:
            return fate
    return fate


def flaky(prompt: str, attempt: int) -> str:
    """A fresh fate from `FAULT_MIX` on every attempt; but one prompt in ten is always cut off or
    empty, so that some sentences run out of the retries of incomplete replies too."""
    stubborn = draw({"length": 0.05, "empty": 0.05, "fresh": 0.9}, SEED, prompt)
    return draw(FAULT_MIX, SEED, prompt, attempt) if stubborn == "fresh" else stubborn


def write_inputs(path: Path, count: int) -> Path:
    """`count` JSONL sentences; every fifth one without entities."""
    lines = []
    for i in range(count):
        person, org, city = f"Ann{i} Lee", f"Acme{i}", f"Oslo{i}"
        text = f"{person} joined {org} in {city} ."
        spans = [(person, "person"), (org, "organisation"), (city, "location")]
        if i % 5 == 4:
            text, spans = f"Nothing happened on day {i} .", []
        entities = [{"start": text.index(t), "end": text.index(t) + len(t), "label": lab} for t, lab in spans]
        lines.append(json.dumps({"id": f"s{i}", "text": text, "entities": entities, "labels": LABELS}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def replies(tasks: Sequence[Task]) -> dict[str, tuple[str, str]]:
    """Prompt -> (the right reply: gold answer and a rationale that matches it, a wrong one)."""
    grouped = get_format("grouped_json")
    answers = {}
    for task in tasks:
        sample = gold_template_sample(task.example, grouped)
        right = f"<think>\n{sample.rationale}\n</think>\n{sample.answer}"
        answers[task.conversation[-1]["content"]] = (right, '<think>\n</think>\n{"entities": {}}')
    return answers


class Teacher(ChatServer):
    """The fake teacher: `fate(prompt, attempt)` says how it answers each request; `served` counts the
    fates, `asked` lists the prompts in arrival order."""

    def __init__(self, answers: dict[str, tuple[str, str]], fate: Fate, delay: float = 0.0) -> None:
        super().__init__(TeacherHandler)
        self.answers, self.fate, self.delay = answers, fate, delay
        self.served: Counter[str] = Counter()
        self.asked: list[str] = []


class TeacherHandler(ChatHandler):
    server: Teacher

    def respond(self, content: str, attempt: int, body: dict) -> None:
        with self.server.lock:
            fate = self.server.fate(content, attempt)
            self.server.served[fate] += 1
            self.server.asked.append(content)
        self.answer(fate, *self.server.answers[content])

    def answer(self, fate: str, right: str, wrong: str) -> None:
        time.sleep(self.server.delay)
        if fate == "http500":
            return self.send(500, {"error": "overloaded"})
        if fate == "http400":
            return self.send(400, {"error": "the prompt is longer than the model's context"})
        if fate == "hang":
            time.sleep(HANG_S)
        if fate == "badjson":
            return self.send_raw(200, b"<html>502 bad gateway</html>")
        if fate == "nochoices":
            return self.send(200, {"object": "error", "message": "engine restarting"})
        content, finish = {
            "empty": ("", "stop"),
            "length": (right[: len(right) // 2], "length"),
            "wrong": (wrong, "stop"),
        }.get(fate, (right, "stop"))
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        self.send(200, {"choices": [choice], "usage": {"completion_tokens": 5}})


@contextlib.contextmanager
def teacher(answers: dict[str, tuple[str, str]], fate: Fate, delay: float = 0.0) -> Iterator[Teacher]:
    with serving(Teacher(answers, fate, delay)) as server:
        yield server  # type: ignore[misc]


def cot_args(out: Path, inputs: Sequence[Path], **overrides: Any) -> CoTArguments:
    return CoTArguments(datasets=[str(p) for p in inputs], output_dir=str(out), **overrides)


def backend_options(url: str, concurrency: int = 8) -> dict[str, Any]:
    """Small timeouts and backoff, so that a run through many faults takes seconds."""
    return {
        "base_url": url,
        "api_key_env": None,
        "max_attempts": 3,
        "request_timeout": TIMEOUT_S,
        "backoff_base": 0.005,
        "backoff_max": 0.02,
        "max_concurrency": concurrency,
    }


def openai(url: str, concurrency: int = 8) -> GenerationArguments:
    return GenerationArguments(
        backend="openai", model_name_or_path="teacher", backend_options=backend_options(url, concurrency)
    )


GOLD = GenerationArguments(backend="gold-template")


def assert_each_sentence_once(records: list[dict[str, Any]], tasks: Sequence[Task], report: dict) -> None:
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)), "a sentence was written twice"
    assert set(keys) == {t.key for t in tasks}, "a sentence was lost"
    statuses = Counter(r["status"] for r in records)
    assert set(statuses) <= {"accepted", "rejected", "failed"}
    assert [report[s] for s in ("accepted", "rejected", "failed")] == [
        statuses["accepted"],
        statuses["rejected"],
        statuses["failed"],
    ]
    assert report["accepted"] + report["rejected"] + report["failed"] == report["sentences"] == len(tasks)
    for record in records:
        assert record["accepted"] == (record["status"] == "accepted")
        if record["status"] != "rejected":  # a rejected one says why only for an unreadable answer
            assert (record["reason"] is None) == (record["status"] == "accepted")


# --- a flaky teacher ----------------------------------------------------------------------------------


def test_a_flaky_teacher_ends_every_sentence_once_and_a_rerun_retries_only_the_failed(tmp_path: Path) -> None:
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "flaky.jsonl", 60)], chunk_size=16)
    prompt = PromptArguments()
    tasks = load_tasks(args, prompt)
    key_of = {t.conversation[-1]["content"]: t.key for t in tasks}
    with teacher(replies(tasks), flaky) as server:
        report = annotate(args, prompt, openai(server.base_url))
        first = read_records(tmp_path / "out" / "annotations.jsonl")
        assert_each_sentence_once(first, tasks, report)
        assert set(server.served) == set(FAULT_MIX), "the mix should serve every fault"
        assert all(report[s] > 0 for s in ("accepted", "rejected", "failed")), report
        failed = {r["key"] for r in first if r["status"] == "failed"}
        reasons = [r["reason"] for r in first if r["key"] in failed]
        assert any("gave up after 3 attempts" in reason for reason in reasons), reasons
        assert any(re.search("no usable reply in 3 tries: (empty reply|cut off)", r) for r in reasons), (
            reasons
        )
        # A failure is not a teacher F1 of 0: the teacher's scores leave failed sentences out.
        assert all(r["f1"] is None and r["consistency"] is None for r in first if r["key"] in failed)
        scored = [r["f1"] for r in first if r["key"] not in failed]
        assert report["teacher_f1_mean"] == pytest.approx(sum(scored) / len(scored))

        server.asked.clear()
        again = annotate(args, prompt, openai(server.base_url))
        second = read_records(tmp_path / "out" / "annotations.jsonl")
    assert {key_of[p] for p in server.asked} == failed, "the rerun asks for the failed sentences only"
    assert again["annotated_this_run"] == len(failed)
    assert_each_sentence_once(second, tasks, again)
    kept = {r["key"]: r for r in first if r["key"] not in failed}
    assert {r["key"]: r for r in second if r["key"] in kept} == kept


def test_a_lone_surrogate_in_a_reply_or_a_text_neither_fails_the_run_nor_its_reruns(tmp_path: Path) -> None:
    """JSON can escape half an emoji ("\\ud83d"): a record holding one failed strict UTF-8 at every rerun
    of that sentence, and the run with it. A server's is replaced (U+FFFD; a tokenizer would refuse it
    in SFT); a dataset's is written as its escape and read back as it was."""
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 3)])
    prompt = PromptArguments()
    tasks = load_tasks(args, prompt)
    answers = {
        content: (right.replace("<think>\n", "<think>\n\ud83d ", 1), wrong)
        for content, (right, wrong) in replies(tasks).items()
    }
    with teacher(answers, lambda content, attempt: "right") as server:
        assert annotate(args, prompt, openai(server.base_url))["accepted"] == 3
        records = read_records(tmp_path / "out" / "annotations.jsonl")
        assert all(record["rationale"].startswith("\ufffd ") for record in records)

    inputs = tmp_path / "half.jsonl"
    lines = (tmp_path / "in.jsonl").read_text(encoding="utf-8").splitlines()
    half = [
        json.dumps({**json.loads(line), "text": json.loads(line)["text"][:-1] + "\ud83d."}) for line in lines
    ]
    inputs.write_text("\n".join(half) + "\n", encoding="utf-8")
    args = cot_args(tmp_path / "gold", [inputs])
    assert annotate(args, prompt, GOLD)["accepted"] == 3
    records = read_records(tmp_path / "gold" / "annotations.jsonl")
    assert all(record["text"].endswith("\ud83d.") for record in records)
    assert annotate(args, prompt, GOLD)["annotated_this_run"] == 0  # read back: nothing to redo
    assert read_records(tmp_path / "gold" / "annotations.jsonl") == records


class SeededTeacher(TeacherHandler):
    """A seeded engine: the same seed gives the same samples; the seeds in `server.cut` are cut off for
    every prompt, the others answer right."""

    def respond(self, content: str, attempt: int, body: dict) -> None:
        with self.server.lock:
            self.server.asked.append(f"seed {body.get('seed')}")
        cut = body.get("seed") in self.server.cut  # type: ignore[attr-defined]
        self.answer("length" if cut else "right", *self.server.answers[content])


@contextlib.contextmanager
def seeded_teacher(args: CoTArguments, cut_tries: int) -> Iterator[tuple[Teacher, GenerationArguments]]:
    """`SeededTeacher` cutting off the first `cut_tries` tries' seeds, and sampling settings for it."""
    server = Teacher(replies(load_tasks(args, PromptArguments())), flaky)
    server.RequestHandlerClass = SeededTeacher
    server.cut = {k * RETRY_SEED_STRIDE for k in range(cut_tries)}  # type: ignore[attr-defined]
    with serving(server):
        sampled = openai(server.base_url)
        sampled.temperature = 0.7
        yield server, sampled


def test_a_finished_shard_rerun_loads_no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resubmitting a whole array to fill its gaps reruns the finished shards: each would load the
    teacher (minutes for a large model offline) to ask nothing."""
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 3)])
    with teacher(replies(load_tasks(args, PromptArguments())), lambda *_: "right") as server:
        first = annotate(args, PromptArguments(), openai(server.base_url))
    built: list[str] = []
    monkeypatch.setattr(GenerationArguments, "build_generator", lambda self: built.append("engine"))
    again = annotate(args, PromptArguments(), openai(server.base_url))
    assert built == [] and again["accepted"] == first["accepted"] == 3


def test_a_retry_samples_with_another_seed(tmp_path: Path) -> None:
    """vLLM draws a request's samples from its seed: a retry with the same seed repeats the cut-off."""
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 4)])
    with seeded_teacher(args, cut_tries=1) as (server, sampled):
        report = annotate(args, PromptArguments(), sampled)
    assert report["accepted"] == 4, report
    assert sorted(set(server.asked)) == ["seed 0", f"seed {RETRY_SEED_STRIDE}"]


def test_a_sentence_cut_off_is_asked_again_with_the_next_chunk_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry round of its own after each chunk (a few sentences, the longest replies) left a batching
    teacher nearly idle for that time: the retry joins the next chunk, which takes one new sentence
    fewer; the last chunk's retries go on alone. Its seed reaches the teacher in the same call."""
    from reasoningner.generation import OpenAIGenerator

    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 7)], chunk_size=3)
    tasks = load_tasks(args, PromptArguments())
    ids = {t.conversation[-1]["content"]: t.example.id for t in tasks}
    calls: list[list[tuple[str, int | None]]] = []
    asked = OpenAIGenerator.generate_outcomes

    def recorded(self, conversations, sampling, *seeds):  # type: ignore[no-untyped-def]
        each = seeds[0] if seeds else [sampling.seed] * len(conversations)
        calls.append([(ids[c[-1]["content"]], seed) for c, seed in zip(conversations, each, strict=True)])
        return asked(self, conversations, sampling, *seeds)

    monkeypatch.setattr(OpenAIGenerator, "generate_outcomes", recorded)
    cut = {tasks[0].conversation[-1]["content"]: 1, tasks[6].conversation[-1]["content"]: 2}
    with teacher(replies(tasks), lambda p, a: "length" if a <= cut.get(p, 0) else "right") as server:
        report = annotate(args, PromptArguments(), openai(server.base_url))
    retry, again = RETRY_SEED_STRIDE, 2 * RETRY_SEED_STRIDE
    assert calls == [
        [("s0", 0), ("s1", 0), ("s2", 0)],
        [("s0", retry), ("s3", 0), ("s4", 0)],
        [("s5", 0), ("s6", 0)],
        [("s6", retry)],
        [("s6", again)],
    ]
    assert report["accepted"] == 7, report
    seeds = [body.get("seed") for _, body, _ in server.requests if body["messages"][-1]["content"] in cut]
    assert sorted(seeds) == [0, 0, retry, retry, again]


def test_a_stop_before_the_job_s_limit_records_the_sentences_left_to_retry_with_their_tries(
    tmp_path: Path, slurm_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cut-off sentence waits for the next chunk; when the job's end comes first it is written as
    failed with its try, and the requeued attempt asks it with the next seed (the same one would repeat
    the cut-off on a seeded teacher), leaving each sentence once in the file."""
    from reasoningner import configs

    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 4)], chunk_size=2)
    tasks = load_tasks(args, PromptArguments())
    path = tmp_path / "out" / "annotations.jsonl"
    cut = tasks[1].conversation[-1]["content"]
    with teacher(replies(tasks), lambda p, a: "length" if p == cut and a == 1 else "right") as server:
        monkeypatch.setattr(configs, "seconds_left", lambda margin: 600.0)  # within the margin
        with pytest.raises(SystemExit) as stopped:
            annotate(args, PromptArguments(), openai(server.base_url))
        assert stopped.value.code == STOPPED and slurm_job.read_text() == "requeue 4242\n"
        records = {r["key"]: r for r in read_records(path)}
        assert [records[t.key]["status"] for t in tasks[:2]] == ["accepted", "failed"] and len(records) == 2
        assert records[tasks[1].key]["tries"] == 1
        assert records[tasks[1].key]["reason"].startswith("no usable reply in 1 try: cut off")

        monkeypatch.setattr(configs, "seconds_left", lambda margin: None)
        report = annotate(args, PromptArguments(), openai(server.base_url))
    assert report["accepted"] == 4, report
    assert_each_sentence_once(read_records(path), tasks, report)
    seeds = [body.get("seed") for _, body, _ in server.requests if body["messages"][-1]["content"] == cut]
    assert seeds == [0, RETRY_SEED_STRIDE]


class Stalling(TeacherHandler):
    """Holds the retries of `server.stalled` until `server.released` is set (or 120 s): in flight when
    the run stops."""

    def respond(self, content: str, attempt: int, body: dict) -> None:
        if content == self.server.stalled and attempt > 1:  # type: ignore[attr-defined]
            self.server.released.wait(120)  # type: ignore[attr-defined]
        super().respond(content, attempt, body)


def test_a_teacher_down_while_a_sentence_waits_for_its_retry_records_its_tries(tmp_path: Path) -> None:
    """The sentence cut off in one chunk is asked again in the next; the teacher dies there (64 new
    sentences failed in a row) with its retry in flight. It is recorded failed with that try, and the
    rerun asks it with a seed no try used (a seeded teacher would repeat the cut-off)."""
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 132)], chunk_size=66)
    tasks = load_tasks(args, PromptArguments())
    stalled = tasks[0].conversation[-1]["content"]
    first_chunk = {t.conversation[-1]["content"] for t in tasks[:66]}
    server = Teacher(
        replies(tasks),
        lambda p, a: "length" if p == stalled and a == 1 else "right" if p in first_chunk else "http500",
    )
    server.RequestHandlerClass = Stalling
    server.stalled, server.released = stalled, threading.Event()  # type: ignore[attr-defined]
    path = tmp_path / "out" / "annotations.jsonl"
    with serving(server):
        teacher_args = openai(server.base_url)
        teacher_args.backend_options["request_timeout"] = 30  # type: ignore[index]
        with pytest.raises(GenerationError, match=f"failed {FAILURES_IN_A_ROW} sentences in a row"):
            annotate(args, PromptArguments(), teacher_args)
        record = next(r for r in read_records(path) if r["key"] == tasks[0].key)
        assert (record["status"], record["tries"]) == ("failed", 2)
        assert record["reason"].endswith("; try 2 cut short")  # in flight, not failed by the teacher
        server.released.set()  # type: ignore[attr-defined]
        server.fate = lambda p, a: "right"
        report = annotate(args, PromptArguments(), teacher_args)
    assert report["accepted"] == 132, report
    assert_each_sentence_once(read_records(path), tasks, report)
    seeds = [body.get("seed") for _, body, _ in server.requests if body["messages"][-1]["content"] == stalled]
    assert seeds == [0, RETRY_SEED_STRIDE, 2 * RETRY_SEED_STRIDE]


def test_sigterm_records_the_sentence_whose_retry_is_in_flight_and_ends_the_run_at_once(
    tmp_path: Path,
) -> None:
    """A preemption or scancel sends SIGTERM, then SIGKILL after SLURM's KillWait (30 s): the sentence
    whose retry is in flight is recorded failed with its tries (a rerun asks it with a seed no try used),
    and the run ends with 143 at once, asking no requeue (a cancelled job must stay cancelled)."""
    inputs = write_inputs(tmp_path / "in.jsonl", 6)
    out, log = tmp_path / "out", tmp_path / "stage.log"
    tasks = load_tasks(cot_args(out, [inputs]), PromptArguments())
    stalled = tasks[0].conversation[-1]["content"]
    server = Teacher(replies(tasks), lambda p, a: "length" if p == stalled and a == 1 else "right")
    server.RequestHandlerClass = Stalling
    server.stalled, server.released = stalled, threading.Event()  # type: ignore[attr-defined]
    with serving(server):
        running = start_stage(out, inputs, server.base_url, log, chunk_size=2)
        try:
            deadline = time.monotonic() + 60
            # The second chunk asks s0 again (held by the teacher) with s2: once s2 is written, s0 waits.
            while tasks[2].key not in {r["key"] for r in complete_lines(out / "annotations.jsonl")}:
                assert running.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            running.send_signal(signal.SIGTERM)
            assert running.wait(timeout=20) == TERMINATED, log.read_text()
        finally:
            running.kill()
            server.released.set()  # type: ignore[attr-defined]
    records = {r["key"]: r for r in read_records(out / "annotations.jsonl")}
    assert (records[tasks[0].key]["status"], records[tasks[0].key]["tries"]) == ("failed", 2)
    assert set(records) == {t.key for t in tasks[:3]}
    assert "cot: SIGTERM (a preemption, scancel) with 2 of 6 done" in log.read_text()


def test_sigterm_while_a_record_is_written_still_records_the_sentence_waiting_and_a_second_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The signal raises wherever the main thread is, here while stage 1 writes a record (not inside the
    teacher's generator): once the record is written; a second one, while the waiting sentence is
    recorded, must not cut that short."""
    from reasoningner import cot

    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 4)], chunk_size=2)
    tasks = load_tasks(args, PromptArguments())
    stalled = tasks[0].conversation[-1]["content"]
    built = cot.build_record

    def build_then_signal(task: Task, outcome: Any, *rest: Any) -> dict[str, Any]:
        record = built(task, outcome, *rest)
        if task.key in (tasks[2].key, tasks[0].key):  # s2 while s0's retry is held; then s0's own record
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    monkeypatch.setattr(cot, "build_record", build_then_signal)
    from reasoningner.generation import OpenAIGenerator

    at_close: list[set[str]] = []  # the sentences with a record when the teacher's client is closed
    monkeypatch.setattr(
        OpenAIGenerator,
        "close",
        lambda self: at_close.append(
            {r["key"] for r in read_records(tmp_path / "out" / "annotations.jsonl")}
        ),
    )
    handler = signal.getsignal(signal.SIGTERM)
    server = Teacher(replies(tasks), lambda p, a: "length" if p == stalled and a == 1 else "right")
    server.RequestHandlerClass = Stalling
    server.stalled, server.released = stalled, threading.Event()  # type: ignore[attr-defined]
    with serving(server), pytest.raises(SystemExit) as ended:
        try:
            annotate(args, PromptArguments(), openai(server.base_url))
        finally:
            server.released.set()  # type: ignore[attr-defined]
    assert ended.value.code == TERMINATED
    assert signal.getsignal(signal.SIGTERM) == handler  # put back
    records = {r["key"]: r for r in read_records(tmp_path / "out" / "annotations.jsonl")}
    assert set(records) == {tasks[0].key, tasks[1].key, tasks[2].key}  # s2's, then the signal raised
    assert (records[tasks[0].key]["status"], records[tasks[0].key]["tries"]) == ("failed", 2)
    assert records[tasks[0].key]["reason"].endswith("; try 2 cut short")
    assert at_close == [set(records)]  # recorded first: an engine's shutdown may take seconds
    assert "with 2 of 4 done" in capsys.readouterr().out  # s1 and s2: the record written is counted


def test_sigterm_while_the_last_try_s_record_of_a_retried_sentence_is_written_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried sentence's final record and its leaving the sentences that wait are one step: a signal
    between them had neither recorded its answer nor kept it waiting, so it had no record at all."""
    from reasoningner import cot

    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 4)], chunk_size=2)
    tasks = load_tasks(args, PromptArguments())
    retried = tasks[0].conversation[-1]["content"]
    built = cot.build_record

    def signal_then_build(task: Task, outcome: Any, *rest: Any) -> dict[str, Any]:
        if task.key == tasks[0].key:  # its second try's answer
            os.kill(os.getpid(), signal.SIGTERM)
        return built(task, outcome, *rest)

    monkeypatch.setattr(cot, "build_record", signal_then_build)
    fate = lambda p, a: "length" if p == retried and a == 1 else "right"  # noqa: E731
    with teacher(replies(tasks), fate) as server, pytest.raises(SystemExit) as ended:
        annotate(args, PromptArguments(), openai(server.base_url))
    assert ended.value.code == TERMINATED
    records = [r for r in read_records(tmp_path / "out" / "annotations.jsonl") if r["key"] == tasks[0].key]
    assert [r["status"] for r in records] == ["accepted"]  # written once, with its answer


def test_a_sigterm_whose_raise_was_lost_still_ends_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An asyncio callback logs and drops an exception: the signal is checked again at the next outcome."""
    from reasoningner import cot
    from reasoningner.jobs import Terminated

    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 6)], chunk_size=2)
    tasks = load_tasks(args, PromptArguments())
    built = cot.build_record

    def build_then_lose_a_signal(task: Task, outcome: Any, *rest: Any) -> dict[str, Any]:
        if task.key == tasks[0].key:
            with contextlib.suppress(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
        return built(task, outcome, *rest)

    monkeypatch.setattr(cot, "build_record", build_then_lose_a_signal)
    with teacher(replies(tasks), lambda p, a: "right") as server, pytest.raises(SystemExit) as ended:
        annotate(args, PromptArguments(), openai(server.base_url))
    assert ended.value.code == TERMINATED
    assert len(read_records(tmp_path / "out" / "annotations.jsonl")) < 6  # it stopped at the next outcome


def test_the_sigterm_a_requeue_sends_does_not_cut_the_stop_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scontrol requeue` has SLURM signal the attempt: the stage still says so and exits 75 (a job that
    exits otherwise is taken for a failed one)."""
    inputs = write_inputs(tmp_path / "in.jsonl", 6)
    out, log = tmp_path / "out", tmp_path / "stage.log"
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "calls"}"\nkill -TERM $PPID\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 600))  # within stop_before_job_end
    tasks = load_tasks(cot_args(out, [inputs]), PromptArguments())
    with teacher(replies(tasks), lambda p, a: "right") as server:
        running = start_stage(out, inputs, server.base_url, log, chunk_size=2)
        assert running.wait(timeout=120) == STOPPED, log.read_text()
    assert (tmp_path / "calls").read_text() == "requeue 4242\n"
    assert "job 4242 requeued" in log.read_text()


def test_a_recipe_may_leave_the_teacher_unseeded(tmp_path: Path) -> None:
    """`seed: null` keeps vLLM's fast sampler (it samples each seeded request alone): no request names one."""
    inputs = write_inputs(tmp_path / "in.jsonl", 3)
    args = cot_args(tmp_path / "out", [inputs])
    with seeded_teacher(args, cut_tries=0) as (server, sampled):
        recipe = tmp_path / "cot.yaml"
        recipe.write_text(
            f"datasets: [{inputs}]\noutput_dir: {tmp_path / 'out'}\n"
            "backend: openai\nmodel_name_or_path: teacher\n"
            f"backend_options: {json.dumps(sampled.backend_options)}\ntemperature: 0.7\nseed: null\n"
        )
        parser = load_stage("cot").make_parser()
        report = annotate(*parser.parse_args_and_config(args=["--config", str(recipe)]))
    assert report["accepted"] == 3 and set(server.asked) == {"seed None"}


@pytest.mark.parametrize("killed_after_the_rewrite", [False, True])
def test_a_rerun_retries_the_failed_with_seeds_no_earlier_run_used(
    tmp_path: Path, killed_after_the_rewrite: bool
) -> None:
    """Also when a rerun was killed right after its resume dropped the failed records (before their
    retries wrote new ones): their tries are kept apart until then."""
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 3)])
    path = tmp_path / "out" / "annotations.jsonl"
    with seeded_teacher(args, cut_tries=3) as (server, sampled):  # one run's three tries
        first = annotate(args, PromptArguments(), sampled)
        assert first["failed"] == 3, first
        assert {r["tries"] for r in read_records(path)} == {3}
        if killed_after_the_rewrite:
            tasks = load_tasks(args, PromptArguments())
            resume(path, tasks, teacher_name(sampled), annotation_settings(args, sampled))
            assert read_records(path) == []
        again = annotate(args, PromptArguments(), sampled)
    assert again["accepted"] == 3, again
    assert sorted(set(server.asked)) == [f"seed {k * RETRY_SEED_STRIDE}" for k in range(4)]
    assert not (tmp_path / "out" / "annotations.jsonl.tries.json").exists()  # no failed sentence left


def test_a_sentence_that_fails_again_in_a_rerun_counts_every_try_in_its_record(tmp_path: Path) -> None:
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", 2)])
    with seeded_teacher(args, cut_tries=6) as (_, sampled):  # two runs' tries
        annotate(args, PromptArguments(), sampled)
        again = annotate(args, PromptArguments(), sampled)
    assert again["failed"] == 2, again
    records = read_records(tmp_path / "out" / "annotations.jsonl")
    assert {(r["tries"], r["reason"].split(":")[0]) for r in records} == {(6, "no usable reply in 6 tries")}


def test_a_teacher_that_fails_every_sentence_stops_the_run(tmp_path: Path) -> None:
    """A dead server (here: a port nobody listens on) stops the run after FAILURES_IN_A_ROW sentences,
    rather than writing the rest of the data as failed while the job looks done."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"  # closed once the block ends
    args = cot_args(tmp_path / "out", [write_inputs(tmp_path / "in.jsonl", FAILURES_IN_A_ROW + 20)])
    with pytest.raises(GenerationError, match=f"failed {FAILURES_IN_A_ROW} sentences in a row"):
        annotate(args, PromptArguments(), openai(url))
    records = read_records(tmp_path / "out" / "annotations.jsonl")
    assert len(records) == FAILURES_IN_A_ROW and {r["status"] for r in records} == {"failed"}


def test_a_teacher_whose_every_reply_is_cut_off_stops_the_run(tmp_path: Path) -> None:
    """A thinking teacher whose own thinking runs past max_new_tokens answers every request, so no request
    failed: the run went through the whole dataset writing failed records, hours of a GPU node."""
    inputs = write_inputs(tmp_path / "in.jsonl", 3 * FAILURES_IN_A_ROW)
    args = cot_args(tmp_path / "out", [inputs])
    answers = replies(load_tasks(args, PromptArguments()))
    with (
        teacher(answers, lambda *_: "length") as server,
        pytest.raises(
            GenerationError, match=r"last 64 sentences asked held no usable sample \(last: cut off"
        ),
    ):
        annotate(args, PromptArguments(), openai(server.base_url))
    records = read_records(tmp_path / "out" / "annotations.jsonl")
    assert 0 < len(records) < len(answers) and {r["status"] for r in records} == {"failed"}
    assert all("cut off at max_new_tokens" in r["reason"] for r in records)


def test_sentences_whose_every_try_is_cut_off_do_not_stop_a_teacher_that_answers_the_others(
    tmp_path: Path,
) -> None:
    """Hard sentences are retried, each retry one more cut-off reply: a last chunk of them, or a rerun
    asking only the failed, is no sign of a teacher that never answers usably, and must end, not stop."""
    hard_count = FAILURES_IN_A_ROW // 2 + 1  # their three tries each: more replies than the limit
    inputs = write_inputs(tmp_path / "in.jsonl", hard_count + 7)
    args = cot_args(tmp_path / "out", [inputs])
    answers = replies(load_tasks(args, PromptArguments()))
    hard = set(list(answers)[-hard_count:])
    fate = lambda prompt, attempt: "length" if prompt in hard else "right"  # noqa: E731
    with teacher(answers, fate) as server:
        report = annotate(args, PromptArguments(), openai(server.base_url))
        assert (report["failed"], report["accepted"]) == (hard_count, 7), report
        again = annotate(args, PromptArguments(), openai(server.base_url))  # asks only the hard ones
    assert (again["failed"], again["accepted"]) == (hard_count, 7), again


def test_a_teacher_that_dies_in_a_slurm_job_requeues_it_and_one_that_never_answered_ends_it(
    tmp_path: Path, slurm_job: Path
) -> None:
    """cot.slurm runs the server with the stage: a requeue restarts a server that died mid-run, where
    exit 1 ended a days-long array task for good. A teacher that never answered is a setup to fix."""
    inputs = write_inputs(tmp_path / "in.jsonl", FAILURES_IN_A_ROW + 20)
    args = cot_args(tmp_path / "out", [inputs])
    answers = replies(load_tasks(args, PromptArguments()))
    first = next(iter(answers))

    def dies(prompt: str, attempt: int) -> str:
        return "right" if prompt == first else "http500"

    with teacher(answers, dies) as server, pytest.raises(SystemExit) as ended:
        annotate(args, PromptArguments(), openai(server.base_url, concurrency=1))
    assert ended.value.code == STOPPED and slurm_job.read_text().split() == ["requeue", "4242"]
    records = read_records(tmp_path / "out" / "annotations.jsonl")
    assert [r["status"] for r in records] == ["accepted"] + ["failed"] * FAILURES_IN_A_ROW
    never = cot_args(tmp_path / "never", [inputs])
    with teacher(answers, lambda *_: "http500") as server, pytest.raises(GenerationError, match="in a row"):
        annotate(never, PromptArguments(), openai(server.base_url))
    assert slurm_job.read_text().split() == ["requeue", "4242"]


def test_prompts_the_teacher_refuses_do_not_stop_the_run_but_a_teacher_refusing_everything_does(
    tmp_path: Path,
) -> None:
    """Refusals (prompts too long) come back at once, ahead of the answers a chunk waits for: a run of
    them, before any answer too, is no sign of a dead teacher, on a first run or a rerun. A group asked
    together that gets refusals only (a server refusing every request) stops the run."""
    inputs = write_inputs(tmp_path / "in.jsonl", FAILURES_IN_A_ROW + 20)
    args = cot_args(tmp_path / "out", [inputs], chunk_size=256)  # one group holds all
    answers = replies(load_tasks(args, PromptArguments()))
    refused = set(list(answers)[: FAILURES_IN_A_ROW + 10])  # all first, before any answer

    def fate(prompt: str, attempt: int) -> str:
        return "http400" if prompt in refused else "right"

    with teacher(answers, fate) as server:
        report = annotate(args, PromptArguments(), openai(server.base_url, concurrency=1))
        assert (report["failed"], report["accepted"]) == (len(refused), len(answers) - len(refused)), report
        again = annotate(args, PromptArguments(), openai(server.base_url, concurrency=1))  # retries them
    assert (again["failed"], again["accepted"]) == (report["failed"], report["accepted"]), again
    every = cot_args(tmp_path / "every", [inputs], chunk_size=256)
    with (
        teacher(answers, lambda *_: "http400") as server,
        pytest.raises(GenerationError, match="refused all"),
    ):
        annotate(every, PromptArguments(), openai(server.base_url))


def test_an_answer_the_engine_aborted_is_no_answer() -> None:
    assert unusable(Completion("<think>half", 3, "abort")) == "ended by the engine (abort)"
    assert unusable(Completion("<think>x</think>{}", 3, "stop")) is None


# --- kills ----------------------------------------------------------------------------------------------

KILL_MIX = {"empty": 0.1, "wrong": 0.3, "right": 0.6}  # per prompt: the same answer on every attempt


def start_stage(out: Path, inputs: Path, url: str, log: Path, chunk_size: int = 8) -> subprocess.Popen:
    command = [
        sys.executable, str(ROOT / "stages" / "cot.py"),
        "--datasets", str(inputs),
        "--output_dir", str(out),
        "--backend", "openai",
        "--model_name_or_path", "teacher",
        "--backend_options", json.dumps(backend_options(url, concurrency=2)),
        "--chunk_size", str(chunk_size),
    ]  # fmt: skip
    with log.open("ab") as sink:
        return subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=sink)


def complete_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].split(b"\n") if line.strip()]


def test_killed_at_random_moments_and_rerun_each_time_the_output_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    inputs = write_inputs(tmp_path / "kills.jsonl", 48)
    prompt = PromptArguments()
    tasks = load_tasks(cot_args(tmp_path / "reference", [inputs]), prompt)
    log = tmp_path / "runs.log"
    rng = random.Random(SEED)
    path = tmp_path / "killed" / "annotations.jsonl"
    kills: list[tuple[str, int]] = []
    with teacher(replies(tasks), lambda p, _: draw(KILL_MIX, SEED, p), delay=0.02) as server:
        annotate(cot_args(tmp_path / "reference", [inputs]), prompt, openai(server.base_url, concurrency=2))
        for _ in range(5):
            process = start_stage(tmp_path / "killed", inputs, server.base_url, log)
            start = len(complete_lines(path))
            target = start + rng.randint(0, 8)  # records to wait for; 0: kill during start-up
            deadline = time.monotonic() + 30
            while process.poll() is None and len(complete_lines(path)) < target:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.005)
            if target == start:  # before or during the lock, the resume, the first requests
                time.sleep(rng.uniform(0.0, 0.6))
            how = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
            process.send_signal(how)
            process.wait(timeout=30)
            done = complete_lines(path)
            kills.append((how.name, len(done)))
            assert len({r["key"] for r in done}) == len(done), f"a key written twice after {kills}"
        finisher = start_stage(tmp_path / "killed", inputs, server.base_url, log)
        assert finisher.wait(timeout=60) == 0, log.read_text()
    assert any(0 < n < len(tasks) for _, n in kills), f"no kill landed mid-run: {kills}"
    records = read_records(path)
    assert len(records) == len({r["key"] for r in records}) == len(tasks)
    reference = read_records(tmp_path / "reference" / "annotations.jsonl")
    # A sentence that failed for good was tried again by every rerun after a complete one (a rerun that
    # ran to the end before its kill): its record differs from the uninterrupted run's only by its tries
    # (and their count in its reason).
    tries = {r["key"]: r.pop("tries") for r in records if r["status"] == "failed"}
    reference_tries = {r["key"]: r.pop("tries") for r in reference if r["status"] == "failed"}
    for record in (*records, *reference):
        record["reason"] = re.sub(r"in \d+ tr(y|ies)", "in N tries", record["reason"] or "")
    assert {r["key"]: r for r in records} == {r["key"]: r for r in reference}, kills
    assert tries.keys() == reference_tries.keys() and tries  # every rerun tried them again
    assert all(tries[key] >= reference_tries[key] for key in tries), (tries, kills)


# --- shards -------------------------------------------------------------------------------------------


def test_merge_refuses_missing_cut_short_half_written_running_and_inconsistent_shards(
    tmp_path: Path, held_elsewhere: HeldElsewhere
) -> None:
    inputs = [write_inputs(tmp_path / "merge.jsonl", 30)]
    out = tmp_path / "out"
    prompt = PromptArguments()

    def shard(index: int, other_prompt: PromptArguments | None = None) -> None:
        annotate(cot_args(out, inputs, shard=f"{index}/3"), other_prompt or prompt, GOLD)

    def merge() -> Path:
        return merge_shards(cot_args(out, inputs), prompt)

    shard(0)
    shard(1)
    with pytest.raises(
        ValueError, match=r"shard 2/3: annotations.shard-2-of-3.jsonl is missing \(10 sentences\)"
    ):
        merge()
    shard(2)
    one = out / "annotations.shard-1-of-3.jsonl"
    lines = one.read_bytes().split(b"\n")
    one.write_bytes(b"\n".join(lines[:6]) + b"\n")
    with pytest.raises(
        ValueError, match=r"shard 1/3: annotations.shard-1-of-3.jsonl has 6 of its 10 sentences, 4 missing"
    ) as refused:
        merge()
    assert "--shard 1/3" in str(refused.value)
    one.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][:30])  # killed while writing line 7
    with pytest.raises(ValueError, match=rf"{re.escape(str(one))}:7: half-written last record"):
        merge()
    assert not (out / "annotations.jsonl").exists()
    with (
        held_elsewhere(out / "annotations.shard-2-of-3.jsonl"),
        pytest.raises(RuntimeError, match="another run"),
    ):
        merge()

    shard(1)  # repairs and completes the shard
    assert len(read_records(merge())) == 30

    two = out / "annotations.shard-2-of-3.jsonl"
    two.unlink()
    shard(2, PromptArguments(output_format="xml"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(two))}:1: .* was asked with another prompt"):
        merge()
    two.unlink()
    shard(2)
    records = read_records(two)
    two.write_text("".join(json.dumps(r | {"teacher": "openai:other"}) + "\n" for r in records))
    with pytest.raises(
        ValueError, match=r"different teachers: gold-template \(shards \[0, 1\]\), openai:other"
    ):
        merge()
    two.unlink()
    annotate(cot_args(out, inputs, shard="2/3", template_context_words=0), prompt, GOLD)
    with pytest.raises(
        ValueError, match=r"shards \[0, 1\] and \[2\]: other settings \(template_context_words: 3 -> 0\)"
    ):
        merge()


# --- keys and writers -----------------------------------------------------------------------------------


def test_clashing_dataset_names_and_duplicate_ids_are_refused_at_start(tmp_path: Path) -> None:
    conll = (ROOT / "tests" / "data" / "conll2003_mini.txt").read_text()
    clashing = [tmp_path / side / "conll" / "train.txt" for side in ("a", "b")]
    for path in clashing:
        path.parent.mkdir(parents=True)
        path.write_text(conll)
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"a/conll/train.txt and .*b/conll/train.txt are both named 'conll-train'"
    ):
        annotate(cot_args(out, clashing), PromptArguments(), GOLD)
    splits = [f"hf:{ROOT}/tests/data/hub/NER-CoT@{split}" for split in ("train", "train[:2]")]
    with pytest.raises(ValueError, match=r"splits of one Hub source: annotate each in a run with its own"):
        annotate(cot_args(out, splits, reader="hf"), PromptArguments(), GOLD)
    duplicated = tmp_path / "dup.jsonl"
    rows = [
        ("s1", "Ann met Bo ."),
        ("s2", "Cy left ."),
        ("s1", "Di came ."),
        ("s3", "Ed ran ."),
        ("s3", "Fa sat ."),
    ]
    duplicated.write_text(
        "".join(json.dumps({"id": i, "text": t, "entities": [], "labels": LABELS}) + "\n" for i, t in rows)
    )
    with pytest.raises(ValueError, match=r"dup.jsonl has 2 ids more than once: 's1', 's3'"):
        annotate(cot_args(out, [duplicated]), PromptArguments(), GOLD)
    assert not out.exists(), "refused before anything was written"


def test_a_second_writer_fails_at_once_and_a_killed_writer_frees_the_file(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "writers.jsonl", 24)
    out = tmp_path / "out"
    path = out / "annotations.jsonl"
    prompt = PromptArguments()
    tasks = load_tasks(cot_args(out, [inputs]), prompt)
    log = tmp_path / "writer.log"
    with teacher(replies(tasks), lambda p, _: "right", delay=0.25) as server:
        first = start_stage(out, inputs, server.base_url, log)
        try:
            deadline = time.monotonic() + 30
            while not complete_lines(path):
                assert first.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(
                RuntimeError, match=rf"annotations.jsonl is being written by another run \(pid {first.pid} "
            ):
                annotate(cot_args(out, [inputs]), prompt, openai(server.base_url))
            assert time.monotonic() - started < 2
        finally:
            first.kill()
            first.wait(timeout=30)
        report = annotate(cot_args(out, [inputs]), prompt, openai(server.base_url))
    assert_each_sentence_once(read_records(path), tasks, report)


# --- what a rerun refuses -------------------------------------------------------------------------------


def test_a_rerun_refuses_a_file_it_cannot_have_written_naming_file_and_line(tmp_path: Path) -> None:
    inputs = [write_inputs(tmp_path / "rerun.jsonl", 6)]
    out = tmp_path / "out"
    path = out / "annotations.jsonl"
    annotate(cot_args(out, inputs), PromptArguments(), GOLD)
    whole = path.read_bytes()
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:1: .* was asked with another prompt"):
        annotate(cot_args(out, inputs), PromptArguments(output_format="xml"), GOLD)
    lines = whole.split(b"\n")
    path.write_bytes(b"\n".join([lines[0], b"{not json", *lines[1:]]))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: not a JSON record"):
        annotate(cot_args(out, inputs), PromptArguments(), GOLD)
    path.write_bytes(b"\n".join([lines[0], *lines]))  # two runs wrote the first sentence
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: 'rerun/s0' is already at .*:1"):
        annotate(cot_args(out, inputs), PromptArguments(), GOLD)
    path.write_bytes(whole)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(path))}:6: 'rerun/s5' is not one of the sentences"
    ):
        annotate(cot_args(out, inputs, limit=5), PromptArguments(), GOLD)
    assert annotate(cot_args(out, inputs), PromptArguments(), GOLD)["annotated_this_run"] == 0
    assert path.read_bytes() == whole
    afresh = annotate(
        cot_args(out, inputs, overwrite_output_dir=True), PromptArguments(output_format="xml"), GOLD
    )
    assert afresh["annotated_this_run"] == afresh["sentences"] == 6
    assert {r["output_format"] for r in read_records(path)} == {"xml"}


def test_overwrite_keeps_a_file_of_this_very_run_and_starts_afresh_one_it_would_refuse(
    tmp_path: Path,
) -> None:
    """The same command submitted again resumes; a file this run would refuse (its sentences asked
    otherwise since the inputs changed, a broken line) is started afresh, not resumed and then refused
    with advice to use the flag already given."""
    inputs = write_inputs(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out"
    path = out / "annotations.jsonl"
    annotate(cot_args(out, [inputs]), PromptArguments(), GOLD)
    overwrite = cot_args(out, [inputs], overwrite_output_dir=True)
    assert annotate(overwrite, PromptArguments(), GOLD)["annotated_this_run"] == 0
    inputs.write_text(inputs.read_text().replace("Ann2 Lee joined", "Ann2 Lee hailed"))  # s2 asked otherwise
    assert annotate(overwrite, PromptArguments(), GOLD)["annotated_this_run"] == 4
    path.write_text(path.read_text() + "{not json\n")
    assert annotate(overwrite, PromptArguments(), GOLD)["annotated_this_run"] == 4
    assert len(read_records(path)) == 4
    # A lower limit: its records of the sentences left out would be refused.
    fewer = cot_args(out, [inputs], overwrite_output_dir=True, limit=2)
    assert annotate(fewer, PromptArguments(), GOLD)["annotated_this_run"] == 2
    assert not fresh_start(fewer, PromptArguments(), GOLD)  # this very run now
    # Failed records only, of another teacher: nothing shows the file is this run's.
    failed = [r | {"status": "failed", "accepted": False, "teacher": "another"} for r in read_records(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in failed))
    assert fresh_start(fewer, PromptArguments(), GOLD)
    inputs.write_text("{not json\n")  # the inputs' own error is theirs, not a reason to start afresh
    with pytest.raises(DataError, match="in.jsonl:1"):
        fresh_start(fewer, PromptArguments(), GOLD)


# --- a relaunch with other settings ---------------------------------------------------------------------


def test_a_relaunch_with_other_thresholds_or_sampling_is_refused_and_one_that_runs_otherwise_resumes(
    tmp_path: Path,
) -> None:
    inputs = [write_inputs(tmp_path / "in.jsonl", 10)]
    out, prompt = tmp_path / "out", PromptArguments()
    with teacher(replies(load_tasks(cot_args(out, inputs), prompt)), lambda p, a: "right") as server:
        annotate(cot_args(out, inputs, limit=5), prompt, openai(server.base_url))
        before = (out / "annotations.jsonl").read_text()
        changes = [
            ({"f1_threshold": 0.5}, {}, "f1_threshold: 1.0 -> 0.5"),
            ({"gold_answer": True}, {}, "gold_answer: False -> True"),
            ({"samples_per_sentence": 3}, {}, "samples_per_sentence: 1 -> 3"),
            ({}, {"temperature": 0.9}, "temperature: 0.0 -> 0.9"),
            (
                {},
                {"backend_options": backend_options(server.base_url) | {"chat_template_kwargs": {"x": 1}}},
                "backend_options.chat_template_kwargs: '<unset>' -> {'x': 1}",
            ),
        ]
        for cot_change, generation_change, named in changes:
            generation = dataclasses.replace(openai(server.base_url), **generation_change)
            with pytest.raises(
                ValueError, match=r"annotations.jsonl:1: .* other settings \(" + re.escape(named)
            ):
                annotate(cot_args(out, inputs, **cot_change), prompt, generation)
            assert (out / "annotations.jsonl").read_text() == before  # nothing written, nothing lost
        # Where it runs, how fast and how far may change, and max_new_tokens (how cut-off sentences are
        # retried): the run resumes and completes.
        roomier = dataclasses.replace(openai(server.base_url, concurrency=2), max_new_tokens=4096)
        report = annotate(cot_args(out, inputs, chunk_size=3), prompt, roomier)
    assert (report["sentences"], report["annotated_this_run"]) == (10, 5)
    assert (out / "annotations.jsonl").read_text().startswith(before)
    settings = {json.dumps(r["settings"], sort_keys=True) for r in read_records(out / "annotations.jsonl")}
    assert len(settings) == 1


def test_a_requeued_job_waits_for_the_lock_a_dead_node_s_attempt_may_still_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_elsewhere: HeldElsewhere
) -> None:
    """On NFS or Lustre a lock outlives the node that died holding it until the server lets it go: the
    requeued attempt would fail at once and end the job for good. A first attempt still fails at once."""
    import threading

    from reasoningner import files

    out = tmp_path / "annotations.jsonl"
    monkeypatch.setattr(files, "LOCK_RETRY_SECONDS", 0.05)
    with held_elsewhere(out) as earlier:  # the earlier attempt's lock, not yet released
        with pytest.raises(RuntimeError, match="being written by another run"), exclusive(out):
            pass
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        monkeypatch.setattr(files, "REQUEUED_LOCK_WAIT", 0.3)
        with pytest.raises(RuntimeError, match="being written by another run"), exclusive(out):
            pass  # held past the wait
        monkeypatch.setattr(files, "REQUEUED_LOCK_WAIT", 30.0)
        threading.Timer(0.3, earlier.stdin.close).start()  # type: ignore[union-attr]  # the server releases it
        started = time.monotonic()
        with exclusive(out):
            assert time.monotonic() - started >= 0.25
            assert f"pid {os.getpid()}" in (tmp_path / "annotations.jsonl.lock").read_text()


def test_the_output_lock_is_re_entrant_in_its_process_and_held_until_the_outer_block_ends(
    tmp_path: Path,
) -> None:
    """Stage 1's script holds it around `annotate`, which takes it too: the W&B run of a shard is opened
    only once the file is this run's (a second launch of a running shard resumed its W&B run)."""
    out = tmp_path / "annotations.jsonl"
    code = "import sys; from pathlib import Path; from reasoningner.files import exclusive\n"
    code += "with exclusive(Path(sys.argv[1])):\n    pass"
    with exclusive(out):
        with exclusive(out):
            pass
        in_thread: list[BaseException] = []

        def take() -> None:
            try:
                with exclusive(out):
                    pass
            except RuntimeError as refused:
                in_thread.append(refused)

        thread = threading.Thread(target=take)
        thread.start()
        thread.join(timeout=30)
        assert "being written by another run" in str(in_thread[0])  # another thread is another writer
        other = subprocess.run(
            [sys.executable, "-c", code, str(out)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        assert other.returncode == 1 and "being written by another run" in other.stderr
    with exclusive(out):  # released
        pass


def test_a_run_near_its_job_s_time_limit_stops_between_chunks_and_its_requeued_job_completes_the_file(
    tmp_path: Path, slurm_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job killed at its time limit is never requeued and loses the chunk in flight: stage 1 starts no
    chunk the limit would cut short (a chunk as long as the last), keeps every record it has, asks for
    a requeue and exits with `jobs.STOPPED`, writing no report or manifest of an unfinished file; the
    requeued job repeats the first command line (`--overwrite_output_dir true` too) and continues the
    file rather than empty it, as does the same command line submitted again (not a requeue)."""
    from reasoningner import configs, jobs

    inputs = [write_inputs(tmp_path / "in.jsonl", 6)]
    prompt = PromptArguments()
    out, stage = tmp_path / "out", load_stage("cot")
    with teacher(replies(load_tasks(cot_args(out, inputs), prompt)), lambda p, a: "right") as server:
        uninterrupted = annotate(
            cot_args(tmp_path / "uninterrupted", inputs), prompt, openai(server.base_url)
        )
        options = json.dumps(backend_options(server.base_url))
        command = ["--datasets", str(inputs[0]), "--output_dir", str(out), "--backend", "openai",
                   "--model_name_or_path", "teacher", "--backend_options", options, "--chunk_size", "2",
                   "--overwrite_output_dir", "true"]  # fmt: skip
        # Asked before the second chunk and the third (the first runs in any attempt: a start-up that
        # used the time would otherwise stop every attempt before any work), which would start 600 s
        # before the limit.
        left = iter([3600.0, 600.0])
        monkeypatch.setattr(configs, "seconds_left", lambda margin: next(left))
        with pytest.raises(SystemExit) as stopped:
            stage.main(*stage.make_parser().parse_args_and_config(command))
        assert stopped.value.code == jobs.STOPPED
        assert len(read_records(out / "annotations.jsonl")) == 4  # two whole chunks
        assert slurm_job.read_text() == "requeue 4242\n"
        assert not (out / "report.json").exists() and not (out / "manifest.json").exists()

        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        monkeypatch.setattr(configs, "seconds_left", lambda margin: None)  # a limit far off, or none
        stage.main(*stage.make_parser().parse_args_and_config(command))
        lines = sorted((out / "annotations.jsonl").read_text().splitlines())
        assert lines == sorted((tmp_path / "uninterrupted" / "annotations.jsonl").read_text().splitlines())
        report = json.loads((out / "report.json").read_text())
        assert (report["annotated_this_run"], report["accepted"]) == (2, uninterrupted["accepted"])
        monkeypatch.setenv("SLURM_RESTART_COUNT", "")  # the command submitted again: a new job
        stage.main(*stage.make_parser().parse_args_and_config(command))
    assert sorted((out / "annotations.jsonl").read_text().splitlines()) == lines  # kept, not annotated again
    assert json.loads((out / "report.json").read_text())["annotated_this_run"] == 0


def test_records_written_before_they_carried_settings_still_resume(tmp_path: Path) -> None:
    inputs = [write_inputs(tmp_path / "in.jsonl", 6)]
    out = tmp_path / "out"
    annotate(cot_args(out, inputs, limit=3), PromptArguments(), GOLD)
    path = out / "annotations.jsonl"
    path.write_text(
        "".join(
            json.dumps({k: v for k, v in r.items() if k != "settings"}) + "\n" for r in read_records(path)
        )
    )
    report = annotate(cot_args(out, inputs, template_context_words=1), PromptArguments(), GOLD)
    assert (report["sentences"], report["annotated_this_run"]) == (6, 3)


def test_the_report_counts_the_tokens_of_every_sample_and_try(tmp_path: Path) -> None:
    inputs = [write_inputs(tmp_path / "in.jsonl", 4)]
    args = cot_args(tmp_path / "out", inputs, samples_per_sentence=3)
    with teacher(replies(load_tasks(args, PromptArguments())), lambda p, a: "right") as server:
        generation = dataclasses.replace(openai(server.base_url), temperature=0.7)
        report = annotate(args, PromptArguments(), generation)
        served = sum(server.served.values())
    assert served == 4 * 3
    assert report["completion_tokens"] == 5 * served  # the fake teacher bills 5 tokens a reply
