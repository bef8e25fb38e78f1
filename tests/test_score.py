"""`reasoningner score`: each predictions layout, skipping, the LLMs4NER counting (checked against an
independent counter written here from their scripts' rules), and the command line."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reasoningner.cli import main
from reasoningner.compat import llms4ner_keys
from reasoningner.formats import FORMATS
from reasoningner.metrics import Counts
from reasoningner.readers import DataError, read_alpaca
from reasoningner.score import score_files

DATA = Path(__file__).parent / "data"
ACE = DATA / "ace2005_mini.json"
LLMS4NER = DATA / "llms4ner"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def micro(evaluation: Any, mode: str, name: str) -> Counts:
    return evaluation.reports["normal"][mode].datasets[name].micro


def test_llamafactory_predictions_score_like_evaluation(tmp_path: Path) -> None:
    records = json.loads(ACE.read_text(encoding="utf-8"))
    predicts = [records[0]["output"], records[1]["input"], "<think>hm</think>" + records[2]["output"]]
    rows = [
        {"prompt": f"{r['instruction']}\n{r['input']}", "predict": p, "label": r["output"]}
        for r, p in zip(records, predicts, strict=True)
    ]
    evaluation = score_files([(ACE, write_jsonl(tmp_path / "generated_predictions.jsonl", rows))])
    gold = read_alpaca(ACE).examples
    missed = len(gold[1].spans)
    assert micro(evaluation, "exact", "ace2005_mini") == Counts(18 - missed, 0, missed)
    assert evaluation.datasets["ace2005_mini"]["layout"] == "llamafactory"
    assert evaluation.datasets["ace2005_mini"]["format"] == "xml"
    assert evaluation.errors["normal"]["ace2005_mini"].outputs == 3


def test_spans_and_raw_output_layouts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gold = read_alpaca(ACE).examples
    spans = [{"text": e.text, "entities": e.entity_dicts()[1:], "id": e.id} for e in gold]
    with caplog.at_level("WARNING"):
        by_spans = score_files([(ACE, write_jsonl(tmp_path / "spans.jsonl", spans))])
    assert "tells its format" not in caplog.text  # spans are parsed already: no format to tell
    assert micro(by_spans, "exact", "ace2005_mini") == Counts(15, 0, 3)
    assert by_spans.datasets["ace2005_mini"]["layout"] == "spans"
    offsets = [FORMATS["offset_json"].render(e) for e in gold]
    for rows in (offsets, [{"output": o} for o in offsets]):  # JSON strings; eval's generations.jsonl
        evaluation = score_files([(ACE, write_jsonl(tmp_path / "outputs.jsonl", rows))])
        assert micro(evaluation, "exact", "ace2005_mini") == Counts(18, 0, 0)
        assert evaluation.datasets["ace2005_mini"]["format"] == "offset_json"
    (tmp_path / "raw.txt").write_text("\n".join(offsets) + "\n", encoding="utf-8")  # the lines themselves
    assert micro(score_files([(ACE, tmp_path / "raw.txt")]), "text", "ace2005_mini").f1 == 1.0
    # The last sentence without an output: its blank line counts; blank lines past the gold ones do not.
    (tmp_path / "raw.txt").write_text("\n".join([*offsets[:-1], ""]) + "\n\n\n", encoding="utf-8")
    last = len(gold[-1].spans)
    assert micro(score_files([(ACE, tmp_path / "raw.txt")]), "exact", "ace2005_mini") == Counts(
        18 - last, 0, last
    )


def test_offsets_shifted_by_one_score_nothing_in_exact_mode(tmp_path: Path) -> None:
    gold = read_alpaca(ACE).examples
    shifted = [
        json.dumps([{**e, "start": e["start"] + 1, "end": e["end"] + 1} for e in example.entity_dicts()])
        for example in gold
    ]
    path = write_jsonl(tmp_path / "shifted.jsonl", shifted)
    assert micro(score_files([(ACE, path)]), "exact", "ace2005_mini").tp == 0
    assert micro(score_files([(ACE, path)], reground_offsets=True), "exact", "ace2005_mini").tp == 18


def test_skip_bad_skips_gold_records_with_their_predictions(tmp_path: Path) -> None:
    gold_path = LLMS4NER / "conll03_bracketed_dev_alpaca.json"
    records = json.loads(gold_path.read_text(encoding="utf-8"))
    rows = [{"predict": r["output"], "label": r["output"]} for r in records]
    rows[4]["predict"] = 17  # not a string: a malformed line
    predictions = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"conll03_bracketed_dev_alpaca.json:12: record 2"):
        score_files([(gold_path, predictions)])
    evaluation = score_files([(gold_path, predictions)], on_error="skip")
    info = evaluation.datasets["conll03_bracketed_dev_alpaca"]
    assert (info["sentences"], info["skipped_gold"], info["skipped_predictions"]) == (3, 1, 2)
    assert any(":3: its gold record was skipped" in message for message in info["skipped"])
    assert any(":5: llamafactory prediction" in message for message in info["skipped"])
    assert micro(evaluation, "exact", "conll03_bracketed_dev_alpaca").f1 == 1.0

    short = write_jsonl(tmp_path / "short.jsonl", rows[:2])  # the gold file's last two have no line
    info = score_files([(gold_path, short)], on_error="skip").datasets["conll03_bracketed_dev_alpaca"]
    assert info["sentences"] == 2  # the two lines; the gold sentence without one is reported
    assert any("2 predictions for 5 gold sentences; the lines past" in message for message in info["skipped"])


def test_a_skipped_or_blank_prediction_line_leaves_the_later_lines_with_their_own_sentences(
    tmp_path: Path,
) -> None:
    gold = read_alpaca(ACE).examples
    answers = [FORMATS["bracketed"].render(example) for example in gold]
    # LLaMA-Factory's layout without prompts (nothing else would catch a shift): line 2 is malformed.
    rows = [{"predict": a} for a in answers]
    rows[1]["predict"] = None
    evaluation = score_files([(ACE, write_jsonl(tmp_path / "p.jsonl", rows))], on_error="skip")
    assert evaluation.datasets["ace2005_mini"]["skipped_predictions"] == 1
    assert micro(evaluation, "exact", "ace2005_mini") == Counts(18 - len(gold[1].spans), 0, 0)
    # Raw outputs: an empty output is a blank line, its sentence's entities all missed.
    (tmp_path / "raw.txt").write_text("\n".join([answers[0], "", answers[2]]) + "\n\n", encoding="utf-8")
    evaluation = score_files([(ACE, tmp_path / "raw.txt")], output_format="bracketed")
    missed = len(gold[1].spans)
    assert micro(evaluation, "exact", "ace2005_mini") == Counts(18 - missed, 0, missed)


def test_gold_records_with_their_own_ids_skipped_pair_the_other_lines_by_position(tmp_path: Path) -> None:
    gold = read_alpaca(ACE).examples
    records = [
        {"id": f"doc-{i}", "text": e.text, "entities": e.entity_dicts(), "labels": list(e.schema.labels)}
        for i, e in enumerate(gold)
    ]
    records[0]["entities"][0]["end"] += 1000  # out of range: skipped
    gold_path = write_jsonl(tmp_path / "gold.jsonl", records)
    outputs = write_jsonl(tmp_path / "outputs.jsonl", [FORMATS["xml"].render(e) for e in gold])
    evaluation = score_files([(gold_path, outputs)], on_error="skip")
    info = evaluation.datasets["gold"]
    assert (info["sentences"], info["skipped_gold"], info["skipped_predictions"]) == (2, 1, 1)
    expected = sum(len(e.spans) for e in gold[1:])
    assert micro(evaluation, "exact", "gold") == Counts(expected, 0, 0)


def test_our_generations_file_is_paired_by_id_whatever_its_order_probes_and_other_datasets(
    tmp_path: Path,
) -> None:
    """Evaluation writes generations.jsonl in completion order, with its probes and every dataset."""
    gold = read_alpaca(ACE).examples

    def record(example: Any, variant: str, output: str) -> dict[str, str]:
        return {
            "dataset": "ace",
            "variant": variant,
            "id": example.id,
            "text": example.text,
            "output": output,
        }

    rows = [record(e, "normal", FORMATS["xml"].render(e)) for e in reversed(gold)]
    rows.insert(1, record(gold[0], "opaque", "<type_1>My</type_1>"))
    rows.append({**rows[0], "id": "genia-0", "output": "junk"})  # another dataset's
    generations = write_jsonl(tmp_path / "generations.jsonl", rows)
    evaluation = score_files([(ACE, generations)])
    assert micro(evaluation, "exact", "ace2005_mini") == Counts(18, 0, 0)
    assert evaluation.datasets["ace2005_mini"]["skipped"] == [
        f"{generations}: 2 lines of other sentences (probes, other datasets) are not scored"
    ]
    partial = write_jsonl(tmp_path / "partial.jsonl", rows[1:])  # a sentence has no line
    with pytest.raises(DataError, match="1 of 3 gold sentences have no line"):
        score_files([(ACE, partial)])
    missed = len(gold[-1].spans)
    assert micro(score_files([(ACE, partial)], on_error="skip"), "exact", "ace2005_mini").tp == 18 - missed
    garbled = write_jsonl(tmp_path / "garbled.jsonl", [{**rows[0], "text": "another sentence"}, *rows[1:]])
    with pytest.raises(DataError, match="garbled.jsonl:1: its text is not the gold sentence"):
        score_files([(ACE, garbled)])
    # Another set's sentence with the same id first (`ai-0` of two splits): the line of this one counts.
    shared = write_jsonl(tmp_path / "shared.jsonl", [{**rows[0], "text": "another sentence"}, *rows])
    assert micro(score_files([(ACE, shared)]), "exact", "ace2005_mini") == Counts(18, 0, 0)


def test_auto_format_reads_the_answer_after_the_rationale(tmp_path: Path) -> None:
    gold = read_alpaca(ACE).examples
    for name in ("grouped_json", "offset_json", "bracketed"):
        answers = [FORMATS[name].render(e) for e in gold]
        rows = [{"output": f"<think>{e.text}</think>\n{a}"} for e, a in zip(gold, answers, strict=True)]
        evaluation = score_files([(ACE, write_jsonl(tmp_path / "generations.jsonl", rows))])
        assert evaluation.datasets["ace2005_mini"]["format"] == name
        told = score_files([(ACE, write_jsonl(tmp_path / "answers.jsonl", answers))], output_format=name)
        assert micro(evaluation, "exact", "ace2005_mini") == micro(told, "exact", "ace2005_mini")
        assert micro(told, "exact", "ace2005_mini").tp >= 17


def test_auto_format_is_the_one_most_answers_tell_not_the_first_line_s(tmp_path: Path) -> None:
    """The first line of generations.jsonl is whichever output finished first, often the longest, cut
    off: read alone, a grouped_json answer cut inside its JSON passed for bracketed and the whole file
    scored nothing. An empty list or object tells no format either."""
    gold = read_alpaca(ACE).examples
    answers = [FORMATS["grouped_json"].render(e) for e in gold]
    rows = [{"output": answers[0][: len(answers[0]) // 2]}, *({"output": a} for a in answers[1:])]
    evaluation = score_files([(ACE, write_jsonl(tmp_path / "generations.jsonl", rows))])
    assert evaluation.datasets["ace2005_mini"]["format"] == "grouped_json"
    assert micro(evaluation, "exact", "ace2005_mini").tp >= 17 - len(gold[0].spans)
    offsets = [FORMATS["offset_json"].render(e) for e in gold]
    lf = [{"prompt": e.text, "predict": a, "label": a} for e, a in zip(gold, offsets, strict=True)]
    lf[0] = {**lf[0], "label": "[]", "predict": "[]"}  # a sentence without entities first
    evaluation = score_files([(ACE, write_jsonl(tmp_path / "generated_predictions.jsonl", lf))])
    assert evaluation.datasets["ace2005_mini"]["format"] == "offset_json"


def test_an_offset_past_the_end_of_the_sentence_is_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    """Slicing stops at the end of the text: "I love Paris"[7:13] is "Paris" all the same."""
    paris = {"text": "Paris", "label": "location", "start": 7, "end": 12}
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"text": "I love Paris", "entities": [paris]}])
    outputs = write_jsonl(tmp_path / "o.jsonl", [json.dumps([{**paris, "end": 13}])])
    evaluation = score_files([(gold, outputs)], output_format="offset_json")
    assert micro(evaluation, "exact", "gold") == Counts(0, 1, 1)  # a mention not placed: false positive
    assert micro(evaluation, "text", "gold") == Counts(1, 0, 0)
    regrounded = score_files([(gold, outputs)], output_format="offset_json", reground_offsets=True)
    assert micro(regrounded, "exact", "gold") == Counts(1, 0, 0)


def test_misaligned_files_are_errors_naming_the_line(tmp_path: Path) -> None:
    rows = [{"prompt": "another sentence", "predict": "x", "label": "x"}] * 3
    with pytest.raises(DataError, match=r"p.jsonl:1: the prompt does not hold the gold sentence"):
        score_files([(ACE, write_jsonl(tmp_path / "p.jsonl", rows))])
    with pytest.raises(DataError, match=r"p.jsonl: 2 predictions for 3 gold sentences"):
        score_files([(ACE, write_jsonl(tmp_path / "p.jsonl", rows[:2]))])
    # A first line cut short is that line's error, not a file of raw outputs made of JSON records.
    gold = read_alpaca(ACE).examples
    answers = [FORMATS["grouped_json"].render(e) for e in gold]
    lines = [
        json.dumps({"prompt": e.text, "predict": a, "label": a}) for e, a in zip(gold, answers, strict=True)
    ]
    broken = tmp_path / "generated_predictions.jsonl"
    broken.write_text("\n".join([lines[0][:40], *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"generated_predictions.jsonl:1: llamafactory prediction"):
        score_files([(ACE, broken)])


# --- LLMs4NER's counting, checked by an independent counter -------------------------------------------


def their_xml(text: str, tags: list[str]) -> tuple[str, list[tuple[str, int, int]]]:
    """LLMs4NER's `parse_xml_spans` + `strip_xml_tags`, restated: only the listed tags; a closer ends
    the innermost tag of its name and every tag opened inside it; empty entities dropped."""
    pattern = re.compile("<(/?)(" + "|".join(sorted(tags, key=len, reverse=True)) + ")>")
    clean, stack, entities, cursor = "", [], [], 0
    for match in pattern.finditer(text):
        clean += text[cursor : match.start()]
        cursor = match.end()
        if not match.group(1):
            stack.append((match.group(2), len(clean)))
            continue
        where = [i for i, (tag, _) in enumerate(stack) if tag == match.group(2)]
        if where:
            tag, start = stack[where[-1]]
            del stack[where[-1] :]
            if len(clean) > start:
                entities.append((tag, start, len(clean)))
    return clean + text[cursor:], entities


def their_counts(rows: list[dict[str, str]], fmt: str, tags: list[str]) -> Counts:
    tp = fp = fn = 0
    for row in rows:
        if fmt == "xml":
            (p_clean, p), (g_clean, g) = their_xml(row["predict"], tags), their_xml(row["label"], tags)
            if p_clean != g_clean:
                p = [(label, p_clean[s:e]) for label, s, e in p]
                g = [(label, g_clean[s:e]) for label, s, e in g]
        else:
            p, g = their_entries(row["predict"]), their_entries(row["label"])
        predicted, gold = Counter(p), Counter(g)
        tp += sum(min(n, gold[key]) for key, n in predicted.items())
        fp += sum(max(0, n - gold[key]) for key, n in predicted.items())
        fn += sum(max(0, n - predicted[key]) for key, n in gold.items())
    return Counts(tp, fp, fn)


def their_entries(answer: str) -> list[tuple]:
    """LLMs4NER's occurrence-JSON `parse_entities`: json.loads or nothing, complete entries only."""
    try:
        data = json.loads(answer)
        return [
            (str(e["text"]), str(e["label"]), int(e["occurrence_index"]))
            for e in data
            if isinstance(e, dict) and None not in (e.get("text"), e.get("label"), e.get("occurrence_index"))
        ]
    except Exception:
        return []


