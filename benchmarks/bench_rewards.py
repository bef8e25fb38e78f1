"""Throughput of the composite GRPO reward next to the minimal reward ReasoningNER computes.

Completions are generated deterministically from real CoNLL-2003 sentences: right answers, partly
wrong ones, malformed ones (truncated, unclosed rationale, code fence, Python literal, no answer...)
and hacks (empty rationale, answer copied into the rationale, invented entities, labels outside the
schema, empty answer, repeated entities, giant output), with rationales of varied length. Every
completion string is distinct and every cache is emptied before each timed run, so caching only
saves what it saves in training: the four components after the first reuse the first one's parse
(`rewards.analyse`), and completions of the same sentence share its gold and its mentions' lookups.

The composite is the five registered components (strict parsing, the RL default) called one after
the other on each batch, as TRL's GRPOTrainer calls them (conversational completions, dataset
columns as keyword lists). The baseline is the reward ReasoningNER trains with
(HuiResearch/ReasoningIE, `grpo.py`) as `rewards` ports it for the paper's recipes (`reasoningie_f1`,
`reasoningie_schema`): two components called the same way, each taking its own answer out of the
completion (think blocks removed, <answer> or ```json unwrapped), `json.loads` of it, and
mentions normalised as SQuAD does (case, punctuation, articles, spaces). The floor is a single
component pared down to `json.loads` of what follows `</think>` and the F1 of (text, label) sets
against gold pairs built in advance: a lower bound on any reward that reads JSON in Python, printed
for scale.

    python benchmarks/bench_rewards.py [--n 10000] [--batch-size 64] [--generations 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from operator import mul
from pathlib import Path
from typing import Any

from reasoningner import formats, metrics, rationale, rewards, spans
from reasoningner.formats import get_format
from reasoningner.prompts import assistant_target
from reasoningner.rationale import assertion
from reasoningner.readers import read_dataset
from reasoningner.rewards import DEFAULT_WEIGHTS, MAX_COMPLETION_CHARS, get_rewards
from reasoningner.spans import Example

DATA = Path(__file__).resolve().parents[1] / "data" / "conll2003" / "train-slice.txt"
FORMAT = get_format("grouped_json")
Columns = dict[str, list[Any]]


def _answer(groups: dict[str, list[str]]) -> str:
    return json.dumps({"entities": {label: texts for label, texts in groups.items() if texts}})


def _groups(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for text, label in pairs:
        groups.setdefault(label, []).append(text)
    return groups


def _rationale(example: Example, pairs: list[tuple[str, str]], rng: random.Random) -> str:
    """Assertions of `pairs` with a varying amount of context, plus a varying number of rejected words."""
    context = rng.randint(1, 6)
    lines = []
    for text, label in pairs:
        at = example.text.find(text)
        if at == -1:
            lines.append(f"{assertion(text, label)}, as far as I know.")
            continue
        left = example.text[:at].split()[-context:]
        right = example.text[at + len(text) :].split()[:context]
        lines.append(
            f"{assertion(text, label)}, from its context: {' '.join([*left, '[', text, ']', *right])}"
        )
    words = [w for w in example.text.split() if w.isalpha()]
    for word in rng.sample(words, min(len(words), rng.randint(0, 8))):
        lines.append(f'"{word}" is not an entity: it names no thing of the given types.')
    lines.append(f"No {'other ' if pairs else ''}span names an entity of the given types.")
    return "\n".join(lines)


def _unique_word(rng: random.Random) -> str:
    return "".join(
        rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4))
    ).title()


def make_completion(example: Example, kind: str, rng: random.Random) -> str:
    """One completion of `kind` for `example`; `rng` picks what varies (which entity, where to cut...)."""
    gold = example.span_texts()
    labels = list(example.schema.labels)
    pairs = list(gold)
    if kind == "dropped" and pairs:
        pairs.pop(rng.randrange(len(pairs)))
    elif kind == "relabelled" and pairs:
        i = rng.randrange(len(pairs))
        pairs[i] = (pairs[i][0], rng.choice([label for label in labels if label != pairs[i][1]]))
    elif kind == "extra":
        word = rng.choice(example.text.split())
        pairs.append((word, rng.choice(labels)))
    elif kind == "invented":
        pairs += [(_unique_word(rng), rng.choice(labels)) for _ in range(rng.randint(1, 3))]
    elif kind == "bad_label":
        pairs = [(text, rng.choice(["PER", "LOC", "date", "thing"])) for text, _ in pairs] or [
            (rng.choice(example.text.split()), "PER")
        ]
    elif kind == "empty_answer":
        pairs = []
    elif kind == "repeated":
        pairs = [pair for pair in pairs for _ in range(rng.randint(2, 4))]
    answer = _answer(_groups(pairs))
    reasoning = _rationale(example, pairs if kind != "inconsistent" else gold[1:], rng)
    if kind == "truncated":
        return assistant_target(answer, reasoning)[: -rng.randint(1, len(answer) - 1)]
    if kind == "unclosed":
        return f"<think>\n{reasoning[: rng.randint(1, len(reasoning))]}"
    if kind == "fenced":
        return assistant_target(f"```json\n{answer}\n```", reasoning)
    if kind == "python_literal":
        return assistant_target(repr(json.loads(answer)), reasoning)
    if kind == "invalid_json":
        return assistant_target(
            answer.replace('", "', '" "', 1).replace("}}", "}", rng.randint(0, 1)), reasoning
        )
    if kind == "extra_text":
        return assistant_target(f"The answer is {answer}. I hope this helps!", reasoning)
    if kind == "no_answer":
        return assistant_target("", reasoning)
    if kind == "no_think":
        return answer
    if kind == "empty_rationale":
        return f"<think>{' ' * rng.randint(0, 3)}</think>{answer}"
    if kind == "copied":
        return assistant_target(answer, f"{reasoning}\nSo the answer is {answer}")
    if kind == "giant":
        filler = reasoning + "\n" + "I am still thinking about this sentence. " * rng.randint(1, 4)
        return assistant_target(answer, filler * (MAX_COMPLETION_CHARS // len(filler) + 1))
    return assistant_target(answer, reasoning)


# (kind, weight): mostly plausible outputs of a model in training, every malformation and hack present.
KINDS: tuple[tuple[str, int], ...] = (
    ("right", 20),
    ("dropped", 8),
    ("relabelled", 8),
    ("extra", 8),
    ("inconsistent", 5),
    ("truncated", 5),
    ("unclosed", 4),
    ("fenced", 4),
    ("python_literal", 3),
    ("invalid_json", 3),
    ("extra_text", 3),
    ("no_answer", 2),
    ("no_think", 3),
    ("empty_rationale", 4),
    ("copied", 3),
    ("invented", 5),
    ("bad_label", 4),
    ("empty_answer", 4),
    ("repeated", 3),
    ("giant", 1),
)


def build_columns(
    examples: list[Example], n: int, seed: int = 0, generations: int = 1
) -> tuple[Columns, list[str]]:
    """`n` distinct conversational completions with the RL dataset's columns (ours and ReasoningNER's),
    and the kind of each; `generations` consecutive ones per sentence, as GRPO samples a group per prompt."""
    rng = random.Random(seed)
    names, weights = zip(*KINDS, strict=True)
    keys = ("completions", "text", "entities", "labels", "output_format")
    columns: Columns = {key: [] for key in keys}
    kinds: list[str] = []
    seen: set[str] = set()
    example = examples[0]
    while len(seen) < n:
        if len(seen) % generations == 0:  # a new group
            example = rng.choice(examples)
        kind = rng.choices(names, weights)[0]
        completion = make_completion(example, kind, rng)
        if completion in seen:
            continue
        seen.add(completion)
        kinds.append(kind)
        columns["completions"].append([{"role": "assistant", "content": completion}])
        columns["text"].append(example.text)
        columns["entities"].append(example.entity_dicts())
        columns["labels"].append(list(example.schema.labels))
        columns["output_format"].append(FORMAT.name)
    return columns, kinds


def syntax_problem(completion: list[dict[str, str]], text: str) -> bool:
    """Whether the parser finds a syntax problem (`formats.CONTENT_PROBLEMS` aside) in a completion."""
    parsed = FORMAT.parse(completion[0]["content"], text, spans.Schema(("x",)))
    return any(problem.kind not in formats.CONTENT_PROBLEMS for problem in parsed.problems)


def floor_rewards(completions: list[Any], entities: list[list[dict[str, Any]]], **_: Any) -> list[float]:
    """One component at its leanest: `json.loads` after `</think>`, set F1 of (text, label) pairs, else 0."""
    scores = []
    for completion, gold_entities in zip(completions, entities, strict=True):
        gold = {(e["text"], e["label"]) for e in gold_entities}
        try:
            groups = json.loads(completion[0]["content"].split("</think>")[-1].strip())["entities"]
            predicted = {(text, label) for label, texts in groups.items() for text in texts}
        except (ValueError, KeyError, TypeError, AttributeError):
            scores.append(0.0)
            continue
        if not predicted and not gold:
            scores.append(1.0)
        else:
            scores.append(2 * len(predicted & gold) / (len(predicted) + len(gold)))
    return scores


def baseline_rewards(columns: Columns, batch_size: int) -> list[float]:
    """ReasoningNER's two components (`rewards.reasoningie_f1`, `reasoningie_schema`: the ports the
    paper's recipes train with), called on whole batches as TRL does, summed with equal weight."""
    f1_reward, schema_reward = rewards.REWARDS["reasoningie_f1"], rewards.REWARDS["reasoningie_schema"]
    totals: list[float] = []
    for start in range(0, len(columns["completions"]), batch_size):
        batch = {key: values[start : start + batch_size] for key, values in columns.items()}
        f1, schema = f1_reward(**batch), schema_reward(**batch)
        totals += [a + b for a, b in zip(f1, schema, strict=True)]
    return totals


