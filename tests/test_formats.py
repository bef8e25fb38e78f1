"""Tests of `reasoningner.formats`: hand-built cases per format, the render/parse round trip on all
shared data, and properties (parsers are total; random examples survive the round trip)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasoningner.formats import (
    _MISSING,
    FORMATS,
    ParseResult,
    Problem,
    _ascii_word_occurrences,
    _Builder,
    _find,
    _lenient_regex_occurrences,
    _python_literal,
    get_format,
    split_answer,
)
from reasoningner.metrics import Counts, Scorer, match_totals
from reasoningner.readers import read_alpaca, read_conll
from reasoningner.spans import (
    Example,
    Schema,
    Span,
    is_crossing,
    normalize_mention,
    occurrences,
    sort_spans,
)
from tests.scripts import SHARED

SHIPPED = Path(__file__).parents[1] / "data"
FIXTURES = Path(__file__).parent / "data"

SCHEMA = Schema(("PER", "LOC", "ORG", "MISC"))
BIO_SCHEMA = Schema(("DNA", "RNA", "protein", "cell_line", "cell_type"))


def example(text: str, *mentions: tuple[str, str, int], schema: Schema = SCHEMA) -> Example:
    """An example from (mention, label, which occurrence, 1-based) triples, so tests read as text."""
    spans = []
    for mention, label, nth in mentions:
        start = [m.start() for m in re.finditer(re.escape(mention), text)][nth - 1]
        spans.append(Span(start, start + len(mention), label))
    return Example(text, tuple(spans), schema)


def kinds(result: ParseResult) -> set[str]:
    return {problem.kind for problem in result.problems}


def texts(result: ParseResult, text: str) -> list[tuple[str, str]]:
    return [(span.text(text), span.label) for span in result.spans]


def assert_valid(result: ParseResult, text: str) -> None:
    """Spans a parser returns are always usable on the sentence: in range, trimmed, unique, sorted."""
    for span in result.spans:
        assert 0 <= span.start < span.end <= len(text)
        covered = span.text(text)
        assert covered == covered.strip()
    assert len(set(result.spans)) == len(result.spans)
    assert result.spans == sorted(result.spans, key=lambda s: (s.start, -s.end, s.label))
    assert all(isinstance(problem, Problem) for problem in result.problems)


FLAT = example("John Smith visited Paris .", ("John Smith", "PER", 1), ("Paris", "LOC", 1))
NESTED = example(
    "[IL-2 gene] expression requires IL-2 receptor alpha .",
    ("IL-2 gene", "DNA", 1),
    ("IL-2", "protein", 1),
    ("IL-2 receptor alpha", "protein", 1),
    ("IL-2", "protein", 2),
    schema=BIO_SCHEMA,
)
# "Paris" (LOC) twice beside "Paris Hilton": the two occurrences outside it, as grouped_json places them.
REPEATED = example(
    "Paris is not Paris Hilton ; Paris is a city .",
    ("Paris", "LOC", 1),
    ("Paris Hilton", "PER", 1),
    ("Paris", "LOC", 3),
)
# "Paris" (LOC) once, the third: grouped_json cannot say which (it places the text at the first free one).
LATER = example(
    "Paris is not Paris Hilton ; Paris is a city .", ("Paris Hilton", "PER", 1), ("Paris", "LOC", 3)
)
# Labels of several words, as the paper's data names its types ("programming language"); nested too.
SPACED = example(
    "Guido van Rossum wrote Python at CWI Amsterdam .",
    ("Guido van Rossum", "computer scientist", 1),
    ("Python", "programming language", 1),
    ("CWI Amsterdam", "research institute", 1),
    ("Amsterdam", "capital city", 1),
    schema=Schema(("computer scientist", "programming language", "research institute", "capital city")),
)
FIRST_REPEATS = example(
    "Paris is Paris , not Paris Hilton .",
    ("Paris", "LOC", 1),
    ("Paris", "LOC", 2),
    ("Paris Hilton", "PER", 1),
)


# --- API ------------------------------------------------------------------------------------------


def test_formats_are_registered_under_their_names() -> None:
    assert list(FORMATS) == ["bracketed", "xml", "grouped_json", "occurrence_json", "offset_json"]
    for name, fmt in FORMATS.items():
        assert get_format(name) is fmt and fmt.name == name


def test_get_format_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="bracketed, xml, grouped_json"):
        get_format("yaml")


def test_renderings_are_the_documented_strings() -> None:
    rendered = {name: fmt.render(FLAT) for name, fmt in FORMATS.items()}
    assert rendered == {
        "bracketed": "[John Smith | PER] visited [Paris | LOC] .",
        "xml": "<PER>John Smith</PER> visited <LOC>Paris</LOC> .",
        "grouped_json": '{"entities": {"PER": ["John Smith"], "LOC": ["Paris"]}}',
        "occurrence_json": '[{"text": "John Smith", "label": "PER", "occurrence_index": 1}, '
        '{"text": "Paris", "label": "LOC", "occurrence_index": 1}]',
        "offset_json": '[{"text": "John Smith", "label": "PER", "start": 0, "end": 10}, '
        '{"text": "Paris", "label": "LOC", "start": 19, "end": 24}]',
    }
    assert FORMATS["bracketed"].render(NESTED).startswith("[[[IL-2 | protein] gene | DNA]] expression")
    assert FORMATS["xml"].render(NESTED).startswith("[<DNA><protein>IL-2</protein> gene</DNA>] expression")


@pytest.mark.parametrize("name", list(FORMATS))
def test_instruction_shows_an_example_the_parser_accepts(name: str) -> None:
    fmt = FORMATS[name]
    instruction = fmt.instruction()
    sentence, answer = instruction.split("Example: ", 1)[1].split(" -> ", 1)
    result = fmt.parse(answer, sentence, Schema(("person", "organisation")))
    assert result.ok and texts(result, sentence) == [("Alice", "person"), ("Acme Corp", "organisation")]


# --- split_answer ------------------------------------------------------------------------------------


def test_split_answer_separates_the_rationale() -> None:
    assert split_answer("<think>\nParis is a city.\n</think>\nanswer") == ("Paris is a city.", "answer", [])
    assert split_answer("answer") == (None, "answer", [])
    # A chat template that opens the block itself leaves only the closing tag in the output.
    assert split_answer("reasoning</think>answer") == ("reasoning", "answer", [])


def test_split_answer_unclosed_think_is_truncated_output() -> None:
    rationale, answer, problems = split_answer("<think>Paris is a ci")
    assert (rationale, answer) == ("Paris is a ci", "")
    assert [p.kind for p in problems] == ["unclosed_think"]


def test_split_answer_strips_code_fences_at_a_cost() -> None:
    rationale, answer, problems = split_answer('<think>r</think>\n```json\n{"entities": {}}\n```')
    assert (rationale, answer, [p.kind for p in problems]) == ("r", '{"entities": {}}', ["code_fence"])
    _, answer, problems = split_answer("Here it is:\n```\n[]\n```\nDone.")
    assert answer == "[]" and [p.kind for p in problems] == ["code_fence", "extra_text"]
    _, answer, problems = split_answer("```\n[]")  # cut before the closing fence
    assert answer == "[]" and [p.kind for p in problems] == ["code_fence"]
    # Within a line, three backticks are text: a sentence (code, Markdown) an inline answer repeats.
    assert split_answer("[Bob | PER] wrote ``` once") == (None, "[Bob | PER] wrote ``` once", [])
    code = Example("Type ```python to open a block", (Span(5, 14, "code"),), Schema(("code",)), "x")
    for name, fmt in FORMATS.items():
        parsed = fmt.parse(fmt.render(code), code.text, code.schema)
        assert (parsed.spans, parsed.problems) == (list(code.spans), []), name


def test_split_answer_text_before_think_is_extra() -> None:
    _, answer, problems = split_answer("Sure! <think>r</think> answer")
    assert answer == "answer" and [p.kind for p in problems] == ["extra_text"]


@given(st.lists(st.sampled_from(["<think>", "</think>", "<", "/", "think>", "a", " ", "\n"]), max_size=12))
def test_split_answer_reads_the_tags_as_partitioning_them_does(pieces: list[str]) -> None:
    """`split_answer` searches `</think>` once: the first one after an opening `<think>` is the first
    one of the output. The straightforward reading, partition by partition, must agree."""
    output = "".join(pieces)
    before_open, opened, after_open = output.partition("<think>")
    before_close, closed, after_close = output.partition("</think>")
    if opened and (not closed or len(before_open) < len(before_close)):
        body, closed_after, rest = after_open.partition("</think>")
        expected = (body.strip(), rest.strip()) if closed_after else (after_open.strip(), "")
    elif closed:
        expected = (before_close.strip(), after_close.strip())
    else:
        expected = (None, output.strip())
    rationale, answer, _ = split_answer(output)
    assert (rationale, answer) == expected


# --- every format: round trips and wrappers ----------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize(
    "ex",
    [FLAT, NESTED, FIRST_REPEATS, REPEATED, LATER, SPACED],
    ids=["flat", "nested", "first", "repeated", "later", "spaced"],
)
def test_round_trip_by_hand(name: str, ex: Example) -> None:
    fmt = FORMATS[name]
    if ex is LATER and name == "grouped_json":
        assert not fmt.expresses(ex)
        return
    assert fmt.expresses(ex)
    result = fmt.parse(fmt.render(ex), ex.text, ex.schema)
    assert result.ok, result.problems
    assert result.spans == list(ex.spans) and result.ungrounded == []


@pytest.mark.parametrize("name", list(FORMATS))
def test_think_block_and_fence_around_the_answer(name: str) -> None:
    fmt = FORMATS[name]
    plain = fmt.parse(f"<think>\nJohn Smith is a person.\n</think>\n{fmt.render(FLAT)}", FLAT.text, SCHEMA)
    assert plain.ok and plain.spans == list(FLAT.spans)
    fenced = fmt.parse(f"<think>r</think>\n```\n{fmt.render(FLAT)}\n```", FLAT.text, SCHEMA)
    assert fenced.spans == list(FLAT.spans) and kinds(fenced) == {"code_fence"}


@pytest.mark.parametrize("name", list(FORMATS))
def test_unclosed_think_yields_no_spans(name: str) -> None:
    result = FORMATS[name].parse("<think>John Smith is a per", FLAT.text, SCHEMA)
    assert result.spans == [] and kinds(result) == {"unclosed_think"}


@pytest.mark.parametrize("name", list(FORMATS))
def test_empty_output_is_no_answer(name: str) -> None:
    result = FORMATS[name].parse("   ", FLAT.text, SCHEMA)
    assert result.spans == [] and kinds(result) == {"no_answer"}


@pytest.mark.parametrize("name", list(FORMATS))
def test_unknown_labels_are_kept_and_reported_once(name: str) -> None:
    ex = example("John met Mary in Rome .", ("John", "PER", 1), ("Mary", "PER", 1), ("Rome", "LOC", 1))
    fmt = FORMATS[name]
    result = fmt.parse(fmt.render(ex).replace("PER", "PERSON"), ex.text, SCHEMA)
    assert texts(result, ex.text) == [("John", "PERSON"), ("Mary", "PERSON"), ("Rome", "LOC")]
    assert [p.kind for p in result.problems] == ["unknown_label"]


@pytest.mark.parametrize("name", list(FORMATS))
def test_truncated_answer_keeps_its_complete_part(name: str) -> None:
    ex = example("John met Mary in Rome .", ("John", "PER", 1), ("Mary", "PER", 1), ("Rome", "LOC", 1))
    fmt = FORMATS[name]
    rendered = fmt.render(ex)
    cut = rendered[: rendered.index("Rome") + 2]
    result = fmt.parse(cut, ex.text, SCHEMA)
    assert texts(result, ex.text) == [("John", "PER"), ("Mary", "PER")]
    assert kinds(result) == {"truncated"}


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("ex", [NESTED, SPACED], ids=["nested", "spaced"])
def test_every_prefix_of_an_answer_parses_to_a_subset(name: str, ex: Example) -> None:
    """A prefix is a cut-off answer (a label's first words included): it is read as truncated."""
    fmt = FORMATS[name]
    rendered = fmt.render(ex)
    for end in range(len(rendered) + 1):
        result = fmt.parse(rendered[:end], ex.text, ex.schema)
        assert_valid(result, ex.text)
        assert set(result.spans) <= set(ex.spans), rendered[:end]
        if ex is SPACED:  # NESTED's sentence has literal brackets, which a cut may leave unpaired
            assert not kinds(result) & {"text_altered", "unbalanced_tag"}, rendered[:end]
        assert result.ok == (end == len(rendered))


@pytest.mark.parametrize("name", list(FORMATS))
def test_crossing_spans_only_inline_formats_cannot_express(name: str) -> None:
    ex = example("New York City Council", ("New York City", "LOC", 1), ("York City Council", "ORG", 1))
    assert FORMATS[name].expresses(ex) == (name not in {"bracketed", "xml"})


# --- bracketed ---------------------------------------------------------------------------------------


def test_bracketed_literal_brackets_and_pipes_are_text() -> None:
    fmt = FORMATS["bracketed"]
    conll = Example("[ CORRECTED 05:30 GMT ] Bonn", (Span(24, 28, "LOC"),), SCHEMA)
    genia = example(
        "[3H]thymidine uptake by [ T cells ] | n = 3",
        ("[3H]thymidine", "MISC", 1),
        ("T cells", "PER", 1),
    )
    unpaired = example("a [ b and c ] d | e", ("c", "PER", 1), ("b", "LOC", 1))
    for ex in (conll, genia, unpaired):
        assert fmt.expresses(ex)
        result = fmt.parse(fmt.render(ex), ex.text, SCHEMA)
        assert result.ok and result.spans == list(ex.spans), fmt.render(ex)


def test_bracketed_cannot_express_closer_like_text_or_unpaired_brackets_in_entities() -> None:
    fmt = FORMATS["bracketed"]
    assert not fmt.expresses(example("Machinery | ACM ] now", ("Machinery", "ORG", 1)))
    assert not fmt.expresses(example("see [ Smith et al", ("[ Smith", "PER", 1)))
    assert not fmt.expresses(example("see Smith ] et al", ("Smith ]", "PER", 1)))


def test_bracketed_unbalanced_closers_and_openers() -> None:
    fmt = FORMATS["bracketed"]
    result = fmt.parse("John Smith | PER] visited [Paris | LOC] .", FLAT.text, SCHEMA)
    assert texts(result, FLAT.text) == [("Paris", "LOC")] and kinds(result) == {"unbalanced_tag"}
    result = fmt.parse("[John Smith | PER] visited [[Paris | LOC] .", FLAT.text, SCHEMA)
    assert result.spans == list(FLAT.spans) and kinds(result) == {"unbalanced_tag"}


def test_bracketed_accepts_tight_spacing() -> None:
    result = FORMATS["bracketed"].parse("[John Smith|PER] visited [Paris |LOC ] .", FLAT.text, SCHEMA)
    assert result.ok and result.spans == list(FLAT.spans)


# --- xml ---------------------------------------------------------------------------------------------


def test_xml_lone_angle_brackets_are_text() -> None:
    fmt = FORMATS["xml"]
    ex = example("IL-2 rose ( P < 0.01 , n > 3 , <0.05> ) .", ("IL-2", "protein", 1), schema=BIO_SCHEMA)
    assert fmt.expresses(ex)
    rendered = fmt.render(ex)
    assert rendered == "<protein>IL-2</protein> rose ( P < 0.01 , n > 3 , <0.05> ) ."
    result = fmt.parse(rendered, ex.text, BIO_SCHEMA)
    assert result.ok and result.spans == list(ex.spans)


def test_xml_a_tag_of_several_words_is_a_label_of_the_schema_or_text() -> None:
    schema = Schema(("programming language", "person"))
    text = "if a <b c> d then Python"
    result = FORMATS["xml"].parse(
        "if a <b c> d then <programming language>Python</programming language>", text, schema
    )
    assert texts(result, text) == [("Python", "programming language")] and result.ok
    assert not FORMATS["xml"].expresses(example("a <person> tag", schema=schema))
    # A label of several words in another case is a tag: an unknown label, kept (case folding may repair it).
    cased = FORMATS["xml"].parse(
        "<Programming Language>Python</Programming Language> rules", "Python rules", schema
    )
    assert texts(cased, "Python rules") == [("Python", "Programming Language")]
    assert kinds(cased) == {"unknown_label"}
    assert not FORMATS["xml"].expresses(example("a <Person Of Note> tag", schema=Schema(("person of note",))))
    # Words after a `<` at the end are a cut-off tag only when they begin a label: here the model added text.
    sentence = "it holds if x<y holds ."
    added = FORMATS["xml"].parse(f"{sentence} and more", sentence, schema)
    assert "text_altered" in kinds(added) and "truncated" not in kinds(added)


def test_xml_cannot_express_tag_like_text_or_a_label_opening_with_a_slash() -> None:
    assert not FORMATS["xml"].expresses(example("the <b> tag of HTML", ("HTML", "MISC", 1)))
    slashed = example("Bob ran", ("Bob", "/PER", 1), schema=Schema(("/PER",)))  # <//PER> closes nothing
    assert FORMATS["xml"].parse(FORMATS["xml"].render(slashed), slashed.text, slashed.schema).spans == []
    assert not FORMATS["xml"].expresses(slashed)


def test_xml_unbalanced_tags() -> None:
    fmt = FORMATS["xml"]
    never_closed = fmt.parse("<PER>John Smith visited <LOC>Paris</LOC> .", FLAT.text, SCHEMA)
    assert texts(never_closed, FLAT.text) == [("Paris", "LOC")] and kinds(never_closed) == {"unbalanced_tag"}
    stray = fmt.parse("<PER>John Smith</PER></LOC> visited Paris .", FLAT.text, SCHEMA)
    assert texts(stray, FLAT.text) == [("John Smith", "PER")] and kinds(stray) == {"unbalanced_tag"}
    inner_left_open = fmt.parse("<PER>John <LOC>Smith</PER> visited Paris .", FLAT.text, SCHEMA)
    assert texts(inner_left_open, FLAT.text) == [("John Smith", "PER")]
    assert kinds(inner_left_open) == {"unbalanced_tag"}


def test_xml_whitespace_inside_tags_is_trimmed_from_entities() -> None:
    result = FORMATS["xml"].parse("<PER> John Smith</PER> visited<LOC> Paris </LOC>.", FLAT.text, SCHEMA)
    assert result.ok and result.spans == list(FLAT.spans)


# --- inline: sentence altered by the model -----------------------------------------------------------


@pytest.mark.parametrize("name", ["bracketed", "xml"])
def test_altered_sentence_is_aligned_back(name: str) -> None:
    fmt = FORMATS[name]
    ex = example(
        "Paris said Paris Hilton will visit Paris in May .",
        ("Paris", "PER", 1),
        ("Paris Hilton", "PER", 1),
        ("Paris", "LOC", 3),
    )
    altered = fmt.render(ex).replace("said", "says that").replace(" .", ".")
    result = fmt.parse(altered, ex.text, SCHEMA)
    assert result.spans == list(ex.spans) and kinds(result) == {"text_altered"}
    # "Hilton" is still in the input, inside "Paris Hilton": the alignment finds it there.
    result = fmt.parse(fmt.render(ex).replace("Paris Hilton", "Hilton"), ex.text, SCHEMA)
    assert texts(result, ex.text) == [("Paris", "PER"), ("Hilton", "PER"), ("Paris", "LOC")]
    assert result.spans[1].start == 17 and kinds(result) == {"text_altered"}
    invented = fmt.parse(fmt.render(ex).replace("Paris Hilton", "Nicky Hilton"), ex.text, SCHEMA)
    assert ("Nicky Hilton", "PER") in invented.ungrounded and "ungrounded" in kinds(invented)


# --- grouped_json ------------------------------------------------------------------------------------


def test_grouped_json_repeats_mean_first_free_occurrences() -> None:
    fmt = FORMATS["grouped_json"]
    text = "Paris , Paris and Paris"
    result = fmt.parse('{"entities": {"LOC": ["Paris", "Paris"]}}', text, SCHEMA)
    assert [span.start for span in result.spans] == [0, 8] and result.ok
    too_many = fmt.parse('{"entities": {"LOC": ["Paris", "Paris", "Paris", "Paris"]}}', text, SCHEMA)
    assert len(too_many.spans) == 3 and kinds(too_many) == {"duplicate"}
    second_only = Example(text, (Span(8, 13, "LOC"),), SCHEMA)
    assert not fmt.expresses(second_only)
    # A text under a second label takes the next occurrence (labels listed in schema order: PER first).
    both = fmt.parse('{"entities": {"PER": ["Paris"], "LOC": ["Paris"]}}', text, SCHEMA)
    assert both.spans == [Span(0, 5, "PER"), Span(8, 13, "LOC")] and both.ok
    assert fmt.expresses(Example(text, (Span(0, 5, "PER"), Span(8, 13, "LOC")), SCHEMA))
    assert not fmt.expresses(Example(text, (Span(0, 5, "LOC"), Span(8, 13, "PER")), SCHEMA))
    assert not fmt.expresses(Example(text, (Span(0, 5, "LOC"), Span(0, 5, "PER")), SCHEMA))
    assert fmt.expresses(Example("Paris", (Span(0, 5, "LOC"), Span(0, 5, "PER")), SCHEMA))  # no other


def test_grouped_json_places_a_text_outside_the_longer_mentions_that_contain_it() -> None:
    """ "Paris" beside "Paris Hilton" is the Paris outside it, as the gold readers place it (`_place`);
    one found only inside a longer mention is nested there (GENIA's "IL-2" in "IL-2 gene")."""
    fmt = FORMATS["grouped_json"]
    text = "Paris Hilton visited Paris ."
    result = fmt.parse('{"entities": {"LOC": ["Paris"], "PER": ["Paris Hilton"]}}', text, SCHEMA)
    assert result.spans == [Span(0, 12, "PER"), Span(21, 26, "LOC")] and result.ok
    nested = fmt.parse('{"entities": {"PER": ["Paris"], "LOC": ["Paris Hilton"]}}', "Paris Hilton .", SCHEMA)
    assert nested.spans == [Span(0, 12, "LOC"), Span(0, 5, "PER")] and nested.ok
    # Longer as found in the text: "U.S.A. Inc" is found spaced as the sentence writes it.
    spaced = "U . S . A . Inc sued U . S . A ."
    answer = '{"entities": {"ORG": ["U.S.A. Inc"], "LOC": ["U . S . A ."]}}'
    assert fmt.parse(answer, spaced, SCHEMA).spans == [Span(0, 15, "ORG"), Span(21, 32, "LOC")]


def test_grouped_json_occurrences_are_word_bounded() -> None:
    text = "Germany and an ant"
    result = FORMATS["grouped_json"].parse('{"entities": {"MISC": ["an"]}}', text, SCHEMA)
    assert texts(result, text) == [("an", "MISC")] and result.spans[0].start == 12
    # A combining accent belongs to its letter: "Jose" is the second word of "Jose\u0301 met Jose", exactly or
    # ignoring case, not the first four characters of José.
    accented = "Jose\u0301 met Jose ."
    for mention in ("Jose", "JOSE"):
        answer = json.dumps({"entities": {"PER": [mention]}})
        assert FORMATS["grouped_json"].parse(answer, accented, SCHEMA).spans == [Span(10, 14, "PER")], mention
    assert occurrences(accented, "Jose") == [10]
    # ... and a mark is no punctuation: the words around it keep the space between them in the match key.
    assert (
        normalize_mention("Jose\u0301  Maria") == "jose\u0301 maria" != normalize_mention("Jose\u0301Maria")
    )


def test_grouped_json_shapes() -> None:
    fmt = FORMATS["grouped_json"]
    text = FLAT.text
    bare = fmt.parse('{"PER": ["John Smith"], "LOC": "Paris", "ORG": []}', text, SCHEMA)
    assert bare.spans == list(FLAT.spans) and kinds(bare) == {"wrong_shape", "bad_entry"}
    assert fmt.parse('{"entities": {"LOC": []}}', text, SCHEMA).ok
    as_list = fmt.parse('[{"text": "Paris", "label": "LOC"}]', text, SCHEMA)
    assert as_list.spans == [] and kinds(as_list) == {"wrong_shape"}
    numbers = fmt.parse('{"entities": {"PER": [1, null, "John Smith"], "LOC": 7}}', text, SCHEMA)
    assert texts(numbers, text) == [("John Smith", "PER")] and kinds(numbers) == {"bad_entry"}
    wrong_inner = fmt.parse('{"entities": ["John Smith"]}', text, SCHEMA)
    assert wrong_inner.spans == [] and kinds(wrong_inner) == {"wrong_shape"}


def test_a_label_repeated_in_grouped_json_keeps_every_mention() -> None:
    """`json` keeps the last of repeated keys: the mentions listed first were dropped unseen."""
    fmt = FORMATS["grouped_json"]
    repeated = fmt.parse(
        '{"entities": {"PER": ["John Smith"], "LOC": ["Paris"], "LOC": []}}', FLAT.text, SCHEMA
    )
    assert repeated.spans == list(FLAT.spans)
    python = fmt.parse(
        "{'entities': {'PER': ['John Smith'], 'LOC': ['Paris'], 'PER': []}}", FLAT.text, SCHEMA
    )
    assert sorted(python.spans) == sorted(FLAT.spans)
    wrapped_twice = '{"entities": {"PER": ["John Smith"]}, "entities": {"LOC": ["Paris"]}}'
    assert sorted(fmt.parse(wrapped_twice, FLAT.text, SCHEMA).spans) == sorted(FLAT.spans)


def test_a_label_repeated_in_a_cut_off_or_python_answer_keeps_every_mention() -> None:
    """The salvage of a truncated object and Python's literal reading (a quote inside a string keeps it
    from the JSON path) join repeated keys as a complete JSON answer does; each kept the last list."""
    fmt = FORMATS["grouped_json"]
    text = "John Smith met O'Neil in Paris ."
    truncated = fmt.parse(
        '{"entities": {"PER": ["John Smith"], "PER": ["O\'Neil"], "LOC": ["Paris"]', text, SCHEMA
    )
    assert texts(truncated, text) == [("John Smith", "PER"), ("O'Neil", "PER"), ("Paris", "LOC")]
    assert kinds(truncated) == {"truncated"}
    python = fmt.parse(
        """{'entities': {'PER': ['John Smith'], 'LOC': ["Paris"], 'PER': ["O'Neil"]}}""", text, SCHEMA
    )
    assert texts(python, text) == [("John Smith", "PER"), ("O'Neil", "PER"), ("Paris", "LOC")]
    nested = fmt.parse(
        """{'entities': {'PER': ['John Smith']}, 'entities': {'PER': ["O'Neil"]}}""", text, SCHEMA
    )
    assert texts(nested, text) == [("John Smith", "PER"), ("O'Neil", "PER")]


def test_grouped_json_invalid_and_repaired_json() -> None:
    fmt = FORMATS["grouped_json"]
    text = FLAT.text
    python = fmt.parse("{'entities': {'PER': ['John Smith',], 'LOC': ['Paris']}}", text, SCHEMA)
    assert python.spans == list(FLAT.spans) and kinds(python) == {"invalid_json"}
    broken = fmt.parse('{"entities": {"PER": ["John Smith"]], "LOC": ["Paris"]}}', text, SCHEMA)
    assert texts(broken, text) == [("John Smith", "PER")] and kinds(broken) == {"invalid_json"}
    prose = fmt.parse("John Smith is a person and Paris a location.", text, SCHEMA)
    assert prose.spans == [] and kinds(prose) == {"invalid_json"}
    chatty = fmt.parse('Entities: {"entities": {"LOC": ["Paris"]}} Hope this helps!', text, SCHEMA)
    assert texts(chatty, text) == [("Paris", "LOC")] and kinds(chatty) == {"extra_text"}
    cut_in_string = fmt.parse('{"entities": {"PER": ["John Smith"], "LOC": ["Par', text, SCHEMA)
    assert texts(cut_in_string, text) == [("John Smith", "PER")] and kinds(cut_in_string) == {"truncated"}


def test_lenient_grounding_ignores_case_and_spacing_around_punctuation() -> None:
    text = "The U.S. , Britain and ( IL-2 ) ."
    result = FORMATS["grouped_json"].parse(
        '{"entities": {"LOC": ["U.S.,", "britain"], "MISC": ["(IL-2)"]}}', text, SCHEMA
    )
    assert texts(result, text) == [("U.S. ,", "LOC"), ("Britain", "LOC"), ("( IL-2 )", "MISC")]
    assert result.ok
    missing = FORMATS["grouped_json"].parse('{"entities": {"LOC": ["France"]}}', text, SCHEMA)
    assert missing.ungrounded == [("France", "LOC")] and kinds(missing) == {"ungrounded"}


# --- occurrence_json -----------------------------------------------------------------------------------


def test_occurrence_json_indexes() -> None:
    fmt = FORMATS["occurrence_json"]
    text = REPEATED.text
    assert json.loads(fmt.render(REPEATED))[2] == {"text": "Paris", "label": "LOC", "occurrence_index": 3}
    out_of_range = fmt.parse('[{"text": "Paris", "label": "LOC", "occurrence_index": 9}]', text, SCHEMA)
    assert [s.start for s in out_of_range.spans] == [28] and kinds(out_of_range) == {"offset_mismatch"}
    missing = fmt.parse('[{"text": "Paris", "label": "LOC"}]', text, SCHEMA)
    assert [s.start for s in missing.spans] == [0] and kinds(missing) == {"bad_entry"}
    alias = fmt.parse('[{"text": "Paris", "label": "LOC", "occurrence": 2}]', text, SCHEMA)
    assert [s.start for s in alias.spans] == [13] and alias.ok
    as_string = fmt.parse('[{"text": "Paris", "label": "LOC", "occurrence_index": "2"}]', text, SCHEMA)
    assert [s.start for s in as_string.spans] == [13] and kinds(as_string) == {"bad_entry"}


def test_occurrence_json_cannot_express_an_unlisted_word_piece() -> None:
    ex = Example("IL-2R binds IL-2", (Span(0, 4, "protein"),), BIO_SCHEMA)
    assert occurrences(ex.text, "IL-2") == [12]
    assert not FORMATS["occurrence_json"].expresses(ex) and FORMATS["offset_json"].expresses(ex)


def test_entry_lists_wrong_shapes_and_bad_entries() -> None:
    fmt = FORMATS["occurrence_json"]
    text = FLAT.text
    wrapped = fmt.parse(
        '{"entities": [{"text": "Paris", "label": "LOC", "occurrence_index": 1}]}', text, SCHEMA
    )
    assert texts(wrapped, text) == [("Paris", "LOC")] and kinds(wrapped) == {"wrong_shape"}
    single = fmt.parse('{"text": "Paris", "label": "LOC", "occurrence_index": 1}', text, SCHEMA)
    assert texts(single, text) == [("Paris", "LOC")] and kinds(single) == {"wrong_shape"}
    junk = fmt.parse(
        '[3, "Paris", {"text": "Paris"}, {"text": 5, "label": "LOC"}, {"text": " ", "label": "LOC"}]',
        text,
        SCHEMA,
    )
    assert junk.spans == [] and [p.kind for p in junk.problems] == ["bad_entry"] * 5
    scalar = fmt.parse("42", text, SCHEMA)
    assert scalar.spans == [] and kinds(scalar) == {"invalid_json"}
    dict_of_lists = fmt.parse('{"a": [], "b": []}', text, SCHEMA)
    assert dict_of_lists.spans == [] and kinds(dict_of_lists) == {"wrong_shape"}


# --- offset_json -------------------------------------------------------------------------------------


def test_offset_json_states_its_offsets_and_regrounds_only_when_asked() -> None:
    fmt, lenient = FORMATS["offset_json"], get_format("offset_json", reground_offsets=True)
    text = REPEATED.text
    inclusive_end = '[{"text": "Paris", "label": "LOC", "start": 28, "end": 32}]'
    strict = fmt.parse(inclusive_end, text, SCHEMA)
    assert texts(strict, text) == [("Pari", "LOC")] and kinds(strict) == {"offset_mismatch"}
    regrounded = lenient.parse(inclusive_end, text, SCHEMA)
    assert texts(regrounded, text) == [("Paris", "LOC")] and regrounded.spans[0].start == 28
    off_by_some = '[{"text": "Paris", "label": "LOC", "start": 15, "end": 20}]'
    assert [s.start for s in lenient.parse(off_by_some, text, SCHEMA).spans] == [13]
    # 15:20 is "ris H": a span of the sentence, so it is what the answer states
    assert texts(fmt.parse(off_by_some, text, SCHEMA), text) == [("ris H", "LOC")]
    # offsets that are no span (on a space, out of range) or absent leave only the text
    for entry in ('"start": 4, "end": 6', '"start": 40, "end": 99', '"start": 5, "end": 2'):
        result = fmt.parse(f'[{{"text": "Paris", "label": "LOC", {entry}}}]', text, SCHEMA)
        assert result.spans == [] and result.ungrounded == [("Paris", "LOC")], entry
        assert kinds(result) == {"offset_mismatch"}
    # no offsets stated (a bad entry): nothing to honour, the text is grounded
    no_offsets = fmt.parse('[{"text": "Paris Hilton", "label": "PER", "start": "x"}]', text, SCHEMA)
    assert texts(no_offsets, text) == [("Paris Hilton", "PER")] and kinds(no_offsets) == {"bad_entry"}
    strings = fmt.parse('[{"text": "Paris", "label": "LOC", "start": "13", "end": 18.0}]', text, SCHEMA)
    assert [s.start for s in strings.spans] == [13] and kinds(strings) == {"bad_entry"}
    # offsets that hold the stated text with the whitespace it stated around it: that text
    padded = fmt.parse(
        f'[{{"text": " {text[13:18]} ", "label": "LOC", "start": 12, "end": 19}}]', text, SCHEMA
    )
    assert texts(padded, text) == [("Paris", "LOC")] and padded.spans[0].start == 13 and padded.ok


def test_offset_json_shifted_offsets_score_nothing_in_exact_mode() -> None:
    """The issue's case: every offset one too far, right texts. Exact matching sees wrong spans;
    text matching still compares the texts stated (here the covered ones, so nothing either)."""
    gold = example("Ann met Bob in Rome today .", ("Ann", "PER", 1), ("Bob", "PER", 1), ("Rome", "LOC", 1))
    shifted = json.dumps(
        [
            {**entity, "start": entity["start"] + 1, "end": entity["end"] + 1}
            for entity in json.loads(FORMATS["offset_json"].render(gold))
        ]
    )
    result = FORMATS["offset_json"].parse(shifted, gold.text, gold.schema)
    assert match_totals(gold, result.spans, result.ungrounded, "exact") == Counts(0, 3, 3)
    regrounded = get_format("offset_json", reground_offsets=True).parse(shifted, gold.text, gold.schema)
    assert match_totals(gold, regrounded.spans, regrounded.ungrounded, "exact") == Counts(3, 0, 0)


def test_offset_json_duplicates_are_kept_once() -> None:
    fmt, text = FORMATS["offset_json"], REPEATED.text
    twice = fmt.parse(
        fmt.render(REPEATED)[:-1] + ', {"text": "Paris", "label": "LOC", "start": 0, "end": 5}]', text, SCHEMA
    )
    assert twice.spans == list(REPEATED.spans) and kinds(twice) == {"duplicate"}


# --- real corpora --------------------------------------------------------------------------------------


@lru_cache
def _corpora() -> dict[str, list[Example]]:
    """Every corpus shipped in data/, and the full shared ones where this machine has them, read
    strictly by `reasoningner.readers` (ACE's doubled tags, `<PER><PER>x</PER></PER>`, become one span)."""
    corpora: dict[str, list[Example]] = {}
    for root in (SHIPPED, SHARED):
        for path in sorted(root.glob("conll2003/*.txt")) + sorted(root.glob("crossner/**/*.txt")):
            corpora[str(path)] = read_conll(path).examples
        for path in sorted(root.glob("*/*.json")):
            corpora[str(path)] = read_alpaca(path).examples
    assert len(corpora) >= 4  # data/'s, on any clone
    return corpora


# Measured: inline and offset formats express every sentence; occurrence_json all but word pieces
# (none in this data); grouped_json loses up to 1% per file (GENIA, ACE2005: a nested mention whose
# text also stands alone, unannotated).
MIN_EXPRESSED = {
    "bracketed": 0.99,
    "xml": 0.99,
    "grouped_json": 0.98,
    "occurrence_json": 0.99,
    "offset_json": 1.0,
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_round_trip_on_every_corpus(name: str) -> None:
    fmt = FORMATS[name]
    expressed = total = 0
    for corpus, examples in _corpora().items():
        count = 0
        for ex in examples:
            if not fmt.expresses(ex):
                continue
            count += 1
            result = fmt.parse(fmt.render(ex), ex.text, ex.schema)
            assert result.spans == list(ex.spans) and result.ok, (ex.id, fmt.render(ex), result)
        fraction = count / len(examples)
        print(f"{name} {corpus}: {fraction:.4f} of {len(examples)} expressed")
        assert fraction >= MIN_EXPRESSED[name], corpus
        expressed += count
        total += len(examples)
    assert expressed / total >= max(MIN_EXPRESSED[name], 0.95)


def gold_outputs_scored_as_predictions(path: Path) -> dict[str, Counts]:
    """Each record's own gold `output` parsed by the xml parser as if a model wrote it, scored against
    what the reader made of the record, in both modes: the reader and the parser share one grammar."""
    records = json.loads(path.read_text(encoding="utf-8"))
    examples = read_alpaca(path).examples
    assert len(records) == len(examples)
    scorers = {mode: Scorer(mode) for mode in ("exact", "text")}
    for record, gold in zip(records, examples, strict=True):
        parsed = FORMATS["xml"].parse(record["output"], gold.text, gold.schema)
        assert {p.kind for p in parsed.problems} <= {"duplicate"}, (gold.id, parsed.problems)
        for scorer in scorers.values():
            scorer.add(gold, parsed.spans, parsed.ungrounded)
    return {mode: scorer.report().datasets["default"].micro for mode, scorer in scorers.items()}


@pytest.mark.parametrize("fixture", ["genia_mini.json", "ace2005_mini.json"])
def test_gold_outputs_of_the_fixtures_score_100_as_predictions(fixture: str) -> None:
    """The slices hold the hard cases: closers out of order (<protein><DNA>x</protein></DNA>),
    doubled tags (<PER><PER>x</PER></PER>), "<" and "[" as text."""
    text = (FIXTURES / fixture).read_text(encoding="utf-8")
    assert re.search(r"<(\w+)><(\w+)>[^<]*</\1></\2>", text) or "<PER><PER>" in text
    for counts in gold_outputs_scored_as_predictions(FIXTURES / fixture).values():
        assert counts.fp == counts.fn == 0 and counts.f1 == 1.0


@pytest.mark.parametrize(
    "path",
    [
        SHIPPED / "genia" / "dev-slice.json",
        SHARED / "genia" / "dev_xml_alpaca.json",
        SHARED / "ace2005" / "dev_xml_alpaca.json",
    ],
    ids=["genia-slice", "genia-shared", "ace2005-shared"],
)
def test_gold_outputs_of_the_nested_corpora_score_100_as_predictions(path: Path) -> None:
    if SHARED in path.parents and not path.exists():
        pytest.skip(f"shared data not found at {path}")
    for mode, counts in gold_outputs_scored_as_predictions(path).items():
        assert (counts.fp, counts.fn, counts.f1) == (0, 0, 1.0), (mode, counts)


def test_xml_closers_in_any_order_close_their_own_tags() -> None:
    ex = example("Id2 binds E2A .", ("Id2", "protein", 1), ("Id2", "RNA", 1), schema=BIO_SCHEMA)
    for answer in (
        "<protein><RNA>Id2</protein></RNA> binds E2A .",
        "<protein><RNA>Id2</RNA></protein> binds E2A .",
    ):
        result = FORMATS["xml"].parse(answer, ex.text, BIO_SCHEMA)
        assert result.ok and result.spans == list(ex.spans), answer
    markup = FORMATS["xml"].markup("<A>x <B>y</A> z</B>", ("A", "B"))  # type: ignore[attr-defined]
    assert (markup.clean, markup.spans, markup.errors) == ("x y z", [(0, 3, "A"), (2, 5, "B")], [])


def test_one_inline_grammar_for_gold_and_predictions(tmp_path: Path) -> None:
    """What the gold reader reads from an output is what the parser reads from it, case by case."""
    outputs = [
        "[Ann | PER ] met [Bob|PER] in [[3H]x | MISC] .",
        "<PER>Ann </PER>met <PER>Bob</PER> in <MISC>[3H]x</MISC> .",
        "<PER><LOC>Ann</PER></LOC> met Bob in [3H]x .",
    ]
    records = [{"input": "Ann met Bob in [3H]x .", "output": output} for output in outputs]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    for gold, output in zip(read_alpaca(path, schema=SCHEMA).examples, outputs, strict=True):
        name = "xml" if "<" in output else "bracketed"
        parsed = FORMATS[name].parse(output, gold.text, SCHEMA)
        assert parsed.ok and parsed.spans == list(gold.spans), output


def test_the_corpora_have_nesting_and_literal_markup() -> None:
    """Guards the round trip's reach: nested spans and literal brackets / "<" really are exercised (the
    shipped slices hold a few of each; with the shared dev sets, hundreds)."""
    examples = [ex for corpus in _corpora().values() for ex in corpus]
    nested, brackets, less_than = (10, 5, 1) if not SHARED.is_dir() else (501, 11, 6)
    assert sum(ex.is_nested for ex in examples) >= nested
    assert sum("[" in ex.text for ex in examples) >= brackets
    assert sum(" < " in ex.text for ex in examples) >= less_than


# --- properties --------------------------------------------------------------------------------------

PROPERTY_SCHEMA = Schema(("PER", "LOC", "protein"))
MARKUP = st.sampled_from(
    [
        "[",
        "]",
        " | ",
        "|PER]",
        " | LOC]",
        "<PER>",
        "</PER>",
        "<LOC>",
        "</protein>",
        "<x>",
        "<think>",
        "</think>",
        "```",
        "```json\n",
        "{",
        "}",
        "[{",
        "}]",
        '"',
        '"text": ',
        '"label": "PER"',
        '"entities": ',
        ":",
        ",",
        "1",
        "-3",
        "null",
        "'",
        "\\",
        "occurrence_index",
        '"start": 0',
        '"end": 99',
        " ",
        "\n",
        "Paris",
        "New York",
        "IL-2",
        "paris",
        "é",
        "\x00",
        "NaN",
        "1e999",
    ]  # fmt: skip
)
ANSWERS = st.one_of(
    st.text(max_size=200), st.lists(st.one_of(MARKUP, st.text(max_size=4)), max_size=40).map("".join)
)
SENTENCES = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(["Paris", "New", "York", "IL-2", "[", "]", "|", "<", ">", "(", "U.S.", ","]),
        max_size=15,
    ).map(" ".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=ANSWERS, sentence=SENTENCES, name=st.sampled_from(list(FORMATS)))
def test_parsers_are_total(answer: str, sentence: str, name: str) -> None:
    assert_valid(FORMATS[name].parse(answer, sentence, PROPERTY_SCHEMA), sentence)


DEGENERATE = {
    "deep lists": "[" * 100_000,
    "deep objects": '{"a":' * 20_000,
    "long whitespace": "a" + " " * 50_000 + "b",
    "pipes and spaces": ("|" + " " * 200) * 300,
    "deep unary minus": "[" + "-" * 50_000 + "1]",
    "open tags": "<PER>" * 20_000,
    "fences": "```" * 20_000,
    "thinks": "<think>" * 20_000 + "</think>",
    "long rewrite": "[John Smith | PER] " * 5_000,
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_degenerate_outputs_parse(name: str) -> None:
    """Outputs a sampling run can produce at max length parse to valid spans, with no recursion error
    (milliseconds each: a quadratic blow-up on these sizes would hang the suite, not time a test)."""
    for output in DEGENERATE.values():
        assert_valid(FORMATS[name].parse(output, FLAT.text, SCHEMA), FLAT.text)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), name=st.sampled_from(list(FORMATS)))
