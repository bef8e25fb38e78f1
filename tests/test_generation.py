"""Tests of `reasoningner.generation`.

The openai backend runs against a real `transformers serve` process on loopback serving a tiny local
model, and against an in-process fake server that fails, hangs or ignores `n` deterministically. The
transformers backend runs the same tiny model in-process; the vllm backend is checked through a fake
`vllm` module, as vLLM cannot run here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from reasoningner.formats import split_answer
from reasoningner.generation import (
    Completion,
    ConversationFailed,
    DeferredGenerator,
    GenerationError,
    OpenAIGenerator,
    SamplingConfig,
    TransformersGenerator,
    build_generator,
)
from tests.fake_openai import ChatHandler, ChatServer, serving
from tests.scripts import load_script

CORPUS = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn reports from Brussels .",
    "The European Commission said on Thursday it disagreed with German advice .",
    "Germany 's representative Werner Zwingmann spoke in Paris .",
    "Apple hired Mary Smith in London last year .",
    "Find the named entities in the sentence .",
] * 10
SECRET = "sk-test-DO-NOT-LEAK-0123456789"
KEY_ENV = "REASONINGNER_TEST_API_KEY"


def conversation(sentence: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You find named entities."},
        {"role": "user", "content": sentence},
    ]


SENTENCES = [
    "EU",
    "Peter Blackburn reports from Brussels .",
    "German call",
    "The European Commission said on Thursday it disagreed with German advice to consumers .",
    "Mary in London",
    "Apple hired Mary Smith in London last year .",
    "boycott British lamb",
]


# --- tiny model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a shared 2-core machine idle-spinning workers make
    them many times slower; the server subprocess gets OMP_NUM_THREADS=1 for the same reason."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory: Callable[..., Path]) -> Path:
    """The project's tiny model, re-initialised so that its greedy output depends on the prompt and
    sometimes stops early (the default init repeats one token forever, which would make order and
    token-count checks vacuous). `do_sample` is on in its generation config, as in real Qwen3
    checkpoints: `transformers serve` samples only when the checkpoint says so."""
    out = tiny_model_factory(CORPUS, seed=0, vocab_size=256, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
        model.get_output_embeddings().weight[model.config.eos_token_id] *= 2.0
    model.generation_config.do_sample = True
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def local(model_dir: Path) -> Iterator[TransformersGenerator]:
    with TransformersGenerator(model_dir, batch_size=3) as generator:
        yield generator


# --- transformers backend ------------------------------------------------------------------------


def test_a_deferred_backend_is_built_at_its_first_question_and_not_for_none(
    model_dir: Path, local: TransformersGenerator
) -> None:
    built: list[str] = []

    def build() -> TransformersGenerator:
        built.append("built")
        return local

    deferred = DeferredGenerator(build)
    assert list(deferred.generate_outcomes([], SamplingConfig())) == [] and not built
    chat = [{"role": "user", "content": "EU rejects"}]
    sampling = SamplingConfig(max_new_tokens=3)
    [(index, outcome)] = deferred.generate_outcomes([chat], sampling)
    assert built == ["built"] and outcome == next(local.generate_outcomes([chat], sampling))[1]
    assert deferred.context_tokens == local.context_tokens and built == ["built"]  # built once


def test_transformers_greedy_is_deterministic_and_batching_changes_nothing(
    model_dir: Path, local: TransformersGenerator
) -> None:
    conversations = [conversation(s) for s in SENTENCES]
    greedy = SamplingConfig(max_new_tokens=12)
    batched = local.generate(conversations, greedy)
    with TransformersGenerator(model_dir, batch_size=1) as one_by_one:
        alone = one_by_one.generate(conversations, greedy)
    assert batched == alone == local.generate(conversations, greedy)
    assert len({c[0].text for c in batched}) > 1, "outputs should depend on the prompt"


def test_transformers_asks_each_seed_s_conversations_as_a_call_of_that_seed_would(
    local: TransformersGenerator,
) -> None:
    """Stage 1 asks a retry (its own seed) in one call with first tries: each must sample as if asked
    alone with its seed, or a seeded rerun would not repeat."""
    a, b, c = (conversation(s) for s in SENTENCES[:3])
    sampled = SamplingConfig(n=2, temperature=1.0, max_new_tokens=12, seed=1)
    mixed = dict(local.generate_outcomes([a, b, c], sampled, seeds=[1, 2, 1]))
    first, third = local.generate([a, c], sampled)
    [second] = local.generate([b], replace(sampled, seed=2))
    assert [mixed[0], mixed[1], mixed[2]] == [first, second, third]
    assert second != local.generate([b], sampled)[0], "the seed should change the samples"
    with pytest.raises(ValueError, match="2 seeds for 3 conversations"):
        list(local.generate_outcomes([a, b, c], sampled, seeds=[1, 2]))


def test_transformers_loads_without_hub_kernels_unless_asked(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers 5.25 kernelizes by default (layers fetched from the Hub on a GPU): the backend says
    no unless `backend_options` ask, so every admitted transformers version runs the same model."""
    asked: list[Any] = []
    load = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:  # records what was asked, loads without Hub access
        asked.append(kwargs.get("use_kernels", "unset"))
        return load(*args, **kwargs | {"use_kernels": False})

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    with TransformersGenerator(model_dir) as generator:
        assert generator._model.use_kernels is False
    TransformersGenerator(model_dir, use_kernels=True).close()
    assert asked == [False, True]


