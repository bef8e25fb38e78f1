"""The rationale grammar (`rationale.asserted_entities`) and the consistency score it feeds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reasoningner.rationale import asserted_entities, assertion, consistency
from reasoningner.spans import Schema

SCHEMA = Schema(("person", "location", "organisation", "musical_artist", "artist"))


@pytest.mark.parametrize(
    ("rationale", "expected"),
    [
        pytest.param('"Peter Blackburn" is a person', [("Peter Blackburn", "person")], id="is-a"),
        pytest.param('"EU" is an Organisation.', [("EU", "organisation")], id="is-an-any-case"),
        pytest.param('"Paris" is the location', [("Paris", "location")], id="is-the"),
        pytest.param(
            '"Paris" -> location, "Rome": location',
            [("Paris", "location"), ("Rome", "location")],
            id="arrows",
        ),
        pytest.param(
            '"Paris" → location\n"Rome" = location',
            [("Paris", "location"), ("Rome", "location")],
            id="symbols",
        ),
        pytest.param('"Rome" labelled as a location', [("Rome", "location")], id="labelled"),
        pytest.param(
            "“Bach” is a musical artist", [("Bach", "musical_artist")], id="curly-underscore-as-space"
        ),
        pytest.param('"Bach" is a musical_artist', [("Bach", "musical_artist")], id="longest-label-wins"),
        pytest.param('"lamb" is not an entity\n"EU" is not a person', [], id="rejections"),
        pytest.param('"Paris" is a locationist', [], id="label-must-end"),
        pytest.param('"Par\nis" is a location', [], id="no-newline-in-quote"),
        pytest.param('"' + "x" * 201 + '" is a person', [], id="quote-too-long"),
        pytest.param('He said "hi" and "Ann" is a person', [("Ann", "person")], id="after-a-stray-quote"),
        pytest.param('" EU" is an organisation', [], id="no-space-after-the-opening-quote"),
    ],
)
def test_assertions_are_read_in_every_documented_form(
    rationale: str, expected: list[tuple[str, str]]
) -> None:
    assert asserted_entities(rationale, SCHEMA) == expected


def test_the_canonical_statement_is_understood() -> None:
    for label in SCHEMA.labels:
        assert asserted_entities(assertion("New York", label), SCHEMA) == [("New York", label)]


def test_a_label_of_several_words_is_read_with_spaces_or_underscores() -> None:
    """The paper's data names types in words ("programming language"), as its teacher's rationales do."""
    schema = Schema(("programming language", "person"))
    rationale = '"Python" is a programming language\n"Guido" is a Person\n"C" is a Programming_Language'
    assert asserted_entities(rationale, schema) == [
        ("Python", "programming language"),
        ("Guido", "person"),
        ("C", "programming language"),
    ]
    assert asserted_entities(assertion("Rust", "programming language"), schema) == [
        ("Rust", "programming language")
    ]


def test_a_text_holding_straight_quotes_is_stated_in_curly_ones_and_read_back() -> None:
    """CoNLL writes nicknames inside the name (`Roberto " Hands of Stone " Duran`): the straight-quote
    statement of it could not be read, so stage 1 rejected every such sentence at consistency 1.0."""
    nickname = 'Roberto " Hands of Stone " Duran'
    statement = assertion(nickname, "person")
    assert statement == '“Roberto " Hands of Stone " Duran” is a person'
    rationale = f'{statement}\n"EU" is an organisation\n“Bonn" is a location'  # mixed quotes still read
    expected = [(nickname, "person"), ("EU", "organisation"), ("Bonn", "location")]
    assert asserted_entities(rationale, SCHEMA) == expected
    assert consistency(rationale, expected, SCHEMA) == 1.0


def test_a_text_holding_curly_quotes_or_a_line_break_is_stated_and_read_back() -> None:
    """The gold template stated "Dwayne “The Rock” Johnson" and "New\nYork" in forms the grammar could not
    read: consistency 0 against its own answer, so stage 1 rejected the sentence and GRPO never paid it."""
    schema = Schema(("person", "work", "location"))
    for text, label in (
        ("Dwayne “The Rock” Johnson", "person"),
        ("“Ulysses”", "work"),
        ("New\nYork", "location"),
    ):
        statement = assertion(text, label)
        assert "\n" not in statement
        assert consistency(statement, [(text, label)], schema) == 1.0, statement


fragments = st.sampled_from(
    [
        '"',
        "“",
        "”",
        "EU",
        "New York",
        " is a ",
        " is an ",
        " is not an ",
        " is the ",
        " labelled as a ",
        "entity",
        "person",
        "location",
        " -> ",
        ": ",
        "\n",
        ", ",
        "x",
    ]
)


@given(st.lists(fragments, max_size=30).map("".join))
def test_straight_and_curly_quotes_are_the_same_grammar(rationale: str) -> None:
    """Straight quotes take a faster regex than curly ones: both must read the same assertions."""
    straight = rationale.replace("“", '"').replace("”", '"')
    curly = straight.replace('"', "“") + "”"  # a curly quote anywhere selects the other regex
    assert asserted_entities(straight, SCHEMA) == asserted_entities(curly, SCHEMA)


def test_consistency_is_the_f1_of_asserted_and_answered_pairs() -> None:
    rationale = '"EU" is an organisation\n"German" is a person'
    assert consistency(rationale, [("EU", "organisation"), ("German", "person")], SCHEMA) == 1.0
    assert consistency(rationale, [("eu", "organisation")], SCHEMA) == pytest.approx(2 / 3)  # text-level keys
    assert consistency("Nothing here names an entity.", [], SCHEMA) == 1.0
    assert consistency("Nothing here names an entity.", [("EU", "organisation")], SCHEMA) == 0.0


# A label that begins with a word the link may end with ("the") makes the link give words back.
LINK_WORD_SCHEMA = Schema((*SCHEMA.labels, "the_band"))


def test_a_label_may_begin_with_a_word_of_the_link() -> None:
    assert asserted_entities('"Blur" is the band', LINK_WORD_SCHEMA) == [("Blur", "the_band")]
    assert asserted_entities('"Blur" is a the band', LINK_WORD_SCHEMA) == [("Blur", "the_band")]


@given(st.lists(fragments, max_size=30).map("".join))
def test_the_atomic_link_reads_what_the_backtracking_one_reads(rationale: str) -> None:
    """Without a label that begins with a link word the link is atomic (faster on rejections)."""
    assert asserted_entities(rationale, SCHEMA) == asserted_entities(rationale, LINK_WORD_SCHEMA)