def test_compat_llms4ner_counts_xml_as_their_script_does(tmp_path: Path) -> None:
    records = json.loads(ACE.read_text(encoding="utf-8"))
    gold_outputs = [r["output"] for r in records]
    predicts = [
        gold_outputs[0],
        # an entity stated twice (a multiset counts the second as a false positive) and one tag lost
        gold_outputs[1].replace("<GPE>", "<GPE><GPE>", 1).replace("</GPE>", "</GPE></GPE>", 1),
        # a tag outside the labels: text to their script, so the sentence is matched by text
        gold_outputs[2].replace("<PER>", "<TIME>", 1).replace("</PER>", "</TIME>", 1),
    ]
    rows = [
        {"prompt": r["input"], "predict": p, "label": r["output"]}
        for r, p in zip(records, predicts, strict=True)
    ]
    path = write_jsonl(tmp_path / "generated_predictions.jsonl", rows)
    expected = their_counts(rows, "xml", ["PER", "ORG", "GPE", "LOC", "FAC", "VEH", "WEA"])
    ours = micro(score_files([(ACE, path)]), "exact", "ace2005_mini")
    compat = micro(score_files([(ACE, path)], compat="llms4ner"), "exact", "ace2005_mini")
    assert compat == expected and compat != ours  # the rules differ on these lines, and we follow theirs


