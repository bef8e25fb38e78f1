"""The `reasoningner` commands (data, tiny-model), run through `cli.main` as a user would."""

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from reasoningner.cli import TINY_MODEL_BUILD, main, run_stage
from reasoningner.readers import DataError, read_dataset

DATA = Path(__file__).parent / "data"


def test_stats_json_reports_counts_nesting_and_percentiles(capsys):
    assert main(["data", "stats", "--json", str(DATA / "ace2005_mini.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    dataset = read_dataset(DATA / "ace2005_mini.json")
    assert report["sentences"] == len(dataset.examples)
    assert report["entities"] == sum(len(e.spans) for e in dataset.examples)
    assert sum(report["labels"].values()) == report["entities"]
    assert report["max_nesting_depth"] >= 2
    assert set(report["sentence_words"]) == {"p50", "p90", "p95", "p99", "p100"}
    assert report["sentence_words"]["p100"] == max(len(e.text.split()) for e in dataset.examples)


def test_stats_table_names_every_label(capsys):
    assert main(["data", "stats", str(DATA / "conll2003_mini.txt")]) == 0
    out = capsys.readouterr().out
    for label in ("person", "organisation", "location", "misc"):
        assert label in out
    assert "sentence words" in out


@pytest.mark.parametrize("writer", ["jsonl", "conll", "instructuie", "alpaca-xml", "alpaca-bracketed"])
def test_convert_round_trips_through_every_readable_writer(tmp_path, writer):
    source = DATA / "conll2003_mini.txt"
    target = tmp_path / f"out-{writer}.data"
    assert main(["data", "convert", str(source), str(target), "--to", writer]) == 0
    original, converted = read_dataset(source), read_dataset(target)
    assert [(e.text, e.spans) for e in converted.examples] == [(e.text, e.spans) for e in original.examples]


def test_convert_nested_data_to_conll_fails_with_a_clear_error(tmp_path, capsys):
    code = main(
        ["data", "convert", str(DATA / "ace2005_mini.json"), str(tmp_path / "x.txt"), "--to", "conll"]
    )
    assert code == 2
    assert "nested" in capsys.readouterr().err.lower()


def test_malformed_input_names_file_and_line_and_skip_mode_counts(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("EU\tB-organisation\nrejects\tO\n\nGerman\tX-misc\n\nBritish\tB-misc\n", encoding="utf-8")
    assert main(["data", "convert", str(bad), str(tmp_path / "out.jsonl"), "--to", "jsonl"]) == 2
    assert f"{bad}:4:" in capsys.readouterr().err

    assert (
        main(["data", "convert", str(bad), str(tmp_path / "out.jsonl"), "--to", "jsonl", "--skip-bad"]) == 0
    )
    out = capsys.readouterr().out
    assert "wrote 2 examples" in out and "skipped 1" in out
    assert len(read_dataset(tmp_path / "out.jsonl").examples) == 2


def test_tiny_model_command_builds_warms_up_and_reports(tmp_path, capsys):
    out = tmp_path / "model"
    sizes = ["--vocab-size", "400", "--hidden-size", "32", "--intermediate-size", "64", "--layers", "1"]
    args = [
        "tiny-model",
        "--out",
        str(out),
        "--data",
        str(DATA / "conll2003_mini.txt"),
        *sizes,
        "--heads",
        "2",
    ]
    assert main([*args, "--copy-warmup-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "copy warm-up: 3 steps" in printed and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()

    # The same command again reuses the finished build; other arguments, or a build that did not
    # finish (no record), build afresh.
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(b"left as it is")
    assert main([*args, "--copy-warmup-steps", "3"]) == 0
    assert "reused" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() == b"left as it is"
    assert main([*args, "--copy-warmup-steps", "2"]) == 0
    assert "copy warm-up: 2 steps" in capsys.readouterr().out
    (out / TINY_MODEL_BUILD).unlink()
    assert main([*args, "--copy-warmup-steps", "3"]) == 0
    assert "copy warm-up: 3 steps" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() == weights
    (out / TINY_MODEL_BUILD).write_text('{"arguments": {')  # cut short (a full disk): rebuilt, not an error
    assert main([*args, "--copy-warmup-steps", "3"]) == 0
    assert "copy warm-up: 3 steps" in capsys.readouterr().out


def test_predict_takes_the_prompt_contract_under_the_recipe_names_and_refuses_old_flags(capsys):
    from dataclasses import fields

    from reasoningner.cli import build_parser
    from reasoningner.configs import PromptArguments

    argv = ["predict", "--model", "m", "--labels", "person", "--output-format", "xml", "--compact-prompt"]
    args = build_parser().parse_args([*argv, "--no-descriptions", "--no-reasoning"])
    assert {f.name: getattr(args, f.name) for f in fields(PromptArguments)} == {
        "output_format": "xml",
        "reasoning": False,
        "descriptions": False,
        "compact_prompt": True,
    }
    defaults = build_parser().parse_args(argv[:5])
    assert PromptArguments(**{f.name: getattr(defaults, f.name) for f in fields(PromptArguments)}) == (
        PromptArguments()
    )
    assert main(["predict", "--model", "m", "--labels", "person", "--format", "xml"]) == 2
    assert "--format is now called --output-format" in capsys.readouterr().err
    assert main([*argv[:5], "--output-format", "yaml"]) == 2
    assert "output_format 'yaml': choose one of" in capsys.readouterr().err


def test_every_data_reading_command_and_stage_can_skip_and_count_bad_records(tmp_path, capsys):
    from reasoningner.configs import DataArguments, PromptArguments
    from reasoningner.readers import DataError
    from reasoningner.training_data import sft_examples

    bad = tmp_path / "bad.txt"
    bad.write_text("EU\tB-ORG\nrejects\tO\n\nGerman\tI-MISC\tX\tY\n\nPeter\tB-PER\n", encoding="utf-8")
    assert main(["data", "stats", "--json", str(bad)]) == 2
    assert f"{bad}:4:" in capsys.readouterr().err
    assert main(["data", "stats", "--json", "--skip-bad", str(bad)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["sentences"], report["skipped_records"], report["reader_notes"]) == (2, 1, 0)
    iob1 = tmp_path / "iob1.txt"
    iob1.write_text("EU\tI-ORG\nrejects\tO\n", encoding="utf-8")
    assert main(["data", "stats", "--json", str(iob1)]) == 0
    assert json.loads(capsys.readouterr().out)["reader_notes"] == 1
    direct = PromptArguments(reasoning=False)
    with pytest.raises(ValueError, match=f"{bad}:4:"):
        sft_examples([str(bad)], direct)
    assert [e.text for e, _, _ in sft_examples([str(bad)], direct, DataArguments(skip_bad=True))] == [
        "EU rejects",
        "Peter",
    ]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9\tB-ORG\n")  # the stage 1 check read it first, with no file named
    with pytest.raises(DataError, match=f"{latin1}:1: not UTF-8"):
        sft_examples([str(latin1)], direct)


def test_predict_says_why_the_backend_gave_up_and_fails_when_it_answered_nothing(tmp_path, capsys):
    """A server refusing every prompt used to give lines of `generation_failed` with exit status 0 and
    no reason anywhere."""
    from tests.fake_openai import ChatHandler, ChatServer, serving

    class Refusing(ChatHandler):
        def respond(self, content: str, attempt: int, body: dict) -> None:
            self.send(400, {"error": {"message": "prompt too long for this server"}})

    texts = tmp_path / "texts.txt"
    texts.write_bytes("\ufeffAnn met Bob .\n\nBob ran .\r\n".encode())  # a byte order mark, a blank line
    with serving(ChatServer(Refusing)) as server:
        options = json.dumps({"base_url": server.base_url, "api_key_env": None, "max_attempts": 1})
        argv = ["predict", "--backend", "openai", "--model", "m", "--labels", "person", "--backend-options"]
        assert main([*argv, options, str(texts)]) == 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["text"] for line in lines] == ["Ann met Bob .", "", "Bob ran ."]  # no BOM, no CR
    assert lines[0]["problems"] == ["generation_failed"]
    assert "gave up on 2 of 2 texts" in err and "prompt too long for this server" in err


def test_predict_refuses_backend_options_it_cannot_use_in_one_line(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("Ann ran .\n")
    argv = ["predict", "--backend", "openai", "--model", "m", "--labels", "person", "--backend-options"]
    with pytest.raises(SystemExit) as refused:  # argparse's own error: usage, one line, status 2
        main([*argv, "[1]", str(texts)])
    assert refused.value.code == 2 and "invalid options_from value" in capsys.readouterr().err
    assert main([*argv, '{"max_new_tokens": 5}', str(texts)]) == 2
    assert "--backend-options cannot set ['max_new_tokens']" in capsys.readouterr().err


def test_user_errors_of_files_and_recipes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "descriptions.json"
    bad.write_text("{person: 1}")
    argv = ["predict", "--backend", "openai", "--model", "m", "--labels", "person", "--descriptions-file"]
    assert main([*argv, str(bad), str(tmp_path)]) == 2
    assert f"{bad}: not JSON" in capsys.readouterr().err
    assert main(["score", str(tmp_path), str(tmp_path)]) == 2  # a folder where a file belongs
    assert "Traceback" not in capsys.readouterr().err
    listed = tmp_path / "recipe.yaml"
    listed.write_text("- a\n- b\n")
    assert main(["doctor", str(listed)]) == 2
    assert "a recipe is a mapping of keys to values, not a list" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"), [("--heads", "3"), ("--heads", "1"), ("--copy-warmup-steps", "-1")]
)
def test_tiny_model_refuses_settings_that_fail_after_the_build(flag, value, tmp_path, capsys):
    data = Path(__file__).parent / "data" / "conll2003_mini.txt"
    assert main(["tiny-model", "--out", str(tmp_path / "m"), "--data", str(data), flag, value]) == 2
    assert flag in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_data_commands_take_the_labels_of_a_file_without_entities(tmp_path, capsys):
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "Nothing here .", "entities": []}\n')
    assert main(["data", "stats", str(plain), "--json"]) == 2
    assert "pass schema= (--labels)" in capsys.readouterr().err
    assert main(["data", "stats", str(plain), "--json", "--labels", "person,location"]) == 0
    assert json.loads(capsys.readouterr().out)["sentences"] == 1
    target = tmp_path / "plain.txt"
    assert main(["data", "convert", str(plain), str(target), "--to", "conll", "--labels", "person"]) == 0
    assert target.read_text().split() == ["Nothing", "O", "here", "O", ".", "O"]


def test_an_old_flag_is_named_with_its_new_name_only_where_the_command_has_it(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("x\n")
    with pytest.raises(SystemExit):  # predict's model flag is --model: argparse names the unknown flag
        main(["predict", "--model", "m", "--teacher-model", "m", "--labels", "a", str(texts)])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --teacher-model" in err and "--model-name-or-path" not in err
    with pytest.raises(SystemExit):  # data convert writes with --to
        main(["data", "convert", str(texts), str(tmp_path / "o"), "--to", "jsonl", "--format", "xml"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --format" in err and "--output-format" not in err


def test_a_reader_leaving_early_ends_the_command_without_a_traceback():
    """`reasoningner ... | head`: the pipe closes before the command writes; it stops with exit 1, quietly."""
    command = [
        sys.executable,
        "-m",
        "reasoningner.cli",
        "data",
        "stats",
        "--json",
        str(DATA / "ace2005_mini.json"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the interpreter has started: its first write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_converting_two_files_to_instructuie_in_one_folder_is_refused_before_their_labels_clash(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """InstructUIE states a folder's labels in one labels.json: a second file of other labels would
    overwrite it, and the first would no longer read."""
    assert (
        main(
            [
                "data",
                "convert",
                str(DATA / "conll2003_mini.txt"),
                str(tmp_path / "a.json"),
                "--to",
                "instructuie",
            ]
        )
        == 0
    )
    assert f"and its labels to {tmp_path / 'labels.json'}" in capsys.readouterr().out
    genia = DATA / "genia_mini.json"
    assert main(["data", "convert", str(genia), str(tmp_path / "b.json"), "--to", "instructuie"]) == 2
    refusal = capsys.readouterr().err
    assert f"{tmp_path / 'labels.json'}: states the labels of the files beside it" in refusal
    assert "--skip-bad" not in refusal and not (tmp_path / "b.json").exists()
    # The same task's dev file, labels in another order or a part of them: the folder's labels.json serves.
    listed = (tmp_path / "labels.json").read_text()
    dev = tmp_path / "dev.txt"
    dev.write_text("Oslo\tB-location\nsaw\tO\nAnn\tB-person\n")
    assert main(["data", "convert", str(dev), str(tmp_path / "dev.json"), "--to", "instructuie"]) == 0
    assert (tmp_path / "labels.json").read_text() == listed
    assert [e.spans for e in read_dataset(tmp_path / "dev.json").examples] == [
        e.spans for e in read_dataset(dev).examples
    ]
    spans = lambda path: [(e.text, e.spans) for e in read_dataset(path).examples]  # noqa: E731
    assert spans(tmp_path / "a.json") == spans(DATA / "conll2003_mini.txt")  # still reads
    (tmp_path / "labels.json").write_text('["person"]')  # another file's
    with pytest.raises(DataError, match=r"a.json:\d+: .*not in .*labels.json, which states the file's"):
        read_dataset(tmp_path / "a.json")


def test_an_example_the_target_format_cannot_hold_is_refused_with_a_format_that_can(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    nested = DATA / "ace2005_mini.json"  # nested spans: CoNLL BIO has no way to write them
    assert (
        main(["data", "convert", str(nested), str(tmp_path / "out.txt"), "--to", "conll", "--skip-bad"]) == 2
    )
    error = capsys.readouterr().err
    assert "cannot represent nested or overlapping spans" in error and "jsonl keeps every span" in error


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_stage_warns_from_the_main_process_only(rank, monkeypatch, caplog, request):
    """Every process of a launch meets the same warnings: one copy, not one per GPU; errors from each."""
    monkeypatch.setenv("RANK", rank)
    project = logging.getLogger("reasoningner")
    request.addfinalizer(functools.partial(project.setLevel, project.level))  # setLevel clears level caches

    def stage(*_: object) -> None:
        logging.getLogger("reasoningner.training").warning("skipping checkpoint-4")
        logging.getLogger("reasoningner.training").error("checkpoint-2 is unreadable")

    parser = type("Parser", (), {"parse_args_and_config": lambda self: ()})
    run_stage(parser, stage)
    assert ("skipping checkpoint-4" in caplog.messages) == (rank == "0")
    assert "checkpoint-2 is unreadable" in caplog.messages
