"""Readers and writers: fixtures sliced from the shared corpora, malformed inputs with their line
numbers, round trips, sniffing, and the full shared data against the counts of its README."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasoningner.readers import (
    READERS,
    CannotWrite,
    DataError,
    Dataset,
    from_hf,
    read_alpaca,
    read_conll,
    read_dataset,
    read_instructuie,
    read_jsonl,
    sniff,
    write_alpaca,
    write_conll,
    write_jsonl,
)
from reasoningner.spans import Example, Schema, Span
from tests.scripts import SHARED

DATA = Path(__file__).parent / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def entities(dataset: Dataset) -> int:
    return sum(len(example.spans) for example in dataset.examples)


def triples(example: Example) -> list[tuple[int, int, str, str]]:
    return [(s.start, s.end, s.label, s.text(example.text)) for s in example.spans]


# ------------------------------------------------------------------------------------------- CoNLL


def test_conll_fixture_reads_sentences_entities_and_exact_offsets() -> None:
    dataset = read_conll(DATA / "conll2003_mini.txt")
    assert (len(dataset.examples), entities(dataset)) == (4, 6)
    assert dataset.schema.labels == ("organisation", "misc", "person", "location")  # first seen
    assert dataset.name == "conll2003_mini" and dataset.skipped == []
    first, second, _, fourth = dataset.examples
    assert first.id == "conll2003_mini-0"
    assert first.text == "EU rejects German call to boycott British lamb ."
    assert triples(first)[:2] == [(0, 2, "organisation", "EU"), (11, 17, "misc", "German")]
    assert triples(second) == [(0, 15, "person", "Peter Blackburn")]
    assert fourth.text == "TENNIS - FRIDAY 'S RESULTS FROM THE U.S. OPEN ."
    assert triples(fourth) == [(36, 45, "misc", "U.S. OPEN")]


def test_crossner_fixture() -> None:
    dataset = read_conll(DATA / "crossner_ai_mini.txt")
    assert (len(dataset.examples), entities(dataset)) == (3, 10)
    assert triples(dataset.examples[0]) == [(7, 15, "metrics", "accuracy"), (31, 41, "metrics", "error rate")]


def test_conll2003_original_layout_space_separated_iob1_with_docstart(tmp_path: Path) -> None:
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\ncall NN I-NP O\n\n"
        "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n\n"
        "-DOCSTART- -X- -X- O\n\n"
        "Germany NNP I-NP I-LOC\nFrance NNP I-NP B-LOC\n"
    )
    dataset = read_conll(write(tmp_path / "eng.txt", text))
    assert [e.span_texts() for e in dataset.examples] == [
        [("EU", "ORG"), ("German", "MISC")],
        [("Peter Blackburn", "PER")],
        [("Germany", "LOC"), ("France", "LOC")],
    ]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("B-X I-X O B-X", [("a b", "X"), ("d", "X")]),  # IOB2
        ("I-X I-X B-X I-X", [("a b", "X"), ("c d", "X")]),  # IOB1
        ("B-X I-Y I-Y O", [("a", "X"), ("b c", "Y")]),  # I of another type starts an entity (seqeval)
        ("O I-X O O", [("b", "X")]),
        ("S-X B-Y E-Y S-X", [("a", "X"), ("b c", "Y"), ("d", "X")]),  # BIOES
        ("B-X E-X E-X O", [("a b", "X"), ("c", "X")]),  # an E that continues nothing is one token
    ],
)
def test_tag_schemes_decode_like_seqeval(tmp_path: Path, tags: str, expected: list[tuple[str, str]]) -> None:
    lines = "".join(f"{token}\t{tag}\n" for token, tag in zip("abcd", tags.split(), strict=True))
    [example] = read_conll(write(tmp_path / "t.txt", lines)).examples
    assert example.span_texts() == expected


BAD_CONLL = "ok\tB-X\nfine\tO\n\nbad\tB-X\nalone\n\nbad\tX-PER\n\nstill\tB-\n\nlast\tO\ngood\tB-Y\n"


def test_conll_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.txt", BAD_CONLL)
    with pytest.raises(DataError) as caught:
        read_conll(path)
    assert caught.value.line == 5 and str(caught.value).startswith(f"{path}:5: expected a token and a tag")
    with pytest.raises(DataError, match=r"bad.txt:1: label of tag 'B-X' is not in the schema"):
        read_conll(path, schema=Schema(("Y",)))


def test_conll_skip_keeps_good_sentences_and_reports_bad_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.txt", BAD_CONLL)
    dataset = read_conll(path, on_error="skip")
    assert [e.text for e in dataset.examples] == ["ok fine", "last good"]
    assert [e.id for e in dataset.examples] == ["bad-0", "bad-4"]  # ids keep the record's place
    assert [m.split(": ")[0] for m in dataset.skipped] == [f"{path}:5", f"{path}:7", f"{path}:9"]
    assert "bad tag 'X-PER'" in dataset.skipped[1]
    assert dataset.schema.labels == ("X", "Y")


def test_write_conll_round_trip_and_refusals(tmp_path: Path) -> None:
    for fixture in ("conll2003_mini.txt", "crossner_ai_mini.txt"):
        dataset = read_conll(DATA / fixture)
        write_conll(dataset, tmp_path / fixture)
        again = read_conll(tmp_path / fixture, schema=dataset.schema, name=dataset.name)
        assert again.examples == dataset.examples
    nested = read_alpaca(DATA / "genia_mini.json")
    with pytest.raises(ValueError, match="genia_mini-0.*nested"):
        write_conll(nested, tmp_path / "nested.txt")
    schema = Schema(("X",))
    glued = Dataset([Example("ab c", (Span(0, 1, "X"),), schema, "g")], schema, "g")
    with pytest.raises(ValueError, match="token boundaries"):
        write_conll(glued, tmp_path / "glued.txt")
    # A token holding a no-break space (as read_conll reads one) is one token: it split at it and refused.
    nbsp = Dataset([Example("10\xa0000 fans in Rome", (Span(15, 19, "X"),), schema, "n-0")], schema, "n")
    write_conll(nbsp, tmp_path / "nbsp.txt")
    assert read_conll(tmp_path / "nbsp.txt", schema=schema, name="n").examples == nbsp.examples
    spaced = Schema(("programming language",))
    words = Dataset(
        [Example("Python rocks", (Span(0, 6, "programming language"),), spaced, "w-0")], spaced, "w"
    )
    with pytest.raises(
        ValueError, match=r"w-0.*cannot hold a label with a space: \['programming language'\]"
    ):
        write_conll(words, tmp_path / "words.txt")
    for bad in ("a  b", " a", "a\tb", "a\nb"):
        with pytest.raises(ValueError, match="single spaces between tokens"):
            write_conll(Dataset([Example(bad, (), schema, "b")], schema, "b"), tmp_path / "bad.txt")


# ------------------------------------------------------------------------------------------ Alpaca


def test_genia_fixture_nesting_literal_angle_bracket_and_label_set() -> None:
    dataset = read_alpaca(DATA / "genia_mini.json")
    assert (len(dataset.examples), entities(dataset)) == (4, 16)
    assert dataset.schema.labels == ("DNA", "RNA", "protein", "cell_line", "cell_type")
    assert dataset.schema.describe("cell_line").startswith("A population of cells derived")
    nested, angle, bracket, misordered = dataset.examples
    assert nested.is_nested
    assert triples(nested)[:2] == [
        (72, 137, "cell_line", "phytohemagglutinin ( PHA ) activated peripheral blood lymphocytes"),
        (72, 90, "protein", "phytohemagglutinin"),
    ]
    assert "P < 0.01" in angle.text and triples(angle)[0] == (9, 19, "RNA", "c-jun mRNA")
    assert triples(bracket)[0] == (34, 52, "protein", "[3H]calcitriol/VDR")
    # <protein><DNA>NF-chi B</protein></DNA>: closing tags in a run may come in any order
    assert (95, 103, "DNA", "NF-chi B") in triples(misordered)
    assert (95, 103, "protein", "NF-chi B") in triples(misordered)


def test_ace_fixture_merges_duplicate_spans_and_says_so() -> None:
    dataset = read_alpaca(DATA / "ace2005_mini.json")
    assert (len(dataset.examples), entities(dataset)) == (3, 18)
    assert dataset.schema.describe("GPE").startswith("(geo-political entity) GPE entities are")
    assert triples(dataset.examples[0])[1:3] == [
        (22, 70, "PER", "some of the American troops now fighting in Iraq"),
        (30, 70, "PER", "the American troops now fighting in Iraq"),
    ]
    path = DATA / "ace2005_mini.json"
    assert dataset.notes == [
        f"{path}:7: record 1: merged 1 duplicate spans (PER 32:124)",
        f"{path}:12: record 2: merged 2 duplicate spans (PER 18:47)",
    ]


def alpaca_json(records: list[dict[str, str]]) -> str:
    return json.dumps(records, indent=2)


GOOD = {
    "instruction": "Label Set:\nPER: a person\nLOC: a place\nNow go:",
    "input": "Ann in Rome",
    "output": "",
}
GOOD["output"] = "<PER>Ann</PER> in <LOC>Rome</LOC>"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("<PER>Ann in Rome", "<PER> at character 0 of the output is never closed"),
        ("<PER>Ann</LOC> in Rome", "</LOC> at character 8 of the output closes no <LOC>"),
        ("Ann</PER> in Rome", "</PER> at character 3 of the output closes no <PER>"),
        ("<PER>Ann</PER> in Roma", "differs from the input at character 10: 'a' vs 'e'"),
        ("<ORG>Ann</ORG> in Rome", "label 'ORG' of span 0:3 is not in the schema"),
        ("Ann<PER> </PER>in Rome", "an empty PER entity at character 3"),
    ],
)
def test_alpaca_malformed_record_names_its_line(tmp_path: Path, output: str, message: str) -> None:
    path = write(tmp_path / "a.json", alpaca_json([GOOD, GOOD, {**GOOD, "output": output}, GOOD]))
    with pytest.raises(DataError) as caught:
        read_alpaca(path)
    # each record takes 5 lines of the indented array: the third starts on line 12
    assert str(caught.value).startswith(f"{path}:12: record 2: ")
    assert message in str(caught.value)
    dataset = read_alpaca(path, on_error="skip")
    assert [e.id for e in dataset.examples] == ["a-0", "a-1", "a-3"]
    assert len(dataset.skipped) == 1 and dataset.skipped[0].startswith(f"{path}:12: record 2: ")


def test_alpaca_broken_json_is_fatal_even_when_skipping(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", alpaca_json([GOOD, GOOD])[:-2] + ",\n  {oops}\n]")
    with pytest.raises(DataError, match=r"a.json:12: invalid JSON"):
        read_alpaca(path, on_error="skip")
    with pytest.raises(DataError, match=r"a.json:7: expected ',' or ']'"):
        read_alpaca(write(tmp_path / "a.json", alpaca_json([GOOD])[:-2] + "\n  {}\n]"))


def test_alpaca_jsonl_with_brackets_and_literal_brackets(tmp_path: Path) -> None:
    instruction = "Label Set:\nPER: a person\nCHEM(chemical): a compound\nNow go:"
    records = [
        {"instruction": instruction, "input": "[ applause ] Ann took [3H]x", "output": ""},
        {"instruction": instruction, "input": "Ann took it", "output": "Ann | PER] took it"},
        {"instruction": instruction, "input": "Ann Lee", "output": "[[Ann | PER] Lee | PER]"},
    ]
    records[0]["output"] = "[ applause ] [Ann | PER] took [[3H]x | CHEM]"
    path = write(tmp_path / "b.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    dataset = read_alpaca(path, on_error="skip")
    assert dataset.schema == Schema(("PER", "CHEM"), {"PER": "a person", "CHEM": "(chemical) a compound"})
    assert [triples(e) for e in dataset.examples] == [
        [(13, 16, "PER", "Ann"), (22, 27, "CHEM", "[3H]x")],
        [(0, 7, "PER", "Ann Lee"), (0, 3, "PER", "Ann")],
    ]
    assert dataset.skipped == [f"{path}:2: record 1: '| PER]' at character 3 of the output closes no '['"]


def test_a_label_set_block_holds_labels_of_several_words(tmp_path: Path) -> None:
    """A block line `programming language: ...` ended the block silently: the labels after it were lost."""
    instruction = (
        "Find entities.\nLabel Set:\nperson: a human\nprogramming language: a language for code\n"
        "location: a place\nNow process the input sentence:"
    )
    record = {
        "instruction": instruction,
        "input": "Ann writes Python in Rome",
        "output": "<person>Ann</person> writes <programming language>Python</programming language> in Rome",
    }
    dataset = read_alpaca(write(tmp_path / "s.jsonl", json.dumps(record) + "\n"))
    assert dataset.schema.labels == ("person", "programming language", "location")
    assert triples(dataset.examples[0]) == [
        (0, 3, "person", "Ann"),
        (11, 17, "programming language", "Python"),
    ]
    # The block's last line of several words is a label when the output uses it; other such lines end it.
    last = {**record, "instruction": "Label Set:\nperson: a human\nprogramming language: code\nNow go:"}
    assert read_alpaca(write(tmp_path / "l.jsonl", json.dumps(last) + "\n")).schema.labels == (
        "person",
        "programming language",
    )
    note = "Label Set:\nperson: a human\nOutput format: tags named after the labels\nNow process the input:"
    other = {**record, "instruction": note, "output": "<person>Ann</person> writes Python in Rome"}
    assert read_alpaca(write(tmp_path / "o.jsonl", json.dumps(other) + "\n")).schema.labels == ("person",)


def test_alpaca_without_label_set_infers_labels_and_leaves_non_tags_as_text(tmp_path: Path) -> None:
    records = [
        {"input": "Ann in Rome", "output": "<PER>Ann</PER> in <LOC>Rome</LOC>"},
        {"input": "P <0.05> for Bo", "output": "P <0.05> for [Bo|PER]"},
    ]
    dataset = read_alpaca(write(tmp_path / "c.json", json.dumps(records)))
    assert dataset.schema == Schema(("PER", "LOC"))
    assert triples(dataset.examples[1]) == [(13, 15, "PER", "Bo")]


@pytest.mark.parametrize("format_name", ["xml", "bracketed"])
def test_write_alpaca_round_trips_inline_formats(tmp_path: Path, format_name: str) -> None:
    for fixture in ("genia_mini.json", "ace2005_mini.json"):
        dataset = read_alpaca(DATA / fixture)
        write_alpaca(dataset, tmp_path / fixture, format_name)
        again = read_alpaca(tmp_path / fixture, name=dataset.name)
        assert again.examples == dataset.examples and again.schema == dataset.schema


def test_write_alpaca_refuses_what_the_format_cannot_express(tmp_path: Path) -> None:
    schema = Schema(("X",))
    crossing = Example("a b c", (Span(0, 3, "X"), Span(2, 5, "X")), schema, "c")
    with pytest.raises(ValueError, match="'c': xml cannot express"):
        write_alpaca(Dataset([crossing], schema, "c"), tmp_path / "c.json", "xml")


# ------------------------------------------------------------------------------------- InstructUIE


def test_instructuie_fixture_labels_json_and_na() -> None:
    dataset = read_instructuie(DATA / "instructuie" / "dev.json")
    assert (len(dataset.examples), entities(dataset)) == (3, 4)
    assert dataset.name == "instructuie-dev"
    assert dataset.schema.labels == ("person", "organization", "location", "miscellaneous")
    assert triples(dataset.examples[0])[2] == (34, 41, "miscellaneous", "British")
    assert dataset.examples[2].spans == ()


def test_instructuie_malformed(tmp_path: Path) -> None:
    good = {"sentence": "Ann in Rome", "entities": [{"name": "Rome", "type": "LOC", "pos": [7, 11]}]}
    bad_name = {"sentence": "Ann in Rome", "entities": [{"name": "Ann", "type": "PER", "pos": [1, 3]}]}
    bad_pos = {"sentence": "Ann", "entities": [{"name": "Ann", "type": "PER", "pos": [0]}]}
    path = write(
        tmp_path / "u.json", "[\n" + ",\n".join(json.dumps(r) for r in (good, bad_name, bad_pos)) + "\n]"
    )
    with pytest.raises(DataError, match=r"u.json:3: record 1: span 1:3 covers 'nn', not the stated 'Ann'"):
        read_instructuie(path)
    dataset = read_instructuie(path, on_error="skip")
    assert len(dataset.examples) == 1 and len(dataset.skipped) == 2
    assert dataset.skipped[1].startswith(f"{path}:4: record 2: ")
    write(tmp_path / "labels.json", '["LOC", "per|son"]')
    with pytest.raises(DataError, match=r"labels.json: not a list of usable labels: label 'per\|son'"):
        read_instructuie(path)
    assert read_instructuie(path, schema=Schema(("LOC", "PER")), on_error="skip").schema.labels == (
        "LOC",
        "PER",
    )


# ------------------------------------------------------------------------------------------- JSONL


def test_jsonl_fixture() -> None:
    dataset = read_jsonl(DATA / "mini.jsonl")
    assert (len(dataset.examples), entities(dataset)) == (3, 5)
    assert dataset.schema == Schema(("PER", "LOC", "ORG"), {"PER": "people, real or fictional"})
    assert [e.id for e in dataset.examples] == ["s1", "s2", "mini-2"]
    assert dataset.examples[1].is_nested
    assert dataset.examples[2].schema == dataset.schema


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "Ann", "entites": []}', "unknown fields ['entites']"),
        ('{"text": "Ann", "entities": [{"start": 0, "end": 9, "label": "PER"}]}', "out of range"),
        (
            '{"text": "Ann", "entities": [{"start": 0, "end": 2, "label": "PER", "text": "Ann"}]}',
            "not the stated",
        ),
        (
            '{"text": "Ann", "entities": [{"start": "0", "end": 3, "label": "PER"}]}',
            "start must be an integer",
        ),
        ('{"text": "Ann", "entities": [{"start": 0, "end": 3, "label": "P  R"}]}', "is not usable"),
        ('{"text": "Ann", "entities": [{"start": 0, "end": 3, "label": "P\\tR"}]}', "is not usable"),
        (
            '{"text": "Ann", "entities": [{"start": 0, "end": 3, "label": "X"}], "labels": ["PER"]}',
            "not in the",
        ),
        ('{"text": "Ann", "entities": [], "descriptions": {"PER": "x"}}', "'descriptions' needs 'labels'"),
        ('{"text": "Ann", "entities": [}', "invalid JSON"),
        ("[]", "expected a JSON object"),
    ],
)
def test_jsonl_malformed_line(tmp_path: Path, line: str, message: str) -> None:
    good = '{"text": "Ann", "entities": [{"start": 0, "end": 3, "label": "PER"}]}'
    path = write(tmp_path / "j.jsonl", f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(DataError) as caught:
        read_jsonl(path)
    assert str(caught.value).startswith(f"{path}:3: ") and message in str(caught.value)
    dataset = read_jsonl(path, on_error="skip")
    assert [e.id for e in dataset.examples] == ["j-0", "j-2"]
    assert len(dataset.skipped) == 1 and dataset.skipped[0].startswith(f"{path}:3: ")


def test_jsonl_round_trip_keeps_examples_and_schema(tmp_path: Path) -> None:
    for original in (
        read_alpaca(DATA / "genia_mini.json"),
        read_alpaca(DATA / "ace2005_mini.json"),
        read_jsonl(DATA / "mini.jsonl"),
        read_conll(DATA / "conll2003_mini.txt"),
    ):
        write_jsonl(original, tmp_path / "out.jsonl")
        again = read_jsonl(tmp_path / "out.jsonl")
        assert again.examples == original.examples
        assert again.schema == original.schema


words = st.text(alphabet="abcé.,'-", min_size=1, max_size=4)


@st.composite
def flat_examples(draw: st.DrawFn) -> Example:
    tokens = draw(st.lists(words, min_size=1, max_size=8))
    tags, i = ["O"] * len(tokens), 0
    while i < len(tokens):
        length = draw(st.integers(0, 3))
        if length:
            label = draw(st.sampled_from(["X", "Y"]))
            end = min(len(tokens), i + length)
            tags[i:end] = [f"B-{label}"] + [f"I-{label}"] * (end - i - 1)
            i = end
        else:
            i += 1
    spans, offset, starts = [], 0, []
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    for i, tag in enumerate(tags):
        if tag.startswith("B-"):
            last = i
            while last + 1 < len(tags) and tags[last + 1].startswith("I-"):
                last += 1
            spans.append(Span(starts[i], starts[last] + len(tokens[last]), tag[2:]))
    return Example(" ".join(tokens), tuple(spans), Schema(("X", "Y")), "p-0")


@settings(max_examples=60, deadline=None)
@given(flat_examples())
def test_flat_examples_round_trip_through_both_writers(
    tmp_path_factory: pytest.TempPathFactory, example: Example
) -> None:
    directory = tmp_path_factory.mktemp("rt")
    dataset = Dataset([example], example.schema, "p")
    write_conll(dataset, directory / "p.txt")
    assert read_conll(directory / "p.txt", schema=example.schema).examples == [example]
    write_jsonl(dataset, directory / "p.jsonl")
    assert read_jsonl(directory / "p.jsonl").examples == [example]


# ------------------------------------------------------------------------------------ Hugging Face


def hf_dataset(tags: list[list[int]]) -> Any:
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC"])),
        }
    )
    tokens = [["Peter", "Blackburn", "in", "Brussels"], ["U.S.", ","], ["x"]]
    return datasets.Dataset.from_dict({"tokens": tokens[: len(tags)], "ner_tags": tags}, features=features)


def test_from_hf_names_int_tags_with_the_class_label() -> None:
    dataset = from_hf(hf_dataset([[1, 2, 0, 3], [3, 0]]), name="toy")
    assert [triples(e) for e in dataset.examples] == [
        [(0, 15, "PER", "Peter Blackburn"), (19, 27, "LOC", "Brussels")],
        [(0, 4, "LOC", "U.S.")],
    ]
    assert dataset.examples[1].text == "U.S. ,"
    assert dataset.schema.labels == ("PER", "LOC") and dataset.examples[0].id == "toy-0"


def test_from_hf_bad_rows(tmp_path: Path) -> None:
    import datasets

    with pytest.raises(DataError, match=r"^toy: record 1: token 1: bad tag '-1'"):
        from_hf(hf_dataset([[1, 2, 0, 3], [3, -1]]), name="toy")
    strings = datasets.Dataset.from_dict(
        {"tokens": [["a", "b"], ["c"]], "ner_tags": [["B-X", "I-X"], ["O", "O"]]}
    )
    dataset = from_hf(strings, name="s", on_error="skip")
    assert len(dataset.examples) == 1 and dataset.skipped == ["s: record 1: 1 tokens but 2 tags"]


# --------------------------------------------------------------------------------------- Dispatch


@pytest.mark.parametrize(
    ("fixture", "reader"),
    [
        ("conll2003_mini.txt", "conll"),
        ("genia_mini.json", "alpaca"),
        ("instructuie/dev.json", "instructuie"),
        ("mini.jsonl", "jsonl"),
        ("hub/NER-CoT/train.jsonl", "nercot"),
    ],
)
def test_sniff_and_read_dataset(fixture: str, reader: str) -> None:
    assert sniff(DATA / fixture) == reader
    assert read_dataset(DATA / fixture).examples == READERS[reader](DATA / fixture).examples


def test_the_default_reader_takes_a_hub_name_as_a_source() -> None:
    """Stage 1, evaluation and `data stats` read `hf:` names without `reader: hf`, as training does."""
    source = f"hf:{DATA}/hub/NER-CoT@train"
    assert sniff(source) == "hf"
    assert read_dataset(source).examples == READERS["hf"](source).examples


def test_sniff_alpaca_jsonl_and_unknown_json(tmp_path: Path) -> None:
    assert sniff(write(tmp_path / "a.jsonl", json.dumps(GOOD) + "\n")) == "alpaca"
    with pytest.raises(DataError, match=r"cannot tell the format .* \['label', 'words'\]"):
        sniff(write(tmp_path / "w.json", '[{"words": [], "label": []}]'))
    with pytest.raises(ValueError, match="unknown reader 'csv'"):
        read_dataset(DATA / "mini.jsonl", reader="csv")


def test_a_line_with_more_columns_than_the_files_first_is_an_error_at_that_line(tmp_path: Path) -> None:
    """Space-separated, "New York B-LOC" read as token "New" and tag B-LOC dropped "York" and shifted
    every later offset, silently."""
    spaced = write(tmp_path / "spaced.txt", "Ann B-PER\nvisited O\nNew York B-LOC\n\nBob B-PER\n")
    with pytest.raises(DataError, match=r"spaced.txt:3: 3 columns in 'New York B-LOC', where line 1 has 2"):
        read_conll(spaced)
    kept = read_conll(spaced, on_error="skip")
    assert [e.text for e in kept.examples] == ["Bob"] and len(kept.skipped) == 1
    tabbed = write(tmp_path / "tabbed.txt", "Ann\tB-PER\nNew York\tB-LOC\n")  # tabs: a token may hold a space
    assert [e.text for e in read_conll(tabbed).examples] == ["Ann New York"]
    four = write(tmp_path / "four.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert [(e.text, len(e.spans)) for e in read_conll(four).examples] == [("EU rejects", 1)]


def test_tags_read_past_iob2_and_bioes_are_noted_per_sentence(tmp_path: Path) -> None:
    """IOB1 (or tagging errors) read as seqeval reads them, and each sentence where that happened noted,
    so that a corpus tagged otherwise than its user thinks shows in the reader's log line."""
    path = write(
        tmp_path / "mixed.txt",
        "A\tB-PER\nB\tI-LOC\nC\tE-LOC\nD\tS-PER\nE\tE-PER\n\nF\tB-ORG\nG\tI-ORG\n\nH\tI-ORG\n",
    )
    dataset = read_conll(path)
    assert [[(s.text(e.text), s.label) for s in e.spans] for e in dataset.examples] == [
        [("A", "PER"), ("B C", "LOC"), ("D", "PER"), ("E", "PER")],
        [("F G", "ORG")],
        [("H", "ORG")],
    ]
    assert [note.split(": ", 2)[2] for note in dataset.notes] == [
        "entities opened by I- or E-: 1 (IOB1 tags, or tagging errors), read as B-; label changes inside "
        "an entity (I-Y after B-X or I-X): 1, each read as a new entity",
        "entities opened by I- or E-: 1 (IOB1 tags, or tagging errors), read as B-",
    ]
    assert [note.split(":")[1] for note in dataset.notes] == ["1", "10"]  # each sentence's first line