def test_parsers_survive_damaged_gold_answers(data: st.DataObject, name: str) -> None:
    fmt = FORMATS[name]
    ex = data.draw(st.sampled_from([FLAT, NESTED, REPEATED]))
    rendered = fmt.render(ex)
    cut = data.draw(st.integers(0, len(rendered)))
    insert = data.draw(st.one_of(MARKUP, st.text(max_size=3)))
    damaged = rendered[:cut] + insert + rendered[cut + data.draw(st.integers(0, 3)) :]
    result = fmt.parse(damaged, ex.text, ex.schema)
    assert_valid(result, ex.text)


WORDS = ["Paris", "New", "York", "IL-2", "gene", "the", "a", "an", "U.S.", ",", "(", ")", "[", "]", "<", "|"]
MARKUP_WORDS = ["<b>", "</PER>", "x|LOC]", "[3H]T"]


@st.composite
def random_examples(draw: st.DrawFn) -> Example:
    """A sentence of words, sometimes with markup look-alikes, and random spans over whole words:
    nested, and in half the draws also crossing."""
    words = draw(st.lists(st.sampled_from(WORDS + MARKUP_WORDS), min_size=1, max_size=12))
    starts = [sum(len(word) + 1 for word in words[:i]) for i in range(len(words))]
    crossing = draw(st.booleans())
    chosen: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 6))):
        first = draw(st.integers(0, len(words) - 1))
        last = draw(st.integers(first, min(len(words) - 1, first + 3)))
        if crossing or not any(a < first <= b < last or first < a <= last < b for a, b in chosen):
            chosen.append((first, last))
    spans = {
        Span(starts[first], starts[last] + len(words[last]), draw(st.sampled_from(PROPERTY_SCHEMA.labels)))
        for first, last in chosen
    }
    return Example(" ".join(words), tuple(spans), PROPERTY_SCHEMA)


