"""The `reasoningner` command: `data` (stats, convert), `tiny-model`, `predict`, `doctor` and `score`.

The stages are not here: they are `stages/*.py`, which `make` runs with python, or with `accelerate
launch` / torchrun when NUM_GPUS or NUM_PROCS is set (see Makefile).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from reasoningner.configs import (
    DEFAULT_MAX_NEW_TOKENS,
    RENAMED,
    GenerationArguments,
    PromptArguments,
    require_model,
)
from reasoningner.files import write_whole
from reasoningner.formats import FORMATS
from reasoningner.generation import BACKENDS, BackendMissing, GenerationError, options_from
from reasoningner.predict import CUT_OFF, FAILED, NERModel, check_scoring
from reasoningner.readers import READERS, WRITERS, CannotWrite, read_dataset, write_dataset
from reasoningner.spans import Schema
from reasoningner.stats import dataset_stats


def _add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect and convert NER data files")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    stats = data_commands.add_parser("stats", help="sentence/entity counts, nesting and lengths of files")
    stats.add_argument("paths", nargs="+", type=Path)
    stats.add_argument("--reader", default="auto", choices=["auto", *READERS])
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats.add_argument(
        "--skip-bad", action="store_true", help="skip malformed records (they are counted and listed)"
    )
    stats.add_argument("--labels", help=LABELS_HELP)
    stats.set_defaults(handler=_stats)

    convert = data_commands.add_parser("convert", help="convert a file between supported formats")
    convert.add_argument("source", type=Path)
    convert.add_argument("target", type=Path)
    convert.add_argument("--reader", default="auto", choices=["auto", *READERS])
    convert.add_argument("--to", required=True, choices=sorted(WRITERS), help="output format")
    convert.add_argument(
        "--skip-bad", action="store_true", help="skip malformed records (they are counted and listed)"
    )
    convert.add_argument("--labels", help=LABELS_HELP)
    convert.set_defaults(handler=_convert)


LABELS_HELP = "comma-separated label set of the file (a file without entities states none)"


def _labels(option: str | None) -> tuple[str, ...]:
    """A `--labels` option: comma-separated, blanks and spaces around each dropped. Given but naming none
    (`--labels ""`, a shell variable left empty) is an error, not the labels of no option."""
    labels = tuple(label.strip() for label in (option or "").split(",") if label.strip())
    if option is not None and not labels:
        raise ValueError(f"--labels {option!r} names no label: give them comma-separated, or leave it out")
    return labels


def _read(path: Path, args: argparse.Namespace) -> Any:
    """A data command's file, with the `--labels` schema when given and bad records skipped if asked."""
    labels = _labels(args.labels)
    on_error = "skip" if args.skip_bad else "raise"
    return read_dataset(path, args.reader, schema=Schema(labels) if labels else None, on_error=on_error)


def _stats(args: argparse.Namespace, console: Console) -> int:
    reports = [dataset_stats(_read(path, args)) for path in args.paths]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return 0
    for report in reports:
        console.print(*_stats_tables(report))
    return 0


def _stats_tables(report: dict) -> tuple[Table, Table]:
    """Entities per label, then the shape of the data (nesting and length percentiles)."""
    labels = Table(title=f"{report['name']}: {report['sentences']} sentences, {report['entities']} entities")
    labels.add_column("label")
    labels.add_column("entities", justify="right")
    labels.add_column("share", justify="right")
    for label, count in sorted(report["labels"].items(), key=lambda item: -item[1]):
        labels.add_row(label, str(count), f"{100 * count / max(report['entities'], 1):.1f}%")

    points = list(report["sentence_chars"])
    shape = Table(title=f"max nesting depth {report['max_nesting_depth']}")
    shape.add_column("length")
    for point in points:
        shape.add_column(point, justify="right")
    for key in ("sentence_chars", "sentence_words", "entity_words"):
        shape.add_row(key.replace("_", " "), *(str(report[key][p]) for p in points))
    depths = ", ".join(f"depth {d}: {n}" for d, n in report["sentences_by_nesting_depth"].items())
    shape.caption = f"sentences by nesting depth: {depths}"
    return labels, shape