def composite_rewards(columns: Columns, batch_size: int, parse: str = "strict") -> list[float]:
    """The weighted five-part reward, each component called on whole batches as TRL does."""
    functions = get_rewards(list(DEFAULT_WEIGHTS), parse=parse)
    weights = list(DEFAULT_WEIGHTS.values())
    totals: list[float] = []
    for start in range(0, len(columns["completions"]), batch_size):
        batch = {key: values[start : start + batch_size] for key, values in columns.items()}
        per_function = [function(prompts=None, **batch) for function in functions]
        totals += [sum(map(mul, weights, scores)) for scores in zip(*per_function, strict=True)]
    return totals


def clear_caches() -> None:
    """Empty every memo on the reward path (`rewards.analyse` and the smaller ones it relies on), so
    that a run only saves what repeats within it: the sentences and labels its completions share."""
    for module in (rewards, formats, metrics, rationale, spans):
        for value in vars(module).values():
            if hasattr(value, "cache_clear"):
                value.cache_clear()


def best_rates(runs: dict[str, Callable[[], list[float]]], n: int, repeats: int) -> dict[str, float]:
    """Completions per second of each run's fastest of `repeats`, in CPU time of this process (other
    load on a shared machine counts as little as it can); the runs take turns, each with cold caches,
    in an order reversed every other turn, so that what a run leaves behind (memory just freed, warm
    CPU caches) does not always fall to the same one.

    The garbage collector is paused while a run is timed, as `timeit` does: its passes scale with
    everything else this process holds (the data set, the memos), not with the reward's own work.
    """
    best = dict.fromkeys(runs, float("inf"))
    turns = list(runs.items())
    for repeat in range(repeats):
        for name, run in turns if repeat % 2 == 0 else turns[::-1]:
            clear_caches()
            gc.collect()
            gc.disable()
            try:
                start = time.process_time()
                scores = run()
                best[name] = min(best[name], time.process_time() - start)
            finally:
                gc.enable()
            assert len(scores) == n
    return {name: n / seconds for name, seconds in best.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="completions to score")
    parser.add_argument("--batch-size", type=int, default=64, help="completions per reward call")
    # Other jobs on a shared machine make single runs vary by 10-20%; the fastest of 15 is steadier.
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--generations", type=int, default=1, help="completions per sentence (GRPO's num_generations)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    examples = [e for e in read_dataset(DATA).examples if FORMAT.expresses(e)]
    columns, kinds = build_columns(examples, args.n, args.seed, args.generations)
    lengths = sorted(len(c[0]["content"]) for c in columns["completions"])
    print(
        f"{args.n} distinct completions from {len(examples)} sentences, {len(set(kinds))} kinds; "
        f"length median {lengths[len(lengths) // 2]}, max {lengths[-1]} chars"
    )
    by_kind: defaultdict[str, list[float]] = defaultdict(list)
    for kind, score in zip(kinds, composite_rewards(columns, args.batch_size), strict=True):
        by_kind[kind].append(score)
    mean_reward = {kind: round(sum(s) / len(s), 3) for kind, s in sorted(by_kind.items())}
    print("mean composite reward (max 14) by kind:")
    print("  " + ", ".join(f"{k} {v:g}" for k, v in sorted(mean_reward.items(), key=lambda kv: -kv[1])))
    malformed = [
        i
        for i, (c, t) in enumerate(zip(columns["completions"], columns["text"], strict=True))
        if syntax_problem(c, t)
    ]
    malformed_max = {
        parse: max((scores[i] for i in malformed), default=0.0)
        for parse, scores in (
            ("strict", composite_rewards(columns, args.batch_size)),
            ("lenient", composite_rewards(columns, args.batch_size, parse="lenient")),
        )
    }
    print(
        f"most a completion with a syntax problem earns ({len(malformed)} of them): "
        f"strict {malformed_max['strict']:g}, lenient {malformed_max['lenient']:g} of 14"
    )
    rates = best_rates(
        {
            "composite": lambda: composite_rewards(columns, args.batch_size),
            "baseline": lambda: baseline_rewards(columns, args.batch_size),
            "floor": lambda: floor_rewards(**columns),
        },
        args.n,
        args.repeats,
    )
    composite, baseline, floor = rates["composite"], rates["baseline"], rates["floor"]
    results = {
        "completions": args.n,
        "batch_size": args.batch_size,
        "generations": args.generations,
        "composite_per_s": round(composite),
        "baseline_per_s": round(baseline),
        "ratio": round(composite / baseline, 3),
        "floor_per_s": round(floor),
        "ratio_to_floor": round(composite / floor, 3),
        "completions_by_kind": dict(sorted(Counter(kinds).items())),
        "mean_reward_by_kind": mean_reward,
        "max_reward_malformed": malformed_max,
    }
    print(f"composite reward (5 components): {composite:>9,.0f} completions/s")
    print(f"baseline (ReasoningNER F1+schema): {baseline:>7,.0f} completions/s")
    print(f"ratio composite / baseline:      {composite / baseline:>9.2f}")
    print(f"floor (json.loads + set F1 only): {floor:>8,.0f} completions/s, ratio {composite / floor:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