@settings(max_examples=400, deadline=None)
@given(ex=random_examples())
def test_round_trip_of_random_examples(ex: Example) -> None:
    crossing = any(is_crossing(a, b) for a in ex.spans for b in ex.spans)
    for fmt in FORMATS.values():
        if fmt.name in {"bracketed", "xml"}:
            assert not (crossing and fmt.expresses(ex))
            assert fmt.expresses(ex) or crossing or any(c in ex.text for c in "[]<|")
        if fmt.expresses(ex):
            result = fmt.parse(fmt.render(ex), ex.text, ex.schema)
            assert result.ok and result.spans == list(ex.spans), (fmt.name, fmt.render(ex), result)


@given(
    st.text(alphabet="aAbB1 .-_", max_size=30),
    st.text(alphabet="aAbB1", min_size=1, max_size=4),
)
def test_the_ascii_word_search_finds_what_the_lenient_regex_finds(text: str, mention: str) -> None:
    """Lenient grounding of a plain ASCII word skips building a regex; both must agree."""
    assert _ascii_word_occurrences(text, mention) == _lenient_regex_occurrences(
        text, mention, normalize_mention(mention)
    )


@given(st.text(alphabet="ab .", max_size=20), st.text(alphabet="ab .", min_size=1, max_size=3))
def test_found_mentions_are_their_occurrences(text: str, mention: str) -> None:
    """`_find` of a text that occurs exactly is each of its `occurrences` with its end (one occurrence,
    the usual case, is built without a list)."""
    starts = occurrences(text, mention)
    if starts:
        assert _find(text, mention) == tuple((start, start + len(mention)) for start in starts)


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 3), st.sampled_from(["PER", "LOC", "x", "y"]))),
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["PER", "y", "z"])), max_size=3),
)
def test_built_spans_and_problems_are_the_straightforward_ones(
    stated: list[tuple[int, int, str]], ungrounded: list[tuple[str, str]]
) -> None:
    """What `_Builder.result` makes in C-level steps (and at once when nothing is stated): the spans
    once each in reading order, a duplicate per repeat, each unknown label once, as first written."""
    text = "Ann met Bob in Paris"
    built = _Builder(text, SCHEMA, [Problem("truncated", "")])
    for start, length, label in stated:
        built.add(start, start + length, label)
    built.ungrounded.extend(ungrounded)
    result = built.result()
    spans = [Span(start, start + length, label) for start, length, label in stated]
    labels = [label for _, _, label in stated] + [label for _, label in ungrounded]
    assert result.spans == sort_spans(dict.fromkeys(spans))
    assert all(type(span) is Span for span in result.spans)
    assert result.ungrounded == ungrounded
    assert [p.kind for p in result.problems] == (
        ["truncated"]
        + ["duplicate"] * (len(spans) - len(set(spans)))
        + ["unknown_label"] * len({label for label in labels if label not in SCHEMA.labels})
    )
    unknown = [p.detail for p in result.problems if p.kind == "unknown_label"]
    assert unknown == [
        f"{label!r} is not a label of the schema"
        for label in dict.fromkeys(labels)
        if label not in SCHEMA.labels
    ]


_LITERALS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@given(_LITERALS)
def test_python_literals_are_read_as_python_reads_them(value) -> None:
    """The quote-swapping fast path agrees with `ast.literal_eval` on every container Python writes."""
    source = repr(value)
    expected = value if isinstance(value, (list, dict)) and "'" in source else _MISSING
    assert _python_literal(source) == expected


@pytest.mark.parametrize("source", ["{'a': true}", "['x', null]", "{'a': NaN}", '["a" "b"]', "{}"])
def test_only_python_literals_are_read_as_python(source) -> None:
    """JSON's constants are no Python, and without single quotes the answer is broken JSON, not Python."""
    assert _python_literal(source) is _MISSING


def test_a_python_literal_answer_is_read_with_a_problem() -> None:
    gold = example("EU rejects German call", ("EU", "ORG", 1), ("German", "MISC", 1))
    parsed = get_format("grouped_json").parse_answer(
        "{'entities': {'ORG': ['EU'], 'MISC': ['German']}}", gold.text, gold.schema
    )
    assert parsed.spans == list(gold.spans)
    assert [p.kind for p in parsed.problems] == ["invalid_json"]