def test_file_level_problems(tmp_path: Path) -> None:
    for name, content in (("empty.txt", "\n \n"), ("empty.json", "[]"), ("empty.jsonl", "")):
        with pytest.raises(DataError, match=rf"{name}: holds no sentences"):
            read_dataset(write(tmp_path / name, content))
    with pytest.raises(DataError, match=r"no labels: .* pass schema="):
        read_conll(write(tmp_path / "o.txt", "a\tO\n"))
    assert read_conll(tmp_path / "o.txt", schema=Schema(("X",))).examples[0].spans == ()
    (tmp_path / "latin1.txt").write_bytes(b"a\tO\n\ncaf\xe9\tB-X\n")
    with pytest.raises(DataError, match=r"latin1.txt:3: not UTF-8"):
        read_conll(tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="on_error"):
        read_conll(DATA / "conll2003_mini.txt", on_error="ignore")  # type: ignore[arg-type]
    (tmp_path / "ai").mkdir()
    assert read_conll(write(tmp_path / "ai" / "dev.txt", "a\tB-X\n")).name == "ai-dev"


def test_data_error_reads_like_a_compiler_message() -> None:
    assert str(DataError("x/train.txt", 12, "bad tag")) == "x/train.txt:12: bad tag"
    assert str(DataError("x/train.txt", None, "empty")) == "x/train.txt: empty"