def _convert(args: argparse.Namespace, console: Console) -> int:
    dataset = _read(args.source, args)
    try:
        write_dataset(dataset, args.target, args.to)
    except CannotWrite as error:  # an example the target format cannot hold: nothing of it is malformed
        raise ValueError(f"{error} (--skip-bad skips malformed input only; jsonl keeps every span)") from None
    beside = f" and its labels to {args.target.with_name('labels.json')}" if args.to == "instructuie" else ""
    console.print(
        f"wrote {len(dataset.examples)} examples to {args.target} ({args.to}){beside}; "
        f"skipped {len(dataset.skipped)} malformed records",
        soft_wrap=True,
    )
    for message in dataset.skipped:
        console.print(f"  skipped {message}", highlight=False, soft_wrap=True)  # one line each, to grep
    return 0


def _add_tiny_model_command(subparsers: argparse._SubParsersAction) -> None:
    tiny = subparsers.add_parser(
        "tiny-model", help="build a small random-init model and tokenizer from local data (no hub access)"
    )
    tiny.add_argument("--out", type=Path, required=True, help="directory to save_pretrained into")
    tiny.add_argument(
        "--data", type=Path, nargs="+", required=True, help="NER files the tokenizer learns from"
    )
    tiny.add_argument("--output-format", default="grouped_json", help="answer format the model will write")
    tiny.add_argument("--vocab-size", type=int, default=4096)
    tiny.add_argument("--hidden-size", type=int, default=256)
    tiny.add_argument("--intermediate-size", type=int, default=768)
    tiny.add_argument("--layers", type=int, default=4)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--copy-warmup-steps",
        type=int,
        default=0,
        help="then pretrain this many steps to copy text, as a real base model can (see tiny_model.py)",
    )
    tiny.set_defaults(handler=_tiny_model)


TINY_MODEL_BUILD = "tiny_model_build.json"


def _tiny_model(args: argparse.Namespace, console: Console) -> int:
    import hashlib
    from importlib.metadata import version

    from reasoningner import tiny_model
    from reasoningner.rationale import gold_template_rationale
    from reasoningner.tracking import fingerprint
    from reasoningner.training_data import sft_record

    # Checked before minutes of building: the first forward pass, or the warm-up, would fail after it.
    if args.heads < 2 or args.heads % 2:
        raise ValueError(
            f"--heads {args.heads}: an even number of at least 2 (the tiny model has 2 key-value heads)"
        )
    if args.copy_warmup_steps < 0:
        raise ValueError(f"--copy-warmup-steps {args.copy_warmup_steps}: 0 or more")
    prompt = PromptArguments(output_format=args.output_format)
    examples = [example for path in args.data for example in read_dataset(path).examples]
    # The tokenizer learns from what the model will read and write: prompts, rationales, answers.
    corpus = [
        message["content"]
        for example in examples
        for message in sft_record(example, prompt, gold_template_rationale(example))["messages"]
    ]
    # A finished build records what made it; the same command then reuses it, so a demo restarted
    # after a kill does not spend minutes rebuilding identical weights.
    build = {
        "arguments": {k: v for k, v in vars(args).items() if k not in ("command", "handler", "out", "data")},
        "corpus": hashlib.sha256("\0".join(corpus).encode()).hexdigest(),
        "code": fingerprint(tiny_model.__file__),
        "versions": {name: version(name) for name in ("torch", "transformers", "tokenizers")},
    }
    record = args.out / TINY_MODEL_BUILD
    if record.is_file() and record.read_text(encoding="utf-8") == json.dumps(build, indent=2):
        console.print(f"tiny model in {args.out} already built from these arguments and data: reused")
        return 0
    record.unlink(missing_ok=True)
    out = tiny_model.build_tiny_model(
        args.out,
        corpus,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.layers,
        num_heads=args.heads,
        seed=args.seed,
    )
    if args.copy_warmup_steps:
        texts = [example.text for example in examples]
        losses = tiny_model.warm_up_copying(out, texts, steps=args.copy_warmup_steps, seed=args.seed)
        console.print(f"copy warm-up: {len(losses)} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    write_whole(record, json.dumps(build, indent=2))  # whole or not at all: a kill mid-write rebuilds
    console.print(f"tiny model saved to {out}")
    return 0


def _add_predict_command(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict", help="find entities in texts (one per line) with a trained model; JSONL out"
    )
    predict.add_argument("input", nargs="?", default="-", help="file with one text per line (default: stdin)")
    predict.add_argument("--model", required=True, help="model directory (a served model name for openai)")
    predict.add_argument(
        "--labels",
        help="comma-separated entity types, in prompt order (default: those the model was trained on)",
    )
    predict.add_argument("--descriptions-file", type=Path, help="JSON object: label -> one-line description")
    predict.add_argument("--rationale", action="store_true", help="add the <think> rationale to each line")
    predict.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="answers sampled per text (temperature 0.7); an entity's score is the share that found it "
        "(default 1: greedy, every score 1.0)",
    )
    predict.add_argument("--threshold", type=float, default=0.0, help="drop entities scoring below this")
    predict.add_argument(
        "--flat-ner",
        action="store_true",
        help="no overlapping entities: keep the higher score, then the longer, then the earlier",
    )
    predict.add_argument(
        "--max-prompt-chars",
        type=int,
        default=None,
        help="longer prompts are asked in windows of the text (cut again where their tokens would not "
        "fit); lower it for a small context behind a server",
    )
    _add_prompt_arguments(predict)
    predict.add_argument("--backend", default="transformers", choices=sorted(BACKENDS))
    predict.add_argument(
        "--backend-options",
        type=options_from,
        default={},
        help='backend keyword options as a JSON object: {"batch_size": 16}',
    )
    predict.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="tokens an output may take (default: the budget the model was trained with, from its prompt "
        f"contract; else {DEFAULT_MAX_NEW_TOKENS})",
    )
    predict.set_defaults(handler=_predict)


