"""Text generation behind one interface: vLLM offline, any OpenAI-compatible server, or transformers.

Stage 1 (teacher CoT), evaluation and prediction all need "chat conversations in, n completions each
out". They name a backend so the same pipeline runs on a GPU node (vLLM), against a served or hosted
teacher (`vllm serve`, an API), or on CPU with a tiny model in tests. Every backend yields results as
they finish (`generate_outcomes`, which every stage uses) so that callers can persist each one at once
and a crash loses little. A conversation the backend gives up on (a server that keeps failing on it) need
not stop the others: its `ConversationFailed` comes in place of completions, and stage 1 records it.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import json
import logging
import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import httpx

from reasoningner.formats import message_text

logger = logging.getLogger(__name__)

Conversation = list[dict[str, str]]

# A UTF-16 half with no other: JSON can escape one ("\\ud83d"), no tokenizer or UTF-8 encoder takes it.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class BackendMissing(ImportError):
    """A backend's package is not installed here: the user's environment, not a bug (one line, no
    traceback, from the CLI and the stages)."""


VLLM_MISSING = (
    'The vllm backend needs vLLM, which is not installed: pip install -e ".[vllm]" (docker/ has it)'
)


# Backend options that change what a backend writes (the model's weights, template and precision, the
# engine's seed): stage 1 refuses records made otherwise. The run options say only where a backend runs
# and how fast (servers, batch sizes, memory, retries): an evaluation keeps outputs asked otherwise, and
# asks anew when any other option changes (an engine option unknown here may change the text).
OUTPUT_OPTIONS = frozenset(
    {
        "model", "revision", "tokenizer", "tokenizer_revision", "dtype", "quantization", "seed",
        "chat_template_kwargs", "generation_config", "override_generation_config",
    }
)  # fmt: skip
RUN_OPTIONS = frozenset(
    {
        "base_url", "api_key_env", "max_concurrency", "request_timeout", "max_attempts", "backoff_base",
        "backoff_max", "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization",
        "chunk_size", "batch_size", "device",
    }
)  # fmt: skip


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample, in the terms every backend understands; temperature 0 means greedy."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = 0

    @property
    def greedy(self) -> bool:
        """Decoding without sampling: n answers are one answer repeated (`Generator.generate_outcomes`)."""
        return self.temperature == 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if not self.temperature >= 0:  # NaN too: neither greedy nor a sampling temperature
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Completion:
    """One sampled answer, its length in generated tokens (0 when the backend does not say), and why
    generation stopped: "stop", "length" (cut off at max_new_tokens), None when the backend does not say.
    Stage 1 needs the reason: a cut-off answer is not the teacher's answer."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None


class GenerationError(RuntimeError):
    """A backend could not produce completions (e.g. a server kept failing); never carries credentials."""