# ------------------------------------------------------------------------------------ Shared data

SHARED_COUNTS = {
    "conll2003/train.txt": (14041, 23429),
    "conll2003/dev.txt": (3250, 5938),
    "crossner/ai/train.txt": (100, 532),
    "crossner/ai/dev.txt": (350, 1549),
    "crossner/literature/train.txt": (100, 541),
    "crossner/literature/dev.txt": (400, 2130),
    "crossner/music/train.txt": (100, 648),
    "crossner/music/dev.txt": (380, 2679),
    "crossner/politics/train.txt": (200, 1304),
    "crossner/politics/dev.txt": (541, 3482),
    "crossner/science/train.txt": (200, 1075),
    "crossner/science/dev.txt": (450, 2538),
    "genia/dev_xml_alpaca.json": (1765, 4714),
    "ace2005/dev_xml_alpaca.json": (971, 3234),
}


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data is not on this machine")
@pytest.mark.parametrize("relative", sorted(SHARED_COUNTS))
def test_shared_data_matches_its_readme(relative: str) -> None:
    dataset = read_dataset(SHARED / relative)
    assert dataset.skipped == []
    # The README counts ACE tags; 16 of them repeat a span exactly (`<PER><PER>x</PER></PER>`),
    # which an Example cannot hold twice: the reader merges them and notes each merge.
    merged = sum(int(note.split("merged ")[1].split()[0]) for note in dataset.notes)
    assert merged == (16 if relative.startswith("ace2005") else 0)
    assert (len(dataset.examples), entities(dataset) + merged) == SHARED_COUNTS[relative]