def test_compat_llms4ner_counts_occurrence_json_as_their_script_does(tmp_path: Path) -> None:
    gold_path = LLMS4NER / "ace2005_occurrence_index_dev_alpaca.json"
    records = json.loads(gold_path.read_text(encoding="utf-8"))
    labels = [r["output"] for r in records]
    entries = json.loads(labels[1])
    predicts = [
        labels[0].replace('"', "'"),  # a Python literal: nothing to their json.loads
        json.dumps(entries + entries[:2] + [{**entries[0], "occurrence_index": 2}]),  # repeats, a wrong index
        "<think>ok</think>" + labels[2],  # nothing is taken out of the output first
    ]
    rows = [
        {"prompt": r["input"], "predict": p, "label": r["output"]}
        for r, p in zip(records, predicts, strict=True)
    ]
    path = write_jsonl(tmp_path / "generated_predictions.jsonl", rows)
    compat = micro(
        score_files([(gold_path, path)], compat="llms4ner"), "exact", "ace2005_occurrence_index_dev_alpaca"
    )
    assert compat == their_counts(rows, "occurrence_json", [])
    assert compat.fp == 3  # the two repeats and the wrong index


def test_compat_llms4ner_reads_an_infinite_offset_or_a_bottomless_nest_as_an_unreadable_answer() -> None:
    """Python's json reads Infinity; their parser takes any failure as no entities, as ours must (an
    OverflowError stopped the whole scoring)."""
    answer = '[{"text": "A", "label": "PER", "start": 0, "end": Infinity}]'
    assert llms4ner_keys(answer, "offset_json", ("PER",)) == ([], "")
    deep = '{"x": [' + "[" * 5000 + "]" * 5000 + "]}"  # a degenerate output nested past the stack
    assert llms4ner_keys(deep, "grouped_json", ("x",)) == ([], "")