class ConversationFailed(GenerationError):
    """The backend gave up on one conversation (retries exhausted, a request refused); others may go on.
    `refused`: the backend answered, refusing this request (a prompt too long), rather than failing."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


Outcome = list[Completion] | ConversationFailed


class Generator(ABC):
    """A generation backend. Use as a context manager, or call `close()`, to free engines and memory."""

    name: ClassVar[str]
    # The model's context in tokens, when the backend knows it: prompts are bounded by it (`predict`).
    context_tokens: int | None = None

    def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int] | None:
        """Each conversation's prompt length in tokens, chat template included, as this backend sends
        it; None when the backend cannot count them (a server), and characters must do."""
        return None

    def generate_iter(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Yield `(index into conversations, its n completions)` as each conversation finishes.

        Order is the backend's completion order; every index is yielded exactly once. Greedy decoding
        generates once and repeats the result n times (vLLM refuses n > 1 when greedy). The first
        conversation the backend gives up on raises its `ConversationFailed`.
        """
        for index, outcome in self.generate_outcomes(conversations, sampling):
            if isinstance(outcome, ConversationFailed):
                raise outcome
            yield index, outcome

    def generate_outcomes(
        self,
        conversations: Sequence[Conversation],
        sampling: SamplingConfig,
        seeds: Sequence[int | None] | None = None,
    ) -> Iterator[tuple[int, Outcome]]:
        """`generate_iter`, except that a conversation the backend gives up on is yielded with its
        `ConversationFailed` and the others go on, so that one bad sentence does not stop a long run.
        Errors that concern every conversation (a refused API key, an engine crash) still raise.
        `seeds`, one per conversation, replace `sampling.seed`: stage 1 asks retries (another seed each)
        in one call with first tries, where a call of their own would leave the teacher nearly idle."""
        if not conversations:  # nothing to ask: no backend is started or called
            return
        conversations = without_lone_surrogates(list(conversations))
        if seeds is None:
            seeds = [sampling.seed] * len(conversations)
        elif len(seeds) != len(conversations):
            raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
        if not sampling.greedy or sampling.n == 1:
            yield from self._generate(conversations, sampling, seeds)
            return
        for index, outcome in self._generate(conversations, replace(sampling, n=1), seeds):
            yield index, outcome if isinstance(outcome, ConversationFailed) else outcome * sampling.n

    @abstractmethod
    def _generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
    ) -> Iterator[tuple[int, Outcome]]:
        """`generate_outcomes` for this backend, with n == 1 whenever decoding is greedy and each
        conversation's seed in `seeds` (`sampling.seed` is not read)."""

    def generate(
        self,
        conversations: Sequence[Conversation],
        sampling: SamplingConfig,
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        """n completions per conversation, in input order; `on_done(index)` as each one finishes."""
        results: list[list[Completion] | None] = [None] * len(conversations)
        for index, completions in self.generate_iter(conversations, sampling):
            results[index] = completions
            if on_done is not None:
                on_done(index)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise GenerationError(f"{self.name} backend returned nothing for conversations {missing[:10]}")
        return results  # type: ignore[return-value]

    def close(self) -> None:  # noqa: B027 - a no-op is right for backends that hold nothing
        """Release engines, models and clients."""

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class DeferredGenerator(Generator):
    """A backend built at its first use: an evaluation whose outputs are all kept from an earlier run
    (a relaunch, a rescoring with today's code) loads no model, which for vLLM takes minutes and a GPU."""

    name = "deferred"

    def __init__(self, build: Callable[[], Generator]) -> None:
        self._build = build
        self._backend: Generator | None = None

    @property
    def backend(self) -> Generator:
        if self._backend is None:
            self._backend = self._build()
        return self._backend

    @property  # type: ignore[override]
    def context_tokens(self) -> int | None:
        return self.backend.context_tokens

    def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int] | None:
        return self.backend.prompt_tokens(conversations)

    def _generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
    ) -> Iterator[tuple[int, Outcome]]:
        return self.backend._generate(conversations, sampling, seeds)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def _free_memory() -> None:
    """Return a dropped model's memory now rather than at the next collection."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class VLLMGenerator(Generator):
    """Offline vLLM engine: the fast path on GPUs.

    `engine_kwargs` go to `vllm.LLM` unchanged (e.g. `enforce_eager`, `enable_prefix_caching`). Conversations
    are sent in chunks of `chunk_size` so that results reach the caller (and disk) during a long run while
    each chunk is still large enough for vLLM to batch well.

    A LoRA adapter folder (stage 2 or 3 with `use_peft` and no merge) is served as vLLM serves adapters:
    its base model (at the revision the adapter records) with LoRA enabled, the adapter on every request,
    and the adapter folder's tokenizer, which holds the chat template it was trained with.
    """

    name = "vllm"

    def __init__(
        self,
        model: str | Path,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        chunk_size: int = 1024,
        chat_template_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if engine_kwargs.get("data_parallel_size", 1) != 1:
            # vLLM refuses `LLM(data_parallel_size=k)` in one process (vllm-project/vllm#27282).
            raise ValueError(
                "backend_options data_parallel_size: vLLM's offline engine runs data parallel only as one "
                "process per rank, and this backend is one process. Use tensor_parallel_size, split stage 1 "
                "over processes with --shard i/n, or serve the model (vllm serve --data-parallel-size N) "
                "and use the openai backend"
            )
        try:
            import vllm
        except ImportError as exc:
            raise BackendMissing(VLLM_MISSING) from exc
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self._vllm = vllm
        self.chunk_size = chunk_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        if max_model_len is not None:
            engine_kwargs["max_model_len"] = max_model_len
        self._lora: Any = None
        if (Path(model) / ADAPTER_CONFIG).is_file():  # `configs.is_adapter`, which imports this module
            model, self._lora = _lora_engine(Path(model), engine_kwargs)
        self._llm: Any = vllm.LLM(
            model=str(model),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            **engine_kwargs,
        )
        # max_model_len, or the model's own context when not given (as TRL's GRPO reads it).
        self.context_tokens = self._llm.llm_engine.model_config.max_model_len

    def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int]:
        tokenizer = self._llm.get_tokenizer()
        return token_counts(tokenizer, render_prompts(tokenizer, conversations, self.chat_template_kwargs))

    def _generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
    ) -> Iterator[tuple[int, Outcome]]:
        """Chunk by chunk; a prompt with no room left in max_model_len fails alone: vLLM raises for the
        whole call ("This model's maximum context length is N tokens. However, your prompt contains M input
        tokens"), which a rerun of stage 1 would meet again at the same chunk. Each prompt gets the
        parameters of its seed (`LLM.chat` pairs a list of them with the prompts one by one)."""
        if self._llm is None:
            raise GenerationError("vllm generator is closed")
        params = {
            seed: self._vllm.SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
            )
            for seed in set(seeds)
        }
        for start in range(0, len(conversations), self.chunk_size):
            chunk = list(conversations[start : start + self.chunk_size])
            fits = []
            for offset, count in enumerate(self.prompt_tokens(chunk)):
                if count < self.context_tokens:
                    fits.append(offset)
                else:
                    yield (
                        start + offset,
                        ConversationFailed(
                            f"the prompt is {count} tokens, and max_model_len is {self.context_tokens}",
                            refused=True,
                        ),
                    )
            if not fits:
                continue
            adapter = {"lora_request": self._lora} if self._lora is not None else {}
            prompt_seeds = [seeds[start + offset] for offset in fits]
            outputs = self._llm.chat(
                [chunk[offset] for offset in fits],
                params[prompt_seeds[0]] if len(set(prompt_seeds)) == 1 else [params[s] for s in prompt_seeds],
                use_tqdm=False,
                chat_template_kwargs=self.chat_template_kwargs or None,
                **adapter,
            )
            for offset, output in zip(fits, outputs, strict=True):
                yield (
                    start + offset,
                    [Completion(o.text, len(o.token_ids), o.finish_reason) for o in output.outputs],
                )

    def close(self) -> None:
        self._llm = None
        _free_memory()


ADAPTER_CONFIG = "adapter_config.json"
# vLLM's `max_lora_rank` takes one of these (its LoRAConfig.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_config(folder: str | Path) -> dict[str, Any]:
    """A LoRA adapter folder's `adapter_config.json`: its base, ranks and what else it trains."""
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def vllm_lora_rank(config: dict[str, Any]) -> int | None:
    """The `max_lora_rank` vLLM serves an adapter with (its `adapter_config.json`): the smallest of
    `VLLM_LORA_RANKS` that holds its every rank; None: over them all."""
    rank = max([int(config.get("r") or 16), *map(int, (config.get("rank_pattern") or {}).values())])
    return next((limit for limit in VLLM_LORA_RANKS if limit >= rank), None)


def _lora_engine(adapter: Path, engine_kwargs: dict[str, Any]) -> tuple[str, Any]:
    """The base model to load for a LoRA adapter folder and the request that applies the adapter;
    `engine_kwargs` gain what vLLM needs to apply it (the options given win)."""
    from vllm.lora.request import LoRARequest

    config = adapter_config(adapter)
    if config.get("modules_to_save"):
        raise ValueError(
            f"{adapter}: a LoRA adapter that also trains {config['modules_to_save']} is not one vLLM "
            "applies: evaluate its merged model (merge_lora: true) or use the transformers backend"
        )
    rank = vllm_lora_rank(config)
    if rank is None:
        raise ValueError(f"{adapter}: a LoRA rank over vLLM's limit {VLLM_LORA_RANKS[-1]}: merge it")
    engine_kwargs.setdefault("enable_lora", True)
    engine_kwargs.setdefault("max_lora_rank", rank)
    if (adapter / "tokenizer_config.json").is_file():  # our stages save it, with the trained template
        engine_kwargs.setdefault("tokenizer", str(adapter))
    if config.get("revision"):
        engine_kwargs.setdefault("revision", config["revision"])
    return str(config["base_model_name_or_path"]), LoRARequest("reasoningner-adapter", 1, str(adapter))


class OpenAIGenerator(Generator):
    """Any OpenAI-compatible `/chat/completions` server: `vllm serve`, `transformers serve`, a hosted API.

    Up to `max_concurrency` requests are in flight at once (servers batch concurrent requests). Each
    request gets `request_timeout` seconds in total; 408/429/5xx answers, timeouts, connection errors
    and 200 answers that are not JSON with choices (a proxy's error page, a server's error object) are
    retried up to `max_attempts` times with exponential backoff and jitter (honouring Retry-After), then
    that conversation fails with a `ConversationFailed` naming the last problem and a body excerpt; so
    does one whose request is refused (another 4xx: e.g. a prompt too long). 401, 403 and 404 say the
    key, the model or the URL is wrong for every request: they raise a `GenerationError` at once. The
    API key is read once from the environment variable `api_key_env` (none sent if unset) and kept out
    of reprs, logs and errors.
    """

    name = "openai"
    RETRYABLE_STATUS: ClassVar[frozenset[int]] = frozenset({408, 429})
    FATAL_STATUS: ClassVar[frozenset[int]] = frozenset({401, 403, 404})

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        request_timeout: float = 300.0,
        max_attempts: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        api_key = os.environ.get(api_key_env) if api_key_env else None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if api_key:
            self._key_note = f"API key from ${api_key_env}"
        else:
            self._key_note = (
                f"no API key: ${api_key_env} is unset" if api_key_env else "no API key configured"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r})"

    def _generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
    ) -> Iterator[tuple[int, Outcome]]:
        """Run a private event loop, stepping it until some conversation finishes, then yield that one.

        At most 2 x max_concurrency conversations are scheduled at a time, so memory stays flat on large
        datasets; the semaphore bounds requests (a conversation may need several, see `_complete`).
        Leaving the iterator early cancels what is still in flight.
        """
        if not conversations:
            return
        loop = asyncio.new_event_loop()
        # No httpx timeouts: `_post` puts one deadline on the whole request, connecting included.
        client = httpx.AsyncClient(
            headers=self._headers, timeout=None, limits=httpx.Limits(max_connections=self.max_concurrency)
        )
        semaphore = asyncio.Semaphore(self.max_concurrency)
        todo = iter(enumerate(conversations))
        pending: dict[asyncio.Task[Outcome], int] = {}

        def schedule() -> None:
            for index, conversation in itertools.islice(todo, 2 * self.max_concurrency - len(pending)):
                asking = replace(sampling, seed=seeds[index])
                task = loop.create_task(self._complete(client, semaphore, conversation, asking))
                pending[task] = index

        try:
            schedule()
            while pending:
                done, _ = loop.run_until_complete(
                    asyncio.wait(set(pending), return_when=asyncio.FIRST_COMPLETED)
                )
                for task in sorted(done, key=pending.__getitem__):
                    index = pending.pop(task)
                    yield index, task.result()
                schedule()
        finally:
            shut_down(loop, list(pending), client)
            loop.close()

    async def _complete(
        self,
        client: httpx.AsyncClient,
        semaphore: asyncio.Semaphore,
        conversation: Conversation,
        sampling: SamplingConfig,
    ) -> Outcome:
        """n completions for one conversation, topping up with single-sample requests if the server
        returned fewer choices than asked (`transformers serve` ignores `n`). Each top-up request gets
        its own seed, or a server that does honour seeds would return the same sample n times. A
        conversation the server keeps failing on is returned as its `ConversationFailed`."""
        try:
            completions = await self._post(
                client, semaphore, self._body(conversation, sampling, sampling.n, sampling.seed)
            )
        except ConversationFailed as failure:
            return failure
        missing = sampling.n - len(completions)
        if missing > 0:
            seeds = [
                None if sampling.seed is None else sampling.seed + len(completions) + i
                for i in range(missing)
            ]
            extra = await asyncio.gather(
                *(
                    self._post(client, semaphore, self._body(conversation, sampling, 1, seed))
                    for seed in seeds
                ),
                return_exceptions=True,  # siblings of a failed top-up finish instead of being orphaned
            )
            for result in extra:
                if isinstance(result, ConversationFailed):
                    return result
                if isinstance(result, BaseException):
                    raise result
            completions += [result[0] for result in extra]  # type: ignore[index]
        return completions[: sampling.n]

    def _body(self, conversation: Conversation, sampling: SamplingConfig, n: int, seed: int | None) -> dict:
        body: dict[str, Any] = {
            "messages": conversation,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if self.model is not None:
            body["model"] = self.model
        if n > 1:
            body["n"] = n
        if seed is not None:
            body["seed"] = seed
        if self.chat_template_kwargs:
            body["chat_template_kwargs"] = self.chat_template_kwargs
        return body

    def _parse(self, payload: Any) -> list[Completion]:
        """Completions in choice order. Servers report completion tokens summed over the choices, so
        the total is split evenly (remainder to the first ones) and still adds up. A payload without
        choices is a ValueError, which `_post` retries."""
        try:
            choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
            reasons = [choice.get("finish_reason") for choice in choices]
            # Only reasoning and cut at max_tokens: the output ended inside its rationale (an unclosed
            # <think>). Half an emoji escaped in the server's JSON would fail a tokenizer or strict UTF-8.
            texts = [
                LONE_SURROGATE.sub(
                    "\ufffd", message_text(choice["message"], cut_when_only_reasoning=reason == "length")
                )
                for choice, reason in zip(choices, reasons, strict=True)
            ]
            total = int((payload.get("usage") or {}).get("completion_tokens") or 0)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ValueError(f"HTTP 200 with a malformed completion: {_excerpt(str(payload))}") from None
        if not texts:
            raise ValueError(f"HTTP 200 with no choices: {_excerpt(str(payload))}")
        share, remainder = divmod(total, len(texts))
        return [
            Completion(text, share + (i < remainder), reason)
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]

    def _read(self, response: httpx.Response) -> list[Completion]:
        """The completions of a 200 answer; ValueError when it is not JSON with choices."""
        try:
            payload = response.json()
        except ValueError:
            raise ValueError(f"HTTP 200 with invalid JSON: {_excerpt(response.text)}") from None
        return self._parse(payload)

    async def _post(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, body: dict
    ) -> list[Completion]:
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            try:
                async with semaphore:
                    response = await asyncio.wait_for(client.post(self.url, json=body), self.request_timeout)
            except TimeoutError:
                problem = f"no answer within {self.request_timeout:g}s"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return self._read(response)
                    except ValueError as exc:
                        problem = str(exc)
                else:
                    problem = f"HTTP {status}: {_excerpt(response.text)}"
                    refusal = f"{self.url} refused the request ({self._key_note}): {problem}"
                    if status in self.FATAL_STATUS:
                        raise GenerationError(refusal)
                    if status < 500 and status not in self.RETRYABLE_STATUS:
                        raise ConversationFailed(refusal, refused=True)
                    retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt < self.max_attempts:
                delay = self._backoff(attempt, retry_after)
                logger.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.2fs",
                    self.url,
                    attempt,
                    self.max_attempts,
                    problem,
                    delay,
                )
                await asyncio.sleep(delay)
        raise ConversationFailed(f"{self.url}: gave up after {self.max_attempts} attempts; last: {problem}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with jitter in [delay/2, delay], so that many clients do not retry in lockstep."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        delay = random.uniform(delay / 2, delay)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay


# How long the requests still in flight get to unwind when a run stops.
SHUTDOWN_S = 5.0


def shut_down(loop: asyncio.AbstractEventLoop, pending: list[asyncio.Task], client: Any) -> None:
    """Cancel what is still in flight, let it unwind, then close the connections; give up after
    `SHUTDOWN_S`. A Ctrl-C (KeyboardInterrupt) can land inside one of the loop's callbacks and leave a
    connection that never finishes closing: waiting for it kept an interrupted CoT run alive for good."""

    async def unwind() -> None:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await client.aclose()

    closing = loop.create_task(unwind())
    loop.run_until_complete(asyncio.wait({closing}, timeout=SHUTDOWN_S))
    if not closing.done():
        logger.warning("requests still in flight did not stop within %g s: left open", SHUTDOWN_S)


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is rare from model servers and ignored."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class TransformersGenerator(Generator):
    """Local batched `model.generate`, for CPU runs and small teachers.

    Prompts are left-padded, `batch_size` conversations at a time, batched longest prompt first and
    yielded batch by batch: rows of similar length waste less padding, and since output length follows
    input length in NER, a batch less often waits for one long row (it stops only when every row has
    ended); the first batch also shows the peak memory. Sampling uses the checkpoint's other generation
    defaults (e.g. top_k), as `transformers serve` does.
    Token counts stop at the first end-of-sequence token (counted), so padding is never counted.
    """

    name = "transformers"

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 8,
        chat_template_kwargs: dict[str, Any] | None = None,
        use_kernels: bool = False,
        revision: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        # `revision`: a Hub model's commit, branch or tag (its prompt contract is read there too).
        self._tokenizer: Any = AutoTokenizer.from_pretrained(model, padding_side="left", revision=revision)
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if device is None:  # the first GPU where there is one: an 8B model on CPU would take days
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        # Hub kernels only when asked for (`training.model_init_kwargs` says why).
        self._model: Any = (
            AutoModelForCausalLM.from_pretrained(
                model, dtype=dtype, use_kernels=use_kernels, revision=revision
            )
            .to(device)
            .eval()
        )
        self.context_tokens = getattr(self._model.config, "max_position_embeddings", None)
        # Every end id the model declares and the tokenizer's, as TRL's GRPO and vLLM stop: a LoRA adapter
        # loads its base's generation config, which for Qwen3-Base lacks the chat turn's end (<|im_end|>,
        # the tokenizer's eos), and would run on to max_new_tokens past the answer it was trained to end.
        eos = self._model.generation_config.eos_token_id
        declared = eos if isinstance(eos, list) else [eos]
        self._eos_ids = {t for t in [*declared, self._tokenizer.eos_token_id] if t is not None}

    def _generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
    ) -> Iterator[tuple[int, list[Completion]]]:
        """The conversations of each seed together, in the order seeds first occur: the seed is the
        global torch generator's, set once per group."""
        import torch

        if self._model is None:
            raise GenerationError("transformers generator is closed")
        groups: dict[int | None, list[int]] = {}
        for index, seed in enumerate(seeds):
            groups.setdefault(seed, []).append(index)
        for seed, indices in groups.items():
            if seed is not None:
                torch.manual_seed(seed)
            for offset, outcome in self._batches([conversations[i] for i in indices], sampling):
                yield indices[offset], outcome

    def _batches(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig
    ) -> Iterator[tuple[int, list[Completion]]]:
        import torch

        sample = sampling.temperature > 0
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "pad_token_id": self._tokenizer.pad_token_id,
            "do_sample": sample,
            "num_return_sequences": sampling.n,
            "eos_token_id": sorted(self._eos_ids),
        }
        if sample:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
        prompts = render_prompts(self._tokenizer, conversations, self.chat_template_kwargs)
        lengths = token_counts(self._tokenizer, prompts)
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = self._tokenizer(
                [prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            )
            inputs = inputs.to(self._model.device)
            with torch.inference_mode():
                output = self._model.generate(**inputs, **options)
            generated = output[:, inputs["input_ids"].shape[1] :].tolist()
            for offset, index in enumerate(batch):
                rows = generated[offset * sampling.n : (offset + 1) * sampling.n]
                yield index, [self._completion(row) for row in rows]

    def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int]:
        return token_counts(
            self._tokenizer, render_prompts(self._tokenizer, conversations, self.chat_template_kwargs)
        )

    def _completion(self, tokens: list[int]) -> Completion:
        """Up to the first end-of-sequence token; a row without one ran into max_new_tokens (generation
        stops early only when every row of the batch has ended)."""
        end = next((i + 1 for i, token in enumerate(tokens) if token in self._eos_ids), None)
        if end is None:
            return Completion(self._tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), "length")
        return Completion(self._tokenizer.decode(tokens[:end], skip_special_tokens=True), end, "stop")

    def close(self) -> None:
        self._model = None
        _free_memory()