# --- LLMs4NER's data files ---------------------------------------------------------------------------

LLMS4NER = DATA / "llms4ner"


@pytest.mark.parametrize(
    ("fixture", "source"),
    [
        ("genia_json_dev_alpaca.json", "genia_mini.json"),
        ("ace2005_occurrence_index_dev_alpaca.json", "ace2005_mini.json"),
        ("ace2005_offset_json_dev_alpaca.json", "ace2005_mini.json"),
    ],
)
def test_llms4ner_json_variants_read_as_their_xml_source(fixture: str, source: str) -> None:
    """Grouped (no `entities` wrapper, every label listed), occurrence and offset JSON outputs give the
    spans and the described schema of the XML file they were written from; doubled entries merge."""
    dataset, expected = read_alpaca(LLMS4NER / fixture), read_alpaca(DATA / source)
    assert [triples(e) for e in dataset.examples] == [triples(e) for e in expected.examples]
    assert dataset.schema == expected.schema and dataset.skipped == []
    if "ace2005" in fixture:
        assert len(dataset.notes) == 2 and all("duplicate spans" in note for note in dataset.notes)


@pytest.mark.parametrize("variant", ["se", "so"])
def test_llms4ner_relabelled_files_keep_their_label_lines(variant: str) -> None:
    dataset = read_alpaca(LLMS4NER / f"conll2003-{variant}_xml_dev_alpaca.json")
    assert dataset.schema.labels == ("A", "B", "C", "D")
    assert all(dataset.schema.describe(label) for label in dataset.schema.labels)
    person = "A" if variant == "so" else "B"
    assert dataset.schema.describe(person).startswith("A named individual")
    assert ("Peter Blackburn", person) in dataset.examples[1].span_texts()