# --- command line -----------------------------------------------------------------------------------


def test_score_command_prints_and_writes_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = json.loads(ACE.read_text(encoding="utf-8"))
    rows = [{"predict": r["output"], "label": r["output"]} for r in records]
    predictions = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "out"
    assert main(["score", str(ACE), str(predictions), "--compat", "llms4ner", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ace2005_mini: 3 scored (llamafactory, xml)" in printed and "llms4ner" in printed
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["scores"]["exact"]["datasets"]["ace2005_mini"]["micro"]["f1"] == 1.0
    report = (out / "results.md").read_text(encoding="utf-8")
    assert "## Error analysis" in report and "Cut off" not in report  # unknown for outputs made elsewhere
    assert main(["score", str(ACE)]) == 2  # pairs only
    assert "score takes pairs" in capsys.readouterr().err


@pytest.mark.parametrize("compat", ["reasoningie", "llms4ner"])
def test_compat_refuses_spans_parsed_already(tmp_path: Path, compat: str) -> None:
    """predict's spans have no answer to read the paper's way: they were scored ours, titled theirs."""
    eu = [{"start": 0, "end": 2, "label": "organisation"}]
    gold = write_jsonl(
        tmp_path / "gold.jsonl", [{"text": "EU rejects it .", "labels": ["organisation"], "entities": eu}]
    )
    spans = write_jsonl(tmp_path / "p.jsonl", [{"text": "EU rejects it .", "entities": []}])
    with pytest.raises(
        ValueError, match=f"--compat {compat} reads each raw answer.*hold spans parsed already"
    ):
        score_files([(gold, spans)], output_format="grouped_json", compat=compat)
    assert micro(score_files([(gold, spans)]), "text", "gold") == Counts(0, 0, 1)


def test_compat_reasoningie_counts_text_matches_as_the_papers_evaluation_does(tmp_path: Path) -> None:
    """ReasoningNER's Table 1 figures: answers read as its code reads them, texts without punctuation and
    articles, labels lower-cased; ours keeps them (README, Metrics)."""
    gold = tmp_path / "gold.jsonl"
    records = [
        {"text": "The Beatles met Bob in the U.S. today .",
         "entities": [{"start": 0, "end": 11, "label": "band"}, {"start": 16, "end": 19, "label": "person"},
                      {"start": 27, "end": 31, "label": "location"}]},
        {"text": "Nothing here .", "entities": []},
    ]  # fmt: skip
    write_jsonl(gold, [{**r, "labels": ["band", "person", "location"]} for r in records])
    answers = [
        '<think>r</think>```json\n{"entities": {"band": ["Beatles"], "PERSON": ["Bob"], "location": ["U.S"]}}'
        "\n```",
        '<think>r</think><answer>{"entities": {"person": ["Nobody"]}}</answer>',
    ]
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"output": a} for a in answers])
    ours = micro(score_files([(gold, predictions)], output_format="grouped_json"), "text", "gold")
    paper = score_files([(gold, predictions)], output_format="grouped_json", compat="reasoningie")
    assert micro(paper, "text", "gold") == Counts(tp=3, fp=1, fn=0)  # 'Beatles', 'bob', 'us' all match
    assert ours.tp < 3  # article, label case and punctuation kept apart in ours
    assert micro(paper, "exact", "gold") == micro(
        score_files([(gold, predictions)], output_format="grouped_json"), "exact", "gold"
    )  # exact scores stay ours
    with pytest.raises(ValueError, match="reads grouped_json answers"):
        score_files([(gold, predictions)], output_format="xml", compat="reasoningie")
    # Its reader drops gold entities labelled misc (or other, na...): a CoNLL gold's misc is not missed.
    misc = write_jsonl(
        tmp_path / "misc.jsonl",
        [{"text": "Bob likes Python .", "labels": ["person", "misc"],
          "entities": [{"start": 0, "end": 3, "label": "person"},
                       {"start": 10, "end": 16, "label": "misc"}]}],
    )  # fmt: skip
    bob = write_jsonl(
        tmp_path / "bob.jsonl", [{"output": '{"entities": {"person": ["Bob"], "misc": ["likes"]}}'}]
    )  # a predicted misc is a false positive, as its compute_f1 counts every entity a completion names
    assert micro(score_files([(misc, bob)], compat="reasoningie"), "text", "misc") == Counts(tp=1, fp=1, fn=0)
    assert micro(score_files([(misc, bob)]), "text", "misc") == Counts(tp=1, fp=1, fn=1)  # ours counts them
    # Unparseable outputs (an untrained model) look like another format: the paper's is the default.
    junk = write_jsonl(tmp_path / "junk.jsonl", [{"output": "[ Bob | person ] met"}, {"output": "x"}])
    assert micro(score_files([(gold, junk)], compat="reasoningie"), "text", "gold") == Counts(
        tp=0, fp=0, fn=3
    )