PREDICT_CHUNK = 256  # lines per generate call: large enough to batch, small enough to stream output


def _predict(args: argparse.Namespace, console: Console) -> int:
    """One JSON line per input line (a blank line gets no entities), written as each chunk is done.
    Lines end at "\n" only (a CR inside a line is text; the one of CRLF is dropped).

    Input that is not UTF-8 is decoded with U+FFFD for each bad byte (the line echoed is that text, so
    offsets still slice it) rather than ending the run.
    """
    labels = _labels(args.labels)
    descriptions = _descriptions(args.descriptions_file) if args.descriptions_file else {}
    reserved = sorted(set(args.backend_options) & PREDICT_SETTINGS)
    if reserved:
        raise ValueError(f"--backend-options cannot set {reserved}: use the flags of the same names")
    # Prompt settings and scoring are checked first, then that the model exists, before it is loaded.
    prompt = PromptArguments(**{f.name: getattr(args, f.name) for f in fields(PromptArguments)})
    check_scoring(args.threshold, args.num_samples)
    if args.backend != "openai":
        require_model(args.model)  # a local folder that is not there would be looked up on the Hub
    if not labels:  # the model's own, from its folder or its Hub repository
        model = GenerationArguments(
            model_name_or_path=args.model, backend=args.backend, backend_options=args.backend_options
        )
        contract = model.prompt_contract()  # at the revision the backend loads
        labels = tuple(contract.labels) if contract is not None else ()
    if not labels:
        raise ValueError(f"{args.model} has no prompt contract naming its labels: give --labels")
    schema = Schema(labels, descriptions)
    # JSON lines are UTF-8 whatever the locale (a cp1252 console could not write every text).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8")
    with contextlib.ExitStack() as stack:
        if args.input == "-":
            # The bytes of stdin, decoded here: its own decoder may be strict, or (a C locale) turn bad
            # bytes into lone surrogates that a tokenizer refuses. Detached after, so stdin stays open.
            # utf-8-sig: a byte order mark is not text (the readers drop it too).
            lines = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace", newline="\n")
            stack.callback(lines.detach)
        else:
            lines = stack.enter_context(
                open(args.input, encoding="utf-8-sig", errors="replace", newline="\n")
            )
        model = stack.enter_context(
            NERModel.from_pretrained(
                args.model,
                args.backend,
                prompt,
                max_new_tokens=args.max_new_tokens,
                max_prompt_chars=args.max_prompt_chars,
                **args.backend_options,
            )
        )
        texts = (line.removesuffix("\n").removesuffix("\r") for line in lines)
        asked = failed = cut = 0
        first_failure = ""
        while chunk := list(itertools.islice(texts, PREDICT_CHUNK)):
            predictions = model.predict(
                chunk,
                schema,
                return_rationale=args.rationale,
                threshold=args.threshold,
                flat_ner=args.flat_ner,
                num_samples=args.num_samples,
            )
            for text, prediction in zip(chunk, predictions, strict=True):
                print(json.dumps(prediction.to_dict(text), ensure_ascii=False), flush=True)
                asked += bool(text.strip())
                failures = [problem.detail for problem in prediction.problems if problem.kind == FAILED]
                failed += bool(failures)
                first_failure = first_failure or (failures[0] if failures else "")
                cut += any(problem.kind in CUT_SHORT for problem in prediction.problems)
    if cut:  # a rationale cut off has no answer: no entities, which reads as a confident "none"
        print(f"predict: {cut} of {asked} outputs stop short ({', '.join(CUT_SHORT)}): raise "
              f"--max-new-tokens (now {model.sampling.max_new_tokens}), or ask texts much longer than the "
              "model's training sentences in windows (--max-prompt-chars)",
              file=sys.stderr)  # fmt: skip
    if failed:
        print(f"predict: the backend gave up on {failed} of {asked} texts ({FAILED}); first: {first_failure}",
              file=sys.stderr)  # fmt: skip
    return 1 if asked and failed == asked else 0