def test_transformers_token_counts_exclude_padding(model_dir: Path, local: TransformersGenerator) -> None:
    """In a batch, sequences that stopped early are padded up to the longest; generated alone they are
    not, so equal counts prove the padding is not counted."""
    conversations = [conversation(s) for s in SENTENCES]
    completions = [c[0] for c in local.generate(conversations, SamplingConfig(max_new_tokens=12))]
    counts = [c.completion_tokens for c in completions]
    assert all(1 <= count <= 12 for count in counts)
    assert min(counts) < 12 == max(counts), f"fixture should mix early stops and full lengths: {counts}"
    # Without an end-of-sequence token the row ran into max_new_tokens: stage 1 must know it was cut off.
    assert all(c.finish_reason == "stop" for c in completions if c.completion_tokens < 12)
    assert "length" in {c.finish_reason for c in completions}
    with TransformersGenerator(model_dir, batch_size=1) as one_by_one:
        for sentence, count in zip(SENTENCES, counts, strict=True):
            [[completion]] = one_by_one.generate([conversation(sentence)], SamplingConfig(max_new_tokens=12))
            assert completion.completion_tokens == count


def test_transformers_stops_at_the_tokenizers_end_too(
    model_dir: Path, local: TransformersGenerator, tmp_path: Path
) -> None:
    """A LoRA adapter loads its base's generation config, which for Qwen3-Base names another end token
    than the chat turn's (the tokenizer's eos): generation must stop at the tokenizer's too, as TRL's GRPO
    and vLLM do, not run on to max_new_tokens."""
    other_end = tmp_path / "model"
    shutil.copytree(model_dir, other_end)
    config = GenerationConfig.from_pretrained(other_end)
    tokenizer_eos = AutoTokenizer.from_pretrained(other_end).eos_token_id
    config.eos_token_id = next(t for t in range(256) if t not in (tokenizer_eos, config.pad_token_id))
    config.save_pretrained(other_end)
    conversations = [conversation(s) for s in SENTENCES]
    greedy = SamplingConfig(max_new_tokens=12)
    expected = local.generate(conversations, greedy)
    assert {c[0].finish_reason for c in expected} == {"stop", "length"}
    with TransformersGenerator(other_end, batch_size=3) as generator:
        assert generator.generate(conversations, greedy) == expected


@pytest.mark.parametrize(
    "sampling", [SamplingConfig(), SamplingConfig(n=2, temperature=1.0)], ids=["greedy", "sampled"]
)
def test_no_conversations_give_no_completions(local: TransformersGenerator, sampling: SamplingConfig) -> None:
    """An empty selection (a filter that keeps nothing, a finished resume) is not an error."""
    assert local.generate([], sampling) == []
    assert list(local.generate_outcomes([], sampling)) == []


def test_transformers_samples_n_per_conversation_reproducibly(local: TransformersGenerator) -> None:
    conversations = [conversation(s) for s in SENTENCES[:4]]
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=8, seed=7)
    first = local.generate(conversations, sampling)
    assert [len(c) for c in first] == [3, 3, 3, 3]
    assert any(len({x.text for x in c}) > 1 for c in first), "samples should differ"
    assert local.generate(conversations, sampling) == first
    greedy = local.generate(conversations, SamplingConfig(n=2, max_new_tokens=8))
    assert all(c[0] == c[1] for c in greedy)