def without_lone_surrogates(value: Any) -> Any:
    """`value` (strings, in lists and dicts at any depth) with U+FFFD for each lone surrogate (a JSON
    "\\ud83d" in a dataset, half an emoji), which nothing that writes UTF-8 takes: a tokenizer, an HTTP
    body, an Arrow dataset; every backend's prompts go through it, as do training rows. One character
    for one, so offsets into a sentence still hold."""
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {key: without_lone_surrogates(item) for key, item in value.items()}
    return value


def render_prompts(
    tokenizer: Any, conversations: Sequence[Conversation], chat_template_kwargs: dict[str, Any]
) -> list[str]:
    """The prompt text of each conversation: its chat template with the assistant turn opened."""
    return [
        tokenizer.apply_chat_template(
            without_lone_surrogates(conversation),
            add_generation_prompt=True,
            tokenize=False,
            **chat_template_kwargs,
        )
        for conversation in conversations
    ]


def token_counts(tokenizer: Any, prompts: list[str]) -> list[int]:
    """Tokens of each rendered prompt (the template already holds the special tokens)."""
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


BACKENDS: dict[str, type[Generator]] = {
    cls.name: cls for cls in (VLLMGenerator, OpenAIGenerator, TransformersGenerator)
}


def options_from(value: dict[str, Any] | str | None) -> dict[str, Any]:
    """Backend options as a recipe gives them (a mapping) or as a CLI override does (a JSON string)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise ValueError(f"backend_options must be a JSON object, got {value!r}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"backend_options must be a mapping, got {value!r}")
    return dict(value)


def check_options(backend: str, options: dict[str, Any]) -> None:
    """Refuse an option the backend does not take, or lacks one it needs, in one line that names them
    and the options it accepts, before anything loads (a TypeError from deep inside says neither).

    vLLM hands options it does not name to its engine, which names an unknown one itself.
    """
    parameters = dict(inspect.signature(BACKENDS[backend].__init__).parameters)
    parameters.pop("self")
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = sorted(parameters)
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(f"unknown backend_options {unknown}: the {backend} backend accepts {accepted}")
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in options]
    if missing:
        raise ValueError(f"missing backend_options {missing}: the {backend} backend accepts {accepted}")


def build_generator(backend: str, **options: Any) -> Generator:
    """The named backend ("vllm", "openai" or "transformers") built with its own keyword options."""
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown generation backend {backend!r}; choose one of {sorted(BACKENDS)}"
        ) from None
    check_options(backend, options)
    return cls(**options)