# Problems of an output that ran out of tokens: as the backend says (`CUT_OFF`), or where it does not, as
# its parse shows (inside its rationale, or inside its answer).
CUT_SHORT = (CUT_OFF, "unclosed_think", "truncated")
# Set by predict's own flags: a backend option of the same name would collide with them.
PREDICT_SETTINGS = frozenset({"path", "backend", "prompt", "max_new_tokens", "max_prompt_chars"})


def _descriptions(path: Path) -> dict[str, str]:
    """`--descriptions-file`: a JSON object of label -> one-line description."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{path}: a JSON object of label -> description (strings) is expected")
    return value


def _add_doctor_command(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser(
        "doctor", help="check in seconds what would break a recipe's run here (GPUs, packages, data, disk)"
    )
    doctor.add_argument("recipe", type=Path)
    doctor.add_argument(
        "--num-gpus", type=int, default=None, help="GPUs the run will use (default: its need)"
    )
    doctor.add_argument(
        "--args", default="", help='the stage\'s command-line overrides, as make passes ARGS: "--max_steps 5"'
    )
    doctor.add_argument(
        "--stage",
        choices=["cot", "sft", "rl", "eval"],
        help="the stage that runs it (default: told from its keys)",
    )
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace, console: Console) -> int:
    import shlex

    from reasoningner.doctor import run

    return run(args.recipe, args.num_gpus, shlex.split(args.args), args.stage)


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--dashed-name` option per field of `PromptArguments`, with its help, unset by default (the
    model's saved contract decides), so that the command line and the recipes name each setting alike."""
    group = parser.add_argument_group("prompt contract (default: the one saved beside the model)")
    for spec in fields(PromptArguments):
        flag = "--" + spec.name.replace("_", "-")
        if isinstance(PromptArguments.DEFAULTS[spec.name], bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=spec.metadata["help"])
        else:
            group.add_argument(flag, help=spec.metadata["help"])


def _refuse_renamed_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> None:
    """Old option names (`configs.RENAMED`, and `--format`) fail with the new name, where the command
    has it (elsewhere argparse names the unknown flag)."""
    renamed = {f"--{old}".replace("_", "-"): f"--{new}".replace("_", "-") for old, new in RENAMED.items()}
    renamed["--format"] = "--output-format"
    command = parser
    for word in argv:  # down the subcommands named (`data convert`)
        subparsers = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            break
        command = subparsers[0].choices[word]
    flags = {flag for action in command._actions for flag in action.option_strings}
    for arg in argv:
        flag = arg.split("=")[0]
        if flag in renamed and renamed[flag] in flags:
            raise ValueError(f"{flag} is now called {renamed[flag]}")


