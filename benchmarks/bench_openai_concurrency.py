"""How much the openai backend's concurrency buys: the same NER prompts sent to a local OpenAI-compatible
server (`transformers serve` on loopback) one request at a time, then several at once.

A batching server (vLLM, or transformers serve with continuous batching, the default here) answers
concurrent requests together, so stage 1's throughput against a served teacher should scale with
`max_concurrency`; a sequential server shows what is left: overlap of HTTP and tokenisation only.
Without --model, a random tiny model is built in a temporary folder (its text is junk; only speed counts).
Each concurrency runs `--repeats` times, the order reversed every other round, after one warm-up; the
figures are each one's median with its range, and the speed-up the ratio of medians.

    python benchmarks/bench_openai_concurrency.py [--model PATH] [--concurrency 1 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from timing import add_repeats, check_repeats, median_run, rounds

from reasoningner.generation import OpenAIGenerator, SamplingConfig
from reasoningner.tiny_model import build_tiny_model

SENTENCES = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn",
    "BRUSSELS 1996-08-22",
    "The European Commission said on Thursday it disagreed with German advice to consumers .",
    "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said .",
    "Fischler proposed EU-wide measures after reports from Britain and France .",
    "Spanish Farm Minister Loyola de Palacio had earlier accused Fischler of causing panic .",
    "Rabinovich is winding up his term as ambassador to Washington .",
    "Japan began the defence of their Asian Cup title with a lucky 2-1 win against Syria .",
    "Apple hired Mary Smith from Google in London last year .",
    "The match in Melbourne was delayed by rain , Reuters reported .",
    "Barack Obama met Angela Merkel at the White House on Monday .",
]
INSTRUCTION = "Find the named entities (PER, LOC, ORG, MISC) in the sentence and answer in JSON.\nSentence: "


def conversations(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": INSTRUCTION + SENTENCES[i % len(SENTENCES)]}] for i in range(count)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def transformers_serve(model: Path, continuous_batching: bool, threads: int, log_path: Path) -> Iterator[str]:
    """`transformers serve` pinned to `model` on a free loopback port; yields its base URL, then stops it."""
    port = free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    command.append("--continuous-batching" if continuous_batching else "--no-continuous-batching")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "OMP_NUM_THREADS": str(threads),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def measure(base_url: str, concurrency: int, prompts: list, sampling: SamplingConfig) -> dict[str, float]:
    with OpenAIGenerator(
        base_url, api_key_env=None, max_concurrency=concurrency, request_timeout=600
    ) as client:
        started = time.perf_counter()
        results = client.generate(prompts, sampling)
        seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for completions in results for c in completions)
    return {
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "sentences_per_s": round(len(prompts) / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "completion_tokens": tokens,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="checkpoint to serve (default: build a random tiny model)")
    parser.add_argument("--sentences", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--continuous-batching", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--threads", type=int, default=1, help="server torch threads (1: steady figures on a shared machine)"
    )
    add_repeats(parser, "runs of each concurrency")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    check_repeats(parser, args.repeats)

    prompts = conversations(args.sentences)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "tiny", SENTENCES * 20, vocab_size=1024)
        with transformers_serve(
            model, args.continuous_batching, args.threads, Path(tmp) / "serve.log"
        ) as base_url:
            measure(base_url, max(args.concurrency), prompts[:8], sampling)  # warm-up: load, first batch
            timed: dict[int, list[dict]] = {c: [] for c in args.concurrency}
            for _, c in rounds(args.concurrency, args.repeats):
                timed[c].append(measure(base_url, c, prompts, sampling))
    runs = [median_run(timed[c]) for c in args.concurrency]

    mode = "continuous batching" if args.continuous_batching else "sequential"
    model_name = args.model or "tiny random"
    print(f"{args.sentences} sentences, max_new_tokens={args.max_new_tokens}, greedy decoding")
    print(f"transformers serve ({mode}) on CPU with {args.threads} thread(s), model: {model_name}")
    print(f"{'concurrency':>11} {'median s (range)':>20} {'sentences/s':>12} {'tokens/s':>9}")
    for run in runs:
        low, high = run["seconds_range"]
        spread = f"{run['seconds']:.2f} ({low:.2f}-{high:.2f})"
        rate, tokens = f"{run['sentences_per_s']:.2f}", f"{run['tokens_per_s']:.1f}"
        print(f"{run['concurrency']:>11} {spread:>20} {rate:>12} {tokens:>9}")
    speedup = runs[-1]["sentences_per_s"] / runs[0]["sentences_per_s"]
    print(f"speed-up, concurrency {runs[-1]['concurrency']} vs {runs[0]['concurrency']}: {speedup:.2f}x")
    if args.json:
        figures = {
            "sentences": args.sentences,
            "max_new_tokens": args.max_new_tokens,
            "continuous_batching": args.continuous_batching,
            "server_threads": args.threads,
            "repeats": args.repeats,
            "model": str(model_name),
            "runs": runs,
            "speedup": round(speedup, 2),
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