def test_llms4ner_conll_file_with_an_altered_output_is_skipped_and_counted() -> None:
    path = LLMS4NER / "conll03_bracketed_dev_alpaca.json"
    with pytest.raises(
        DataError, match=r"conll03_bracketed_dev_alpaca.json:\d+: record 2: the output without"
    ):
        read_alpaca(path)
    dataset = read_alpaca(path, on_error="skip")
    assert len(dataset.examples) == 4 and len(dataset.skipped) == 1
    assert dataset.skipped[0].endswith(
        "differs from the input at character 22: ' per cwt) .' vs 'per cwt) .'"
    )
    assert dataset.schema.labels == ("PER", "ORG", "LOC", "MISC")


def test_json_outputs_that_do_not_fit_the_input_are_errors(tmp_path: Path) -> None:
    instruction = "Label Set:\nPER: a person\nNow go:"
    bad = [
        ('[{"text": "Ann", "label": "PER", "start": 1, "end": 4}]', "offset_mismatch"),
        ('[{"text": "Bo", "label": "PER", "occurrence_index": 1}]', "ungrounded"),
        ('{"PER": ["Ann"], "ORG": []}', None),
        ('{"ORG": ["Ann"]}', "unknown_label"),
    ]
    records = [{"instruction": instruction, "input": "Ann in Rome", "output": output} for output, _ in bad]
    dataset = read_alpaca(write(tmp_path / "j.json", json.dumps(records)), on_error="skip")
    assert [triples(e) for e in dataset.examples] == [[(0, 3, "PER", "Ann")]]
    assert [message.split(": ", 3)[-1].split(":")[0] for message in dataset.skipped] == [
        kind for _, kind in bad if kind
    ]