def _add_score_command(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score",
        help="score predictions made elsewhere against gold: GOLD PREDICTIONS [GOLD PREDICTIONS ...]",
        description="Predictions: LLaMA-Factory generated_predictions.jsonl, our JSONL of spans, or raw "
        "outputs one per line (reasoningner/score.py says how each is read).",
    )
    score.add_argument("files", nargs="+", type=Path, help="pairs of gold file, predictions file")
    score.add_argument("--output-format", default="auto", choices=["auto", *FORMATS])
    score.add_argument(
        "--reader", default="auto", choices=["auto", *READERS], help="how the gold files are read"
    )
    score.add_argument(
        "--compat",
        default="none",
        choices=["none", "llms4ner", "reasoningie"],  # compat.COMPAT (imported when scoring)
        help="exact scores counted as LLMs4NER's scripts, or text scores as ReasoningIE's evaluation",
    )
    score.add_argument("--primary-mode", default="text", choices=["text", "exact"])
    score.add_argument(
        "--reground-offsets", action="store_true", help="offset_json: a stated text wins over its offsets"
    )
    score.add_argument(
        "--skip-bad", action="store_true", help="skip malformed gold records and prediction lines (counted)"
    )
    score.add_argument("--output-dir", type=Path, help="also write results.json and results.md here")
    score.set_defaults(handler=_score)


def _score(args: argparse.Namespace, console: Console) -> int:
    from reasoningner.evaluate import write_results
    from reasoningner.score import score_files

    if len(args.files) % 2:
        raise ValueError("score takes pairs: GOLD PREDICTIONS [GOLD PREDICTIONS ...]")
    evaluation = score_files(
        list(zip(args.files[::2], args.files[1::2], strict=True)),
        args.output_format,
        args.compat,
        "skip" if args.skip_bad else "raise",
        args.reground_offsets,
        args.primary_mode,
        args.reader,
    )
    console.print(evaluation.table())
    for name, info in evaluation.datasets.items():
        console.print(
            f"{name}: {info['sentences']} scored ({info['layout']}, {info['format']}); skipped "
            f"{info['skipped_gold']} gold records, {info['skipped_predictions']} predictions",
            highlight=False,
        )
        for message in info["skipped"]:
            console.print(f"  skipped {message}", highlight=False, soft_wrap=True)
    if args.compat != "none":
        counted = "exact-span" if args.compat == "llms4ner" else "text"
        console.print(f"{counted} scores counted as {args.compat}'s scripts count them", highlight=False)
    if args.output_dir:
        write_results(evaluation, args.output_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasoningner", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(subparsers)
    _add_tiny_model_command(subparsers)
    _add_predict_command(subparsers)
    _add_score_command(subparsers)
    _add_doctor_command(subparsers)
    return parser


# What a user's input or environment can cause: a bad recipe value or option, a missing file or a folder
# where a file belongs, a malformed record (`DataError` and `SpanError` are ValueErrors that name the
# file and line), a server refusing the key, model or URL, a backend not installed.
USER_ERRORS = (
    ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, GenerationError,
    BackendMissing,
)  # fmt: skip
DEBUG_ENV = "REASONINGNER_DEBUG"


def report_user_error(error: Exception) -> int:
    """One line on stderr and exit status 2 instead of a traceback; `REASONINGNER_DEBUG=1` re-raises."""
    if os.environ.get(DEBUG_ENV):
        raise error
    Console(stderr=True, width=10_000).print(f"[red]error:[/red] {error}", highlight=False)
    return 2


def run_stage(make_parser: Callable[[], Any], main: Callable[..., Any]) -> None:
    """A stage script's `__main__`: parse the recipe and command line, run, and end a user's mistake
    in one line rather than a traceback (`REASONINGNER_DEBUG=1` shows it). Warnings come from the main
    process only: every process of a launch meets the same ones (64 copies on 8 nodes), errors from each."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        logging.getLogger("reasoningner").setLevel(logging.ERROR)
    try:
        main(*make_parser().parse_args_and_config())
    except USER_ERRORS as error:
        sys.exit(report_user_error(error))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    console = Console(stderr=False)
    try:
        parser = build_parser()
        _refuse_renamed_flags(argv, parser)
        args = parser.parse_args(argv)
        return args.handler(args, console)
    except USER_ERRORS as error:
        return report_user_error(error)
    except BrokenPipeError:
        # The reader left (`reasoningner predict ... | head`): stop quietly as a shell tool does. Output still
        # buffered goes to /dev/null, or the interpreter's last flush raises again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