def test_transformers_batches_longest_prompt_first_and_passes_chat_template_kwargs(
    local: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[str] = []
    render = local._tokenizer.apply_chat_template

    def spy(*args: Any, **kwargs: Any) -> Any:
        rendered.append(render(*args, **kwargs))
        return rendered[-1]

    monkeypatch.setattr(local._tokenizer, "apply_chat_template", spy)
    monkeypatch.setattr(local, "chat_template_kwargs", {"enable_thinking": False})
    done: list[int] = []
    local.generate(
        [conversation(s) for s in SENTENCES], SamplingConfig(max_new_tokens=2), on_done=done.append
    )
    lengths = [len(local._tokenizer(prompt, add_special_tokens=False)["input_ids"]) for prompt in rendered]
    assert done == sorted(range(len(SENTENCES)), key=lambda i: (-lengths[i], i))
    assert done != list(range(len(SENTENCES))), "fixture sentences should not come longest first"
    assert all(prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") for prompt in rendered)


# --- openai backend against transformers serve --------------------------------------------------


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` on loopback, pinned to the tiny model; yields its base URL."""
    for module in ("fastapi", "uvicorn", "openai"):
        pytest.importorskip(module, reason="transformers serve needs transformers[serving]")
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    # The concurrency benchmark's server, on one thread as the tests run.
    serve = load_script("benchmarks/bench_openai_concurrency.py").transformers_serve
    with serve(model_dir, continuous_batching=False, threads=1, log_path=log_path) as url:
        yield url


def test_openai_greedy_over_transformers_serve_matches_local_generation(
    served: str, local: TransformersGenerator
) -> None:
    """Concurrent requests come back to the right conversation: greedy results (whose lengths differ
    from prompt to prompt) equal the in-process ones, conversation by conversation."""
    conversations = [conversation(s) for s in SENTENCES]
    greedy = SamplingConfig(max_new_tokens=12)
    with OpenAIGenerator(served, api_key_env=None, max_concurrency=4, request_timeout=30) as remote:
        got = remote.generate(conversations, greedy)
    want = local.generate(conversations, greedy)
    assert [c[0].completion_tokens for c in got] == [c[0].completion_tokens for c in want]
    assert [c[0].text for c in got] == [c[0].text for c in want]


def test_openai_tops_up_n_when_transformers_serve_ignores_it(served: str, model_dir: Path) -> None:
    conversations = [conversation(s) for s in SENTENCES[:3]]
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, seed=1)
    with OpenAIGenerator(served, str(model_dir), api_key_env=None, max_concurrency=4) as remote:
        results = remote.generate(conversations, sampling)
    assert [len(c) for c in results] == [3, 3, 3]
    assert all(1 <= x.completion_tokens <= 6 for c in results for x in c)
    assert any(len({x.text for x in c}) > 1 for c in results), "top-up requests should use their own seeds"


# --- openai backend against a misbehaving fake server ----------------------------------------------

HANG_S = 3.0


class FakeHandler(ChatHandler):
    """Echoes the last user message; its text (`kind:arg:tag`) says how to misbehave, per conversation,
    counted in attempts, so that failures are deterministic whatever the arrival order."""

    def respond(self, content: str, attempt: int, body: dict) -> None:
        kind, _, arg = content.partition(":")
        arg = arg.partition(":")[0]
        if kind in ("fail429", "fail503") and attempt <= int(arg):
            status = int(kind[-3:])
            return self.send(status, {"error": "try again"}, {"Retry-After": "0"} if status == 429 else {})
        if kind == "always503":
            return self.send(503, {"error": "model overloaded"})
        if kind == "status400":
            return self.send(400, {"error": "unknown field"})
        if kind == "status401":
            return self.send(401, {"error": "invalid key"})
        if kind == "badjson" and attempt <= int(arg):
            return self.send_raw(200, b"<html>proxy error</html>")
        if kind == "nochoices" and attempt <= int(arg):
            return self.send(200, {"object": "error", "message": "engine restarting"})
        if kind == "emptychoices" and attempt <= int(arg):
            return self.send(200, {"choices": []})
        if kind == "hang" and attempt <= int(arg):
            time.sleep(HANG_S)
        if kind == "slow":
            time.sleep(float(arg))
        n = 1 if self.path.startswith("/no-n/") else body.get("n", 1)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"echo:{content}#{i}"},
                "finish_reason": "length" if kind == "length" else "stop",
            }
            for i in reversed(range(n))
        ]
        self.send(200, {"choices": choices, "usage": {"completion_tokens": 10 * n + 1}})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    """A fresh server per test: requests a test cancelled may still reach its server after it ends."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    with serving(ChatServer(FakeHandler)) as server:
        yield server


def fake_client(url: str, **options: Any) -> OpenAIGenerator:
    defaults: dict[str, Any] = dict(
        api_key_env=KEY_ENV, backoff_base=0.01, backoff_max=0.05, request_timeout=5
    )
    return OpenAIGenerator(url, **{**defaults, **options})


def echo(content: str, n: int = 1) -> list[str]:
    return [f"echo:{content}#{i}" for i in range(n)]


def test_openai_retries_429_503_and_hangs_then_keeps_input_order(
    fake: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    contents = ["plain:a", "fail429:2:b", "fail503:1:c", "hang:1:d", "plain:e", "fail429:1:f"]
    with fake_client(fake.base_url, max_attempts=4, request_timeout=1.0, max_concurrency=3) as client:
        results = client.generate([conversation(c) for c in contents], SamplingConfig())
    assert [c[0].text for c in results] == [echo(c)[0] for c in contents]
    assert [fake.attempts[c] for c in contents] == [1, 3, 2, 2, 1, 2]
    assert {auth for _, _, auth in fake.requests} == {f"Bearer {SECRET}"}
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 5
    assert any("HTTP 429" in m for m in retries) and any("HTTP 503" in m for m in retries)
    assert any("no answer within 1s" in m for m in retries)
    assert SECRET not in caplog.text


def test_openai_gives_up_with_a_clear_error_that_hides_the_key(
    fake: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = fake_client(fake.base_url, max_attempts=3)
    with pytest.raises(GenerationError, match=r"gave up after 3 attempts; last: HTTP 503") as failure:
        client.generate([conversation("plain:a"), conversation("always503")], SamplingConfig())
    assert "model overloaded" in str(failure.value)
    assert fake.attempts["always503"] == 3
    for text in (str(failure.value), repr(failure.value), repr(client), caplog.text):
        assert SECRET not in text
    with pytest.raises(GenerationError, match=rf"refused the request \(API key from \${KEY_ENV}\): HTTP 400"):
        client.generate([conversation("status400")], SamplingConfig())
    assert fake.attempts["status400"] == 1, "a 400 is not retried"


def test_openai_retries_200_answers_that_are_not_json_with_choices(
    fake: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy's error page or a server's error object, sent with status 200, is a failed attempt."""
    caplog.set_level(logging.DEBUG)
    contents = ["badjson:2:a", "nochoices:1:b", "emptychoices:1:c", "length:0:d"]
    with fake_client(fake.base_url, max_attempts=3) as client:
        results = client.generate([conversation(c) for c in contents], SamplingConfig())
    assert [c[0].text for c in results] == [echo(c)[0] for c in contents]
    assert [fake.attempts[c] for c in contents] == [3, 2, 2, 1]
    assert [c[0].finish_reason for c in results] == ["stop", "stop", "stop", "length"]
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert sum("HTTP 200 with invalid JSON: <html>proxy error</html>" in m for m in retries) == 2
    assert any("HTTP 200 with a malformed completion" in m and "engine restarting" in m for m in retries)
    assert any("HTTP 200 with no choices" in m for m in retries)


def test_openai_a_conversation_it_gives_up_on_does_not_stop_the_others(fake: ChatServer) -> None:
    contents = ["plain:a", "always503", "badjson:9:b", "status400", "plain:c"]
    with fake_client(fake.base_url, max_attempts=2, max_concurrency=2) as client:
        outcomes = dict(client.generate_outcomes([conversation(c) for c in contents], SamplingConfig(n=2)))
    assert sorted(outcomes) == list(range(len(contents)))
    assert [c.text for c in outcomes[0]] == echo("plain:a")[:1] * 2  # type: ignore[union-attr]
    assert [c.text for c in outcomes[4]] == echo("plain:c")[:1] * 2  # type: ignore[union-attr]
    failures = {i: str(o) for i, o in outcomes.items() if isinstance(o, ConversationFailed)}
    assert sorted(failures) == [1, 2, 3]
    assert "gave up after 2 attempts; last: HTTP 503" in failures[1]
    assert "gave up after 2 attempts; last: HTTP 200 with invalid JSON" in failures[2]
    assert "refused the request" in failures[3] and "HTTP 400" in failures[3]
    assert fake.attempts["status400"] == 1
    assert all(SECRET not in failure for failure in failures.values())


def test_openai_a_refused_key_stops_everything_at_once(fake: ChatServer) -> None:
    """401/403/404 are wrong for every request: recording each sentence as failed would only hide it."""
    contents = ["status401", *(f"slow:{HANG_S}:{i}" for i in range(3))]
    started = time.monotonic()
    with (
        fake_client(fake.base_url, max_concurrency=4) as client,
        pytest.raises(GenerationError, match="refused the request .*HTTP 401") as failure,
    ):
        list(client.generate_outcomes([conversation(c) for c in contents], SamplingConfig()))
    assert not isinstance(failure.value, ConversationFailed)
    assert fake.attempts["status401"] == 1 and time.monotonic() - started < HANG_S


def test_openai_yields_in_completion_order_within_the_concurrency_bound(fake: ChatServer) -> None:
    contents = ["slow:0.6:a", "slow:0.1:b", "slow:0.1:c", "slow:0.1:d", "slow:0.1:e"]
    with fake_client(fake.base_url, max_concurrency=2) as client:
        order = [
            index for index, _ in client.generate_iter([conversation(c) for c in contents], SamplingConfig())
        ]
        assert sorted(order) == list(range(5)) and order[0] != 0
        assert fake.max_in_flight == 2
        done: list[int] = []
        results = client.generate([conversation(c) for c in contents], SamplingConfig(), on_done=done.append)
    assert [c[0].text for c in results] == [echo(c)[0] for c in contents]
    assert sorted(done) == list(range(5))


def test_openai_leaving_the_iterator_early_cancels_the_rest(fake: ChatServer) -> None:
    contents = ["plain:a", *(f"slow:{HANG_S}:{i}" for i in range(3))]
    started = time.monotonic()
    with fake_client(fake.base_url, max_concurrency=4) as client:
        for index, _ in client.generate_iter([conversation(c) for c in contents], SamplingConfig()):
            assert index == 0
            break
    assert time.monotonic() - started < HANG_S


def test_openai_asks_for_n_and_splits_usage(fake: ChatServer) -> None:
    with fake_client(
        fake.base_url, model="teacher", chat_template_kwargs={"enable_thinking": False}
    ) as client:
        [completions] = client.generate(
            [conversation("plain:a")], SamplingConfig(n=3, temperature=0.7, seed=5)
        )
    assert completions == [
        Completion(text, tokens, "stop")
        for text, tokens in zip(echo("plain:a", 3), [11, 10, 10], strict=True)
    ]
    [(_, body, _)] = fake.requests
    assert body["n"] == 3 and body["seed"] == 5 and body["model"] == "teacher" and body["max_tokens"] == 512
    assert body["temperature"] == 0.7 and body["chat_template_kwargs"] == {"enable_thinking": False}
    with fake_client(fake.base_url) as client:
        [greedy] = client.generate([conversation("plain:b")], SamplingConfig(n=2))
    assert greedy == [Completion(echo("plain:b")[0], 11, "stop")] * 2
    assert "n" not in fake.requests[-1][1], "greedy asks once: vLLM refuses n > 1 when greedy"


def test_openai_tops_up_with_seeded_single_requests_when_n_is_ignored(fake: ChatServer) -> None:
    with fake_client(fake.base_url.replace("/v1", "/no-n/v1")) as client:
        results = client.generate(
            [conversation("plain:a"), conversation("plain:b")], SamplingConfig(n=3, temperature=1.0, seed=5)
        )
    assert [len(c) for c in results] == [3, 3]
    assert all(x.completion_tokens == 11 for c in results for x in c)
    for content in ("plain:a", "plain:b"):
        bodies = [body for _, body, _ in fake.requests if body["messages"][-1]["content"] == content]
        assert [body.get("n") for body in bodies] == [3, None, None]
        assert sorted(body["seed"] for body in bodies) == [5, 6, 7]


def test_openai_without_key_sends_no_authorization(fake: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    with fake_client(fake.base_url) as client:
        client.generate([conversation("plain:a")], SamplingConfig(seed=None))
    [(_, body, auth)] = fake.requests
    assert auth is None and "seed" not in body and "model" not in body


# --- vllm backend and the factory ----------------------------------------------------------------


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[list, Any, dict]] = []
        # vLLM's engine reports max_model_len, else the model's own context.
        model_config = types.SimpleNamespace(max_model_len=kwargs.get("max_model_len", 40960))
        self.llm_engine = types.SimpleNamespace(model_config=model_config)
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return FakeTokenizer()

    def chat(self, messages: list, sampling_params: Any, **kwargs: Any) -> list[Any]:
        self.calls.append((messages, sampling_params, kwargs))
        # One parameter set for every prompt, or a list paired with the prompts one by one.
        paired = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(messages)
        return [
            types.SimpleNamespace(
                outputs=[
                    types.SimpleNamespace(
                        text=f"{m[-1]['content']}#{i}",
                        token_ids=list(range(i + 1)),
                        finish_reason="length" if i else "stop",
                    )
                    for i in range(params.kwargs["n"])
                ]
            )
            for m, params in zip(messages, paired, strict=True)
        ]


class FakeTokenizer:
    """A chat template that wraps each turn in <role>...</role>, one token per character."""

    def apply_chat_template(
        self, conversation: list, *, add_generation_prompt: bool, tokenize: bool, **kwargs: Any
    ) -> str:
        assert not tokenize and add_generation_prompt
        turns = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in conversation)
        return turns + (
            "<assistant>" if kwargs.get("enable_thinking", True) else "<assistant><think></think>"
        )

    def __call__(self, prompts: list[str], add_special_tokens: bool) -> dict[str, list[list[int]]]:
        return {"input_ids": [[ord(c) for c in prompt] for prompt in prompts]}


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module


def test_vllm_plumbing(fake_vllm: types.ModuleType) -> None:
    generator = build_generator(
        "vllm",
        model="/models/teacher",
        tensor_parallel_size=2,
        max_model_len=4096,
        gpu_memory_utilization=0.8,
        seed=3,
        chunk_size=2,
        chat_template_kwargs={"enable_thinking": False},
        enforce_eager=True,
    )
    [llm] = FakeLLM.instances
    assert llm.kwargs == dict(
        model="/models/teacher",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        dtype="auto",
        seed=3,
        max_model_len=4096,
        enforce_eager=True,
    )
    done: list[int] = []
    sentences = ["a", "b", "c"]
    results = generator.generate(
        [conversation(s) for s in sentences],
        SamplingConfig(n=2, temperature=0.6, top_p=0.9, max_new_tokens=64, seed=11),
        on_done=done.append,
    )
    assert results == [
        [Completion(f"{s}#0", 1, "stop"), Completion(f"{s}#1", 2, "length")] for s in sentences
    ]
    assert done == [0, 1, 2]
    assert [len(messages) for messages, _, _ in llm.calls] == [2, 1]
    _, params, kwargs = llm.calls[0]
    assert params.kwargs == dict(n=2, temperature=0.6, top_p=0.9, max_tokens=64, seed=11)
    assert kwargs == dict(use_tqdm=False, chat_template_kwargs={"enable_thinking": False})
    [greedy] = generator.generate([conversation("d")], SamplingConfig(n=2))
    assert greedy == [Completion("d#0", 1, "stop")] * 2 and llm.calls[-1][1].kwargs["n"] == 1
    generator.close()
    with pytest.raises(GenerationError, match="closed"):
        generator.generate([conversation("a")], SamplingConfig())


def test_vllm_pairs_each_prompt_with_its_seed_s_parameters(fake_vllm: types.ModuleType) -> None:
    generator = build_generator("vllm", model="/models/teacher", chunk_size=2)
    sampled = SamplingConfig(n=2, temperature=0.7, seed=0)
    outcomes = dict(generator.generate_outcomes([conversation(s) for s in "abc"], sampled, seeds=[7, 0, 0]))
    assert [outcomes[i][0].text for i in range(3)] == ["a#0", "b#0", "c#0"]
    [llm] = FakeLLM.instances
    first, second = (params for _, params, _ in llm.calls)
    assert [p.kwargs["seed"] for p in first] == [7, 0] and first[0].kwargs["n"] == 2
    assert second.kwargs["seed"] == 0  # one seed in a chunk: one parameter set, as before


def test_vllm_knows_its_context_and_counts_prompt_tokens_with_its_chat_template(
    fake_vllm: types.ModuleType,
) -> None:
    assert build_generator("vllm", model="/models/teacher").context_tokens == 40960  # the model's own
    generator = build_generator(
        "vllm", model="/models/teacher", max_model_len=4096, chat_template_kwargs={"enable_thinking": False}
    )
    assert generator.context_tokens == 4096
    prompt = "<system>You find named entities.</system><user>ab</user><assistant><think></think>"
    assert generator.prompt_tokens([conversation("ab"), conversation("abcd")]) == [
        len(prompt),
        len(prompt) + 2,
    ]


def test_vllm_a_prompt_longer_than_max_model_len_fails_alone_and_is_never_sent(
    fake_vllm: types.ModuleType,
) -> None:
    """vLLM raises for the whole `chat` call when one prompt is over max_model_len."""
    frame = len("<system>You find named entities.</system><user></user><assistant>")
    generator = build_generator("vllm", model="/models/teacher", max_model_len=frame + 10, chunk_size=2)
    sentences = ["short", "x" * 10, "fits", "y" * 20]
    outcomes = dict(generator.generate_outcomes([conversation(s) for s in sentences], SamplingConfig()))
    assert [outcomes[i][0].text for i in (0, 2)] == ["short#0", "fits#0"]
    for index in (1, 3):
        assert isinstance(outcomes[index], ConversationFailed)
        assert f"{frame + len(sentences[index])} tokens, and max_model_len is {frame + 10}" in str(
            outcomes[index]
        )
    [llm] = FakeLLM.instances
    assert [[m[-1]["content"] for m in messages] for messages, _, _ in llm.calls] == [["short"], ["fits"]]
    assert list(generator.generate_outcomes([conversation("z" * 30)], SamplingConfig()))[0][0] == 0
    assert len(llm.calls) == 2  # a chunk with nothing that fits asks nothing


def test_vllm_data_parallel_in_one_process_is_refused_with_what_works(fake_vllm: types.ModuleType) -> None:
    with pytest.raises(
        ValueError, match=r"data_parallel_size: .*--shard i/n.*vllm serve --data-parallel-size"
    ):
        build_generator("vllm", model="/models/teacher", data_parallel_size=8)
    assert FakeLLM.instances == []
    build_generator("vllm", model="/models/teacher", data_parallel_size=1)
    assert FakeLLM.instances[0].kwargs["data_parallel_size"] == 1


def test_vllm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[vllm\]"'):
        build_generator("vllm", model="/models/teacher")


def test_backend_options_are_checked_in_one_line_before_anything_loads(tmp_path: Path) -> None:
    absent = str(tmp_path / "no-model")  # loading it would fail otherwise
    with pytest.raises(
        ValueError,
        match=r"unknown backend_options \['batchsize'\]: the transformers backend accepts \[.*'batch_size'",
    ):
        build_generator("transformers", model=absent, batchsize=2)
    with pytest.raises(
        ValueError, match=r"unknown backend_options \['max_concurency'\]: the openai .*'max_concurrency'"
    ):
        build_generator("openai", base_url="http://127.0.0.1:9/v1", max_concurency=4)
    with pytest.raises(
        ValueError, match=r"missing backend_options \['base_url'\]: the openai backend accepts"
    ):
        build_generator("openai", model="teacher")


def test_unknown_backend_and_bad_sampling_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown generation backend 'tgi'.*'openai'"):
        build_generator("tgi")
    for bad, refusal in (
        (dict(n=0), "n must be at least 1, got 0"),
        (dict(temperature=-1.0), "temperature must be >= 0, got -1.0"),
        (dict(temperature=float("nan")), "temperature must be >= 0, got nan"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(max_new_tokens=0), "max_new_tokens must be at least 1, got 0"),
    ):
        with pytest.raises(ValueError, match=refusal):
            SamplingConfig(**bad)


def test_a_rationale_split_off_by_the_server_is_put_back_in_front_of_the_answer():
    generator = OpenAIGenerator("http://127.0.0.1:9/v1", api_key_env=None)
    payload = {
        "choices": [
            {
                "index": 0,
                "message": {"content": '{"entities": {}}', "reasoning_content": '"x" is not an entity'},
            },
            {"index": 1, "message": {"content": "<think>kept</think>answer", "reasoning_content": "dup"}},
            # vLLM's Qwen3 parser, thinking on, given an output without </think>: all of it is reasoning.
            {"index": 2, "message": {"content": None, "reasoning": '{"entities": {"person": ["Ann"]}}'}},
            {"index": 3, "message": {"content": "answer", "reasoning": "why"}},
            # The same, cut at max_tokens: it ended inside its rationale.
            {"index": 4, "message": {"content": "", "reasoning": '"Ann" is a'}, "finish_reason": "length"},
        ],
        "usage": {"completion_tokens": 5},
    }
    first, second, unsplit, renamed, cut = generator._parse(payload)
    assert first.text == '<think>\n"x" is not an entity\n</think>\n{"entities": {}}'
    assert second.text == "<think>kept</think>answer"
    assert unsplit.text == '{"entities": {"person": ["Ann"]}}'
    assert split_answer(unsplit.text)[:2] == (None, unsplit.text)  # an answer without rationale
    assert renamed.text == "<think>\nwhy\n</think>\nanswer"
    assert [p.kind for p in split_answer(cut.text)[2]] == ["unclosed_think"]  # not an invalid answer


class _Connections:
    closed = False

    async def aclose(self) -> None:
        self.closed = True


def _shut_down_in_a_thread(task_body: Callable[[], Any]) -> tuple[bool, Any, _Connections]:
    """Run `generation.shut_down` on a loop holding one in-flight task; whether it returned (a thread
    that never ends means it hung), the task, and the connections it was to close."""
    import asyncio
    import threading

    from reasoningner import generation

    loop = asyncio.new_event_loop()
    task = loop.create_task(task_body())
    loop.run_until_complete(asyncio.sleep(0))  # the request is in flight
    connections = _Connections()
    thread = threading.Thread(target=generation.shut_down, args=(loop, [task], connections), daemon=True)
    thread.start()
    thread.join(60)
    return not thread.is_alive(), task, connections


def test_stopping_cancels_the_requests_in_flight_and_closes_the_connections() -> None:
    import asyncio

    returned, task, connections = _shut_down_in_a_thread(lambda: asyncio.sleep(3600))
    assert returned and task.cancelled() and connections.closed


def test_a_request_that_never_unwinds_does_not_keep_a_stopped_run_alive(monkeypatch, caplog) -> None:
    """As after a Ctrl-C inside one of the loop's callbacks: a CoT run hung in its shutdown for good."""
    import asyncio

    from reasoningner import generation

    monkeypatch.setattr(generation, "SHUTDOWN_S", 0.2)

    async def never_unwinds() -> None:
        while True:  # e.g. a connection waiting for a close that never comes
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    with caplog.at_level(logging.WARNING, logger="reasoningner.generation"):
        returned, task, _ = _shut_down_in_a_thread(never_unwinds)
    assert returned and not task.done()
    assert "did not stop within 0.2 s" in caplog.text


def test_vllm_serves_a_lora_adapter_folder_on_its_base_with_the_adapter_on_every_request(
    fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """vLLM cannot load an adapter folder as a model (no config.json): its base is loaded with LoRA."""
    requests = types.ModuleType("vllm.lora.request")
    requests.LoRARequest = lambda *args: ("lora", *args)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", requests)
    adapter = tmp_path / "sft"
    adapter.mkdir()
    config = {"base_model_name_or_path": "Qwen/Qwen3-8B", "r": 8, "rank_pattern": {"q_proj": 24}}
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"revision": "abc123"}))
    (adapter / "tokenizer_config.json").write_text("{}")
    generator = build_generator("vllm", model=str(adapter), tensor_parallel_size=2)
    [llm] = FakeLLM.instances
    assert llm.kwargs["model"] == "Qwen/Qwen3-8B" and llm.kwargs["revision"] == "abc123"
    assert (llm.kwargs["enable_lora"], llm.kwargs["max_lora_rank"]) == (True, 32)  # vLLM's next rank up
    assert llm.kwargs["tokenizer"] == str(adapter)  # the trained chat template
    generator.generate([conversation("a")], SamplingConfig())
    assert llm.calls[0][2]["lora_request"] == ("lora", "reasoningner-adapter", 1, str(adapter))
    build_generator("vllm", model=str(adapter), max_lora_rank=64)  # an option given wins
    assert FakeLLM.instances[-1].kwargs["max_lora_rank"] == 64
    (adapter / "tokenizer_config.json").unlink()  # saved elsewhere without its tokenizer: the base's
    build_generator("vllm", model=str(adapter))
    assert "tokenizer" not in FakeLLM.instances[-1].kwargs
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"modules_to_save": ["lm_head"]}))
    with pytest.raises(ValueError, match=r"also trains \['lm_head'\].*merge_lora: true"):
        build_generator("vllm", model=str(adapter))


def test_the_transformers_backend_runs_on_the_gpu_where_there_is_one(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    moved: list[str] = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, device: moved.append(device) or self)
    build_generator("transformers", model=str(tiny_model_dir))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    build_generator("transformers", model=str(tiny_model_dir))
    build_generator("transformers", model=str(tiny_model_dir), device="cpu")
    assert moved == ["cpu", "cuda", "cpu"]


def test_a_lone_surrogate_in_a_sentence_is_asked_as_u_fffd_not_a_failed_run(
    fake: ChatServer, local: TransformersGenerator
) -> None:
    """Half an emoji escaped in a dataset's JSON ("\\ud83d") fails strict UTF-8 (an HTTP body) and
    tokenizers: stage 1 and evaluation stopped at that sentence on every rerun."""
    contents = ["plain:Ann \ud83d ran", "plain:Bo"]
    with fake_client(fake.base_url) as client:
        results = client.generate([conversation(c) for c in contents], SamplingConfig())
    assert [c[0].text for c in results] == [echo("plain:Ann \ufffd ran")[0], echo("plain:Bo")[0]]
    asked = [conversation("Ann \ud83d ran"), conversation("Ann \ufffd ran")]
    first, second = local.generate(asked, SamplingConfig(max_new_tokens=4))
    assert first == second and local.prompt_tokens(asked[:1]) == local.prompt_tokens(asked[1:])