# ------------------------------------------------------------------------- Files that read back wrong


def test_a_conll_token_may_hold_a_no_break_space_and_a_file_may_start_with_a_bracket(tmp_path: Path) -> None:
    spaced = read_conll(write(tmp_path / "a.txt", "10\xa0000 B-MONEY\ndollars O\n"))
    [example] = spaced.examples
    assert (example.text, example.spans) == ("10\xa0000 dollars", (Span(0, 6, "MONEY"),))
    bracket = write(tmp_path / "b.txt", "[\tO\nAnn\tB-PER\n]\tO\n")
    assert sniff(bracket) == "conll"
    assert read_dataset(bracket).examples == read_conll(bracket).examples
    numbered = write(tmp_path / "n.txt", "[1] O\nAnn B-PER\n")  # JSON reads `[1` as a list's first item
    assert sniff(numbered) == "conll"
    assert sniff(write(tmp_path / "c.jsonl", json.dumps(GOOD) + "\n")) == "alpaca"
    ending_like_a_tag = {"entities": [], "text": "an E-commerce"}  # JSON whose last word looks like a tag
    assert sniff(write(tmp_path / "d.jsonl", json.dumps(ending_like_a_tag) + "\n")) == "jsonl"
    with pytest.raises(DataError, match="invalid JSON"):
        sniff(write(tmp_path / "e.json", '[{"text": '))


def test_written_alpaca_reads_back_or_is_refused_before_anything_is_lost(tmp_path: Path) -> None:
    schema = Schema(("PER", "LOC"), {"PER": "a person\nor an animal", "LOC": "a place"})
    tagged = Example("a <b> Ann in Rome", (Span(6, 9, "PER"), Span(13, 17, "LOC")), schema, "x")
    untagged = Example("a <b> tag", (), schema, "y")
    paired = Example("x <b>y</b> Ann", (Span(11, 14, "PER"),), schema, "z")
    italic = Example("<i>Ann</i> said", (Span(3, 6, "PER"),), schema, "w")
    written = [tagged, untagged, paired, italic]
    path = tmp_path / "a.json"
    write_alpaca(Dataset(written, schema, "d"), path, "bracketed")
    back = read_alpaca(path)
    assert [(e.text, e.spans) for e in back.examples] == [(e.text, e.spans) for e in written]
    assert back.schema == Schema(("PER", "LOC"), {"PER": "a person or an animal", "LOC": "a place"})
    odd = Schema(("ORG:COM", "PER"))
    with pytest.raises(CannotWrite, match=r"label 'ORG:COM'"):
        write_alpaca(Dataset([Example("Ann", (Span(0, 3, "PER"),), odd)], odd, "d"), tmp_path / "b.json")
    # Its label lines are read without spaces (a headerless file's first `NAME: ...` run is its label set).
    spaced = Schema(("PER", "sports team"))
    with pytest.raises(CannotWrite, match=r"label 'sports team'.*space"):
        write_alpaca(
            Dataset([Example("Ann", (Span(0, 3, "PER"),), spaced)], spaced, "d"), tmp_path / "c.json"
        )


def test_a_headerless_label_line_is_not_taken_for_the_label_set_when_the_output_uses_others(
    tmp_path: Path,
) -> None:
    record = {"instruction": "Find entities.\nNote: be careful.", "input": "Ann", "output": "<PER>Ann</PER>"}
    [example] = read_alpaca(write(tmp_path / "a.json", alpaca_json([record]))).examples
    assert example.spans == (Span(0, 3, "PER"),) and example.schema.labels == ("PER",)
    as_json = {**record, "output": json.dumps({"PER": ["Ann"]})}
    [example] = read_alpaca(write(tmp_path / "j.json", alpaca_json([as_json]))).examples
    assert example.spans == (Span(0, 3, "PER"),) and example.schema.labels == ("PER",)
    relabelled = {**record, "instruction": "Find entities.\nPER: a person\nLOC: a place"}  # LLMs4NER's
    [example] = read_alpaca(write(tmp_path / "b.json", alpaca_json([relabelled]))).examples
    assert example.schema == Schema(("PER", "LOC"), {"PER": "a person", "LOC": "a place"})
