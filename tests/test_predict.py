"""`NERModel.predict` / `predict_entities` and `reasoningner predict`: offsets into the input, scores as
the share of samples, threshold, flat NER, windows for long texts, spaCy docs, undecodable input.

Model outputs are scripted per sample (`Sampled`), so every score is a share computed by hand.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasoningner.cli import main
from reasoningner.configs import GenerationArguments, PromptArguments, PromptContract
from reasoningner.formats import FORMATS, get_format
from reasoningner.generation import Completion, Conversation, ConversationFailed, Generator, SamplingConfig
from reasoningner.predict import Entity, NERModel, Prediction, flat_entities, windows
from reasoningner.prompts import wording
from reasoningner.spans import Example, Schema, Span


class Sampled(Generator):
    """Answers sample i of each conversation with `answer(sentence, i)` (which may raise
    `ConversationFailed`: the backend gives up on that one); records every prompt and, per call, how
    many conversations it got with which sampling. `reverse` finishes the last conversation first, as
    a backend may."""

    name = "sampled"

    def __init__(self, answer: Callable[[str, int], str], reverse: bool = False) -> None:
        self.answer = answer
        self.reverse = reverse
        self.prompts: list[str] = []
        self.calls: list[tuple[int, SamplingConfig]] = []

    def _generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, seeds: Sequence[int | None]
    ) -> Iterator[tuple[int, list[Completion]]]:
        self.calls.append((len(conversations), sampling))
        order = range(len(conversations))
        for index in reversed(order) if self.reverse else order:
            prompt = conversations[index][-1]["content"]
            self.prompts.append(prompt)
            sentence = prompt.rsplit("Sentence: ", 1)[1]
            try:
                yield index, [Completion(self.answer(sentence, sample), 3) for sample in range(sampling.n)]
            except ConversationFailed as failure:  # the answer gave up on this conversation
                yield index, failure


def from_table(outputs: dict[str, str]) -> Sampled:
    return Sampled(lambda sentence, _: outputs[sentence])


def grouped(rationale: str = "r", **entities: list[str]) -> str:
    """A grouped_json answer after a rationale."""
    return f"<think>{rationale}</think>" + json.dumps({"entities": entities})


def triples(prediction: Sequence[Entity]) -> list[tuple[str, str, float]]:
    return [(entity.text, entity.label, entity.score) for entity in prediction]


# --- offsets into the original text -----------------------------------------------------------------------

TEXTS = [
    "München liegt in Bayern ; München ist groß , sagt Jürgen aus München .",
    "  Paris 🎉 meets Paris Hilton in Paris  ",
    "北京 and 上海 and 北京 again",
]


@pytest.mark.parametrize("output_format", list(FORMATS))
def test_predict_offsets_slice_the_input_for_every_format(output_format: str) -> None:
    schema = Schema(("person", "location"))
    gold = [
        Example(TEXTS[0], (Span(0, 7, "location"), Span(50, 56, "person"), Span(61, 68, "location")), schema),
        Example(TEXTS[1], (Span(2, 7, "person"), Span(16, 28, "person"), Span(32, 37, "location")), schema),
        Example(TEXTS[2], (Span(0, 2, "location"), Span(7, 9, "location"), Span(14, 16, "location")), schema),
    ]
    fmt = get_format(output_format)
    answers = {e.text: f"<think>because</think>{fmt.render(e)}" for e in gold}
    model = NERModel(from_table(answers), PromptArguments(output_format))
    predictions = model.predict(TEXTS, ["person", "location"], return_rationale=True)
    for text, example, prediction in zip(TEXTS, gold, predictions, strict=True):
        for entity in prediction:
            assert text[entity.start : entity.end] == entity.text
        if fmt.expresses(example):
            assert [(e.start, e.end, e.label) for e in prediction] == [
                (s.start, s.end, s.label) for s in example.spans
            ]
        assert prediction.rationale == "because"


def test_a_label_asked_is_known_however_its_case_spaces_or_underscores_are_written() -> None:
    """A model asked for "medical condition" that writes Medical_Condition named nothing the user got back;
    a name that folds to two labels asked (COLD: cold, Cold) stays unknown."""
    text = "Ann has diabetes and a Cold ."
    answer = grouped(**{"Medical_Condition": ["diabetes"], "PERSON": ["Ann"], "COLD": ["Cold"]})
    model = NERModel(Sampled(lambda sentence, _: answer))
    [prediction] = model.predict([text], ["medical condition", "person", "cold", "Cold"])
    assert list(prediction) == [Entity("Ann", "person", 0, 3), Entity("diabetes", "medical condition", 8, 16)]
    assert [p.detail for p in prediction.problems] == ["'COLD' is not a label of the schema"]


def test_predict_repeated_mentions_ungrounded_unknown_labels_and_blank_texts() -> None:
    answer = (
        '<think>r</think>{"entities": {"location": ["München", "München", "Atlantis"], '
        '"person": ["jürgen"], "weapon": ["Bayern", "Excalibur"]}}'
    )
    generator = Sampled(lambda sentence, _: answer)
    model = NERModel(generator)
    blank, prediction = model.predict(["   ", TEXTS[0]], ["location", "person"], {"location": "a place"})
    assert blank == [] and len(generator.prompts) == 1  # no generation for a blank text
    assert "- location: a place" in generator.prompts[0]
    # Listed twice: the first two occurrences (grouped_json's rule). "jürgen" grounds leniently and the
    # entity keeps the input's spelling.
    assert list(prediction) == [
        Entity("München", "location", 0, 7),
        Entity("München", "location", 26, 33),
        Entity("Jürgen", "person", 50, 56),
    ]
    # "weapon" is dropped, found in the text or not (as evaluation scores it: outside the schema)
    assert prediction.ungrounded == [("Atlantis", "location")]
    assert "unknown_label" in {p.kind for p in prediction.problems}
    assert prediction.rationale is None
    record = prediction.to_dict(TEXTS[0])
    assert record["ungrounded"] == [{"text": "Atlantis", "label": "location"}] and "rationale" not in record
    assert record["entities"][0] == {
        "text": "München",
        "label": "location",
        "start": 0,
        "end": 7,
        "score": 1.0,
    }


# --- scores: the share of samples -------------------------------------------------------------------------

MEETING = "Bob met Ann in Paris ."
SHORT = "Ann ."
SAMPLES = {
    MEETING: [
        grouped("first", person=["Bob", "Ann"], location=["Paris"]),
        grouped("second", person=["Bob"], location=["Paris", "Atlantis"]),
        "```json\n" + grouped("third", person=["Bob", "Ann", "Paris"]).split("</think>")[1] + "\n```",
        grouped("fourth", person=["Bob"]),
    ],
    SHORT: [grouped(person=["Ann"]), grouped(), grouped(person=["Ann"]), grouped()],
}


def sampled_model(**options) -> tuple[NERModel, Sampled]:
    generator = Sampled(lambda sentence, sample: SAMPLES[sentence][sample])
    return NERModel(generator, **options), generator


def test_an_output_that_ran_into_max_new_tokens_is_said_cut_off_though_it_parses() -> None:
    """An answer cut where it could have ended parses whole (the model had more to say, or its end of
    turn was the token cut): only the backend can tell."""

    class CutAfterBob(Generator):
        name = "cut"

        def _generate(self, conversations, sampling, seeds):  # type: ignore[no-untyped-def]
            for index, conversation in enumerate(conversations):
                reason = "length" if "Bob" in conversation[-1]["content"] else "stop"
                yield index, [Completion("<person>Bob</person> met Ann .", 9, reason)]

    xml = PromptArguments("xml", reasoning=False)
    model = NERModel(CutAfterBob(), xml, sampling=SamplingConfig(max_new_tokens=9))
    cut, whole = model.predict(["Bob met Ann .", "Ann met Ann ."], ["person"])
    assert [e.text for e in cut] == ["Bob"]
    assert [(p.kind, p.detail) for p in cut.problems] == [("cut_off", "the output ran into max_new_tokens=9")]
    assert "cut_off" not in {p.kind for p in whole.problems}


def test_a_budget_that_leaves_no_room_for_the_prompt_is_an_error_naming_it() -> None:
    """Every sentence would be refused as too long (evaluation: F1 0 after a warning about the prompt)."""

    class Small(Sampled):
        context_tokens = 4000

        def prompt_tokens(self, conversations):  # type: ignore[no-untyped-def]
            return [len(c[-1]["content"]) // 4 for c in conversations]

    for budget in (3800, 4200):
        model = NERModel(Small(lambda s, i: "{}"), sampling=SamplingConfig(max_new_tokens=budget))
        message = f"max_new_tokens={budget} leaves {4000 - budget} of the model's 4000 context tokens"
        with pytest.raises(ValueError, match=message):
            model.predict(["Ann met Bob ."], ["person"])
        with pytest.raises(ValueError, match=message):
            list(model.run([("Ann met Bob .", Schema(("person",)))]))
    roomy = NERModel(Small(lambda s, i: "{}"), sampling=SamplingConfig(max_new_tokens=1000))
    assert roomy.predict(["Ann met Bob ."], ["person"]) == [[]]


def test_greedy_prediction_scores_one_and_predict_entities_takes_one_text() -> None:
    model, generator = sampled_model()
    prediction = model.predict_entities(MEETING, ["person", "location"])
    assert triples(prediction) == [("Bob", "person", 1.0), ("Ann", "person", 1.0), ("Paris", "location", 1.0)]
    assert model.predict([MEETING], ["person", "location"]) == [prediction]
    assert model.predict(iter([MEETING]), ["person", "location"]) == [prediction]  # type: ignore[arg-type]
    assert [sampling for _, sampling in generator.calls] == [SamplingConfig(max_new_tokens=1024)] * 3
    with pytest.raises(TypeError, match="one text"):
        model.predict_entities([MEETING], ["person"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="every text must be a string"):
        model.predict([MEETING, None], ["person"])  # type: ignore[list-item]
    # A model whose own sampling draws several answers still scores one, not their sum.
    model, generator = sampled_model(sampling=SamplingConfig(n=3, temperature=0.5))
    assert triples(model.predict_entities(MEETING, ["person"]))[0] == ("Bob", "person", 1.0)
    assert generator.calls[0][1].n == 1


def test_scores_are_the_share_of_samples_asked_in_one_generate_call() -> None:
    model, generator = sampled_model()
    meeting, blank, short = model.predict(
        [MEETING, "", SHORT], ["person", "location"], return_rationale=True, num_samples=4
    )
    # One call for both texts, 4 samples each, sampled at 0.7 because the model's decoding is greedy.
    assert generator.calls == [(2, SamplingConfig(n=4, temperature=0.7, max_new_tokens=1024))]
    # Union over the samples, in reading order (same span: label order), each scored by its share.
    assert triples(meeting) == [
        ("Bob", "person", 1.0),
        ("Ann", "person", 0.5),
        ("Paris", "location", 0.5),
        ("Paris", "person", 0.25),
    ]
    assert [(e.start, e.end) for e in meeting] == [(0, 3), (8, 11), (15, 20), (15, 20)]
    assert triples(short) == [("Ann", "person", 0.5)]
    assert blank == [] and blank.rationale == ""
    # Ungrounded mentions and problems of any sample, once each; the rationale of the first sample.
    assert meeting.ungrounded == [("Atlantis", "location")]
    assert {p.kind for p in meeting.problems} == {"ungrounded", "code_fence"}
    assert len(meeting.problems) == len(set(meeting.problems))
    assert meeting.rationale == "first"
    assert meeting.to_dict(MEETING)["entities"][1] == {
        "text": "Ann", "label": "person", "start": 8, "end": 11, "score": 0.5,
    }  # fmt: skip

    # A model that already samples keeps its temperature.
    model, generator = sampled_model(sampling=SamplingConfig(temperature=0.3))
    model.predict([MEETING], ["person", "location"], num_samples=4)
    assert (generator.calls[0][1].n, generator.calls[0][1].temperature) == (4, 0.3)


def test_threshold_drops_entities_scoring_below_it_and_bad_options_are_refused_before_generating() -> None:
    model, generator = sampled_model()
    half = model.predict_entities(MEETING, ["person", "location"], num_samples=4, threshold=0.5)
    assert triples(half) == [("Bob", "person", 1.0), ("Ann", "person", 0.5), ("Paris", "location", 0.5)]
    [everyone, only_ann] = model.predict(
        [MEETING, SHORT], ["person", "location"], num_samples=4, threshold=1.0
    )
    assert triples(everyone) == [("Bob", "person", 1.0)] and only_ann == []
    calls = len(generator.calls)
    for options, refusal in (
        ({"threshold": 1.5}, r"threshold must be in \[0, 1\], got 1.5"),
        ({"threshold": -0.1}, r"threshold must be in \[0, 1\], got -0.1"),
        ({"num_samples": 0}, "num_samples must be at least 1, got 0"),
    ):
        with pytest.raises(ValueError, match=refusal):
            model.predict([MEETING], ["person"], **options)
    assert len(generator.calls) == calls


# --- flat NER -----------------------------------------------------------------------------------------------

NESTED = "IL-2 gene expression in T cells ."


def test_flat_ner_keeps_the_higher_score_then_the_longer_span() -> None:
    # All three samples say protein "IL-2", two of them the DNA "IL-2 gene" around it.
    answers = [
        grouped(protein=["IL-2"], DNA=["IL-2 gene"], cell_type=["T cells"]),
        grouped(protein=["IL-2"], DNA=["IL-2 gene"]),
        grouped(protein=["IL-2"], cell_type=["T cells", "T"]),
    ]
    model = NERModel(Sampled(lambda _, sample: answers[sample]))
    labels = ["DNA", "protein", "cell_type"]
    nested = model.predict_entities(NESTED, labels, num_samples=3)
    assert triples(nested) == [
        ("IL-2 gene", "DNA", 2 / 3),
        ("IL-2", "protein", 1.0),
        ("T cells", "cell_type", 2 / 3),
        ("T", "cell_type", 1 / 3),
    ]
    flat = model.predict_entities(NESTED, labels, num_samples=3, flat_ner=True)
    assert triples(flat) == [("IL-2", "protein", 1.0), ("T cells", "cell_type", 2 / 3)]
    # One greedy answer: equal scores, so the longer span wins.
    greedy = model.predict_entities(NESTED, labels, flat_ner=True)
    assert triples(greedy) == [("IL-2 gene", "DNA", 1.0), ("T cells", "cell_type", 1.0)]


def test_flat_entities_ties_go_to_the_earlier_span_then_the_label_asked_first() -> None:
    crossing = [Entity("b c", "x", 2, 5), Entity("a b", "x", 0, 3), Entity("c d", "x", 4, 7)]
    assert flat_entities(crossing) == [Entity("a b", "x", 0, 3), Entity("c d", "x", 4, 7)]
    same_span = [Entity("a", "person", 0, 1), Entity("a", "location", 0, 1)]
    assert flat_entities(same_span, ["person", "location"]) == [Entity("a", "person", 0, 1)]
    assert flat_entities(same_span, ["location", "person"]) == [Entity("a", "location", 0, 1)]
    touching = [Entity("a", "x", 0, 1), Entity("b", "x", 1, 2)]
    assert flat_entities(touching) == touching


# --- long texts: windows ----------------------------------------------------------------------------------


def test_windows_prefer_a_sentence_end_in_the_second_half() -> None:
    text = "Aa bb. Cc dd ee ff"
    assert windows(text, 12) == [(0, 6), (7, 18)]
    assert windows("Aa bb Cc dd ee ff", 12) == [(0, 11), (12, 17)]  # no sentence end: the last space
    assert windows("  fits as it is  ", 17) == [(0, 17)]
    # An abbreviation's period ends no sentence: cutting there split "St. Louis", "U.S. Army".
    flew = "We flew from St. Louis to Boston today and had lunch."
    assert [flew[a:b] for a, b in windows(flew, 30)] == [
        "We flew from St. Louis to",
        "Boston today and had lunch.",
    ]
    met = "Alpha beta gamma delta epsilon then met Li. Wang Fang went home today ok"  # a name ends it
    assert [met[a:b] for a, b in windows(met, 51)] == [
        "Alpha beta gamma delta epsilon then met Li.",
        "Wang Fang went home today ok",
    ]
    army = "He served in the U.S. Army for years. Then he left."
    assert [army[a:b] for a, b in windows(army, 40)] == [
        "He served in the U.S. Army for years.",
        "Then he left.",
    ]
    assert windows("abcdefgh ij", 3) == [(0, 3), (3, 6), (6, 8), (9, 11)]  # a longer word is cut inside
    chinese = "我昨天从上海坐火车去北京出差。" * 3  # no spaces: cut after the full stops
    assert [chinese[a:b] for a, b in windows(chinese, 20)] == ["我昨天从上海坐火车去北京出差。"] * 3
    accents = "xxx" + "e\u0301" * 5  # a letter and its accent stay together
    assert [accents[a:b] for a, b in windows(accents, 4)] == [
        "xxx",
        "e\u0301e\u0301",
        "e\u0301e\u0301",
        "e\u0301",
    ]


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab.! \n\t。\u0301", max_size=120), size=st.integers(1, 30))
def test_windows_fit_have_no_edge_whitespace_and_cover_every_character(text: str, size: int) -> None:
    pieces = windows(text, size)
    if len(text) <= size:
        assert pieces == [(0, len(text))]
        return
    end = 0
    for start, stop in pieces:
        assert end <= start < stop <= start + size
        assert text[end:start].isspace() or end == start  # only whitespace between pieces
        assert not text[start].isspace() and not text[stop - 1].isspace()
        if stop < len(text) and not text[stop].isspace():  # after a full stop, or inside a word too long
            too_long = not any(c.isspace() for c in text[start:stop])
            # moved back to the letter whose marks a full-size cut would have split off
            before_marks = all(unicodedata.combining(c) for c in text[stop + 1 : start + size + 1])
            assert text[stop - 1] == "。" or (too_long and (stop - start == size or before_marks))
        end = stop
    assert not text[end:].strip()


NAMES = ("Bob", "Ann", "Carla", "Dmitri")
LONG = " ".join(f"{NAMES[i % 4]} walked to harbour {i} . Then {NAMES[(i + 1) % 4]} left" for i in range(700))


def names_in(sentence: str, sample: int) -> str:
    """Every name of the window in reading order (grouped_json: a name listed k times is its first k
    occurrences); sample 1 finds Bob alone. The rationale is the window's first word."""
    found = [word for word in sentence.split() if word in NAMES and (sample == 0 or word == "Bob")]
    return grouped(sentence.split()[0], person=found)


def test_a_text_too_long_for_the_prompt_is_asked_in_windows_and_offsets_map_back() -> None:
    generator = Sampled(names_in, reverse=True)
    model = NERModel(generator, max_prompt_chars=700)  # 540 without the text
    schema = Schema(("person",))
    assert len(LONG) > 20_000
    long, short = model.predict([LONG, "Ann ran ."], schema, return_rationale=True, num_samples=2)

    assert len(generator.calls) == 1 and generator.calls[0][0] == len(generator.prompts) > 100
    assert max(len(prompt) for prompt in generator.prompts) <= 700
    windows_asked = [prompt.rsplit("Sentence: ", 1)[1] for prompt in reversed(generator.prompts)]
    assert windows_asked[-1] == "Ann ran ."  # a text that fits is asked whole, as it is
    assert " ".join(windows_asked[:-1]).split() == LONG.split()  # every word once, in order
    assert all(re.search(r"\.$", window) for window in windows_asked[:-2])  # cut after sentence ends

    expected = [(m.start(), m.end(), m.group()) for m in re.finditer("|".join(NAMES), LONG)]
    assert [(e.start, e.end, e.text) for e in long] == expected
    assert all(LONG[e.start : e.end] == e.text for e in long)
    assert {e.score for e in long if e.text == "Bob"} == {1.0}  # both samples of its window
    assert {e.score for e in long if e.text != "Bob"} == {0.5}
    assert long.rationale == "\n\n".join(window.split()[0] for window in windows_asked[:-1])
    assert triples(short) == [("Ann", "person", 0.5)] and short.rationale == "Ann"

    with pytest.raises(ValueError, match="max_prompt_chars=100"):
        NERModel(generator, max_prompt_chars=100).predict(["Ann ran ."], schema)


class ByteCounted(Sampled):
    """`Sampled` with a byte-level tokenizer's count: a token per UTF-8 byte of the prompt, plus 10 for
    the chat template (3 tokens for a CJK character, 4 for an emoji)."""

    context_tokens = 1100

    def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int]:
        return [len(conversation[-1]["content"].encode("utf-8")) + 10 for conversation in conversations]


CITIES = "我昨天从上海坐火车去北京出差。然后🎉我们在广州见面"


def cities_in(sentence: str, sample: int) -> str:
    return grouped(location=[city for city in re.findall("上海|北京|广州", sentence)])


def test_a_window_whose_tokens_overflow_the_context_is_cut_again_until_it_fits() -> None:
    text = CITIES * 40
    generator = ByteCounted(cities_in)
    model = NERModel(generator, sampling=SamplingConfig(max_new_tokens=100))
    schema = Schema(("location",))
    assert model.max_prompt_chars == 1000  # the context left, counted as characters
    [prediction] = model.predict([text], schema)

    asked = [prompt.rsplit("Sentence: ", 1)[1] for prompt in generator.prompts]
    assert max(generator.prompt_tokens([[{"content": p}] for p in generator.prompts])) <= 1000
    assert "".join(asked) == text  # no space to drop between windows: every character once, in order
    assert all(window.endswith("。") for window in asked[:-1])  # cut after a full stop
    expected = [(m.start(), m.end()) for m in re.finditer("上海|北京|广州", text)]
    assert [(e.start, e.end) for e in prediction] == expected

    server = Sampled(cities_in)  # cannot count tokens: windows by characters only, which overflow
    server.context_tokens = 1100
    NERModel(server, sampling=SamplingConfig(max_new_tokens=100)).predict([text], schema)
    assert len(asked) > len(server.prompts) > 1
    assert max(generator.prompt_tokens([[{"content": p}] for p in server.prompts])) > 1000


def test_a_prompt_that_cannot_fit_even_one_character_is_refused_with_what_to_change() -> None:
    generator = ByteCounted(cities_in)
    sampling = SamplingConfig(max_new_tokens=100)
    [frame] = generator.prompt_tokens([NERModel(generator).conversation("", Schema(("location",)))])
    generator.context_tokens = 100 + frame + 2  # a CJK character is 3 tokens
    with pytest.raises(ValueError, match="one character of text is .* tokens.*max_new_tokens=100"):
        NERModel(generator, sampling=sampling).predict(["上海" * 400], ["location"])
    assert generator.prompts == []
    generator.context_tokens = 100 + frame - 5  # not even the prompt around the text fits
    with pytest.raises(ValueError, match="the prompt without the text is .* tokens"):
        NERModel(generator, sampling=sampling).predict(["上海"], ["location"])
    generator.context_tokens = 100 + frame + 3  # one character at a time fits
    [prediction] = NERModel(generator, sampling=sampling).predict(["上海" * 5], ["location"])
    assert len(generator.prompts) == 10 and list(prediction) == []  # no window holds a whole city


class WordPieceCounted(Sampled):
    """`Sampled` with a pretrained tokenizer's count on English: a token per 4 characters, plus 10."""

    context_tokens = 1000

    def prompt_tokens(self, conversations: Sequence[Conversation]) -> list[int]:
        return [len(conversation[-1]["content"]) // 4 + 10 for conversation in conversations]


def test_a_prompt_longer_in_characters_than_the_context_in_tokens_is_asked_when_its_tokens_fit() -> None:
    labels = ["person", *(f"organisation_of_the_kind_numbered_{number}" for number in range(24))]
    generator = WordPieceCounted(names_in)
    model = NERModel(generator, sampling=SamplingConfig(max_new_tokens=400))
    [frame] = generator.prompt_tokens([model.conversation("", model.schema(labels))])
    assert len(model.conversation("", model.schema(labels))[0]["content"]) > 600 > frame  # chars > tokens
    text = " ".join(f"Bob met Ann in harbour {i} ." for i in range(40))

    [prediction] = model.predict([text], labels)

    assert max(generator.prompt_tokens([[{"content": p}] for p in generator.prompts])) <= 600
    assert "Ann" in [entity.text for entity in prediction]


def refuse_harbour_7(sentence: str, sample: int) -> str:
    """`names_in`, except that the server refuses the window holding "harbour 7"."""
    if " harbour 7 " in sentence:
        raise ConversationFailed("HTTP 400: prompt too long")
    return names_in(sentence, sample)


def test_a_text_or_window_the_backend_gives_up_on_is_a_problem_and_the_others_go_on() -> None:
    generator = Sampled(refuse_harbour_7)
    model = NERModel(generator, max_prompt_chars=700)
    refused = "Bob walked to harbour 7 . Then Ann left"
    long, short, alone = model.predict([LONG, "Ann ran .", refused], ["person"], return_rationale=True)
    assert [p.kind for p in alone.problems] == ["generation_failed"] and alone == []
    assert "HTTP 400: prompt too long" in alone.problems[0].detail and alone.rationale == ""
    assert triples(short) == [("Ann", "person", 1.0)] and short.problems == []
    # The long text loses the names of its one refused window and keeps all the others.
    [window] = [
        p.rsplit("Sentence: ", 1)[1]
        for p in generator.prompts
        if " harbour 7 " in p and p != generator.prompts[-1]
    ]
    start = LONG.index(window)
    expected = [
        (m.start(), m.end())
        for m in re.finditer("|".join(NAMES), LONG)
        if not start <= m.start() < start + len(window)
    ]
    assert [(e.start, e.end) for e in long] == expected and len(expected) < len(LONG.split()) / 4
    assert {p.kind for p in long.problems} == {"generation_failed"}


# --- spaCy ----------------------------------------------------------------------------------------------


def test_a_decomposed_text_gets_the_entities_a_composing_tokenizer_writes_composed() -> None:
    """Qwen's tokenizer composes its input (NFC): "e" + U+0301 in the text comes back as "é"."""
    text = unicodedata.normalize("NFD", "José met Zoë in Köln and 서울 .")
    answer = unicodedata.normalize("NFC", grouped(person=["José", "Zoë"], location=["Köln", "서울"]))
    prediction = NERModel(from_table({text: answer})).predict_entities(text, ["person", "location"])
    assert [unicodedata.normalize("NFC", e.text) for e in prediction] == ["José", "Zoë", "Köln", "서울"]
    assert all(text[e.start : e.end] == e.text for e in prediction) and not prediction.ungrounded


def test_a_lone_surrogate_is_asked_as_a_replacement_character_and_offsets_slice_the_text() -> None:
    text = "Ann \ud800 met Bob ."  # what json.loads('"\\ud800"') or surrogateescape decoding gives
    generator = from_table({"Ann \ufffd met Bob .": grouped(person=["Ann", "Bob"])})
    [prediction] = NERModel(generator).predict([text], ["person"])
    assert [(e.text, e.start) for e in prediction] == [("Ann", 0), ("Bob", 10)]
    assert all(prompt.encode("utf-8") for prompt in generator.prompts)  # a tokenizer takes them


def test_labels_are_described_as_in_training_unless_described_anew(caplog: pytest.LogCaptureFixture) -> None:
    generator = from_table({"Ann uses Python .": grouped(person=["Ann"])})
    trained = {"person": "a human being", "location": "a place"}
    model = NERModel(generator, PromptArguments(descriptions=True), descriptions=trained)
    model.predict(["Ann uses Python ."], ["person", "language"])
    model.predict(["Ann uses Python ."], ["person", "language"], {"language": "a programming language"})
    model.predict(["Ann uses Python ."], Schema(("person",), {"person": "someone"}))
    first, second, third = generator.prompts
    assert "- person: a human being\n- language\n" in first and "a place" not in first
    assert "- person: a human being\n- language: a programming language\n" in second
    assert "- person: someone\n" in third
    # A model trained without descriptions is asked without them, and says so once.
    plain = NERModel(generator, PromptArguments(descriptions=False), descriptions=trained)
    with caplog.at_level(logging.WARNING, logger="reasoningner.predict"):
        for _ in range(2):
            plain.predict(["Ann uses Python ."], ["person"], {"person": "someone"})
    assert "someone" not in generator.prompts[-1] and "a human being" not in generator.prompts[-1]
    assert [r.getMessage() for r in caplog.records] == [
        "label descriptions given, but this model was trained without them in its prompts "
        "(descriptions: false): they are left out, as in training"
    ]


def test_the_trained_labels_are_asked_in_their_training_order_as_evaluation_asks_them() -> None:
    """What `predict` returns is what evaluation scores: both ask `PromptContract.asked`."""
    generator = from_table({"Ann is in Rome .": grouped(person=["Ann"], location=["Rome"])})
    prompt = PromptArguments(descriptions=True)
    trained = {"person": "a human being", "location": "a place"}
    model = NERModel(generator, prompt, labels=["person", "location"], descriptions=trained)
    [prediction] = model.predict(["Ann is in Rome ."], ["location", "person"])
    assert [e.label for e in prediction] == ["person", "location"]
    assert "- person: a human being\n- location: a place\n" in generator.prompts[0]
    contract = PromptContract(prompt, ["person", "location"], descriptions=trained)
    for labels in (["location", "person"], ["location", "person", "date"], ["location"]):
        assert model.schema(labels) == contract.asked(Schema(tuple(labels)))


def test_a_model_trained_on_prompts_worded_otherwise_is_asked_with_a_warning(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The wording is code, not a setting: a model trained before it changed would be asked the new way
    unnoticed (stage 1 refuses such records; a model only warns, being usable still)."""
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    prompt = PromptArguments(compact_prompt=False)
    generation = GenerationArguments(
        backend="transformers", model_name_or_path=str(model), backend_options={"device": "cpu"}
    )
    for recorded, warned in ((wording(prompt), False), ("0123456789abcdef", True), ("", False)):
        PromptContract(prompt, ["person"], wording=recorded).save(model)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="reasoningner.prompts"):
            NERModel.from_generation(generation).close()
        assert ("trained on prompts worded otherwise" in caplog.text) is warned, recorded
    assert wording(prompt) != wording(replace(prompt, compact_prompt=True))


def test_to_spacy_sets_doc_ents_and_refuses_overlapping_entities() -> None:
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    answers = [grouped(protein=["IL-2"], DNA=["IL-2 gene"]), grouped(protein=["IL-2"])]
    model = NERModel(Sampled(lambda _, sample: answers[sample]))
    nested = model.predict_entities(NESTED, ["DNA", "protein"], num_samples=2)
    with pytest.raises(ValueError, match="overlap in the text: predict with flat_ner=True"):
        nested.to_spacy(nlp(NESTED))
    # A span group holds them nested, the doc's entities left as they were.
    grouped_doc = nested.to_spacy(nlp(NESTED), span_key="ner")
    assert [(span.text, span.label_) for span in grouped_doc.spans["ner"]] == [
        ("IL-2", "protein"),
        ("IL-2 gene", "DNA"),
    ]
    assert grouped_doc.ents == ()
    flat = model.predict_entities(NESTED, ["DNA", "protein"], num_samples=2, flat_ner=True)
    doc = flat.to_spacy(nlp(NESTED))
    assert [(span.text, span.label_, span.start_char, span.end_char) for span in doc.ents] == [
        ("IL-2", "protein", 0, 4)
    ]
    # "expand": an entity inside a token becomes the whole token.
    text = "Paris2024 games"
    doc = Prediction([Entity("Paris", "location", 0, 5)]).to_spacy(nlp(text))
    assert [(span.text, span.label_) for span in doc.ents] == [("Paris2024", "location")]
    same_token = Prediction([Entity("Paris", "location", 0, 5), Entity("2024", "date", 5, 9)])
    with pytest.raises(ValueError, match="once expanded to spaCy tokens"):
        same_token.to_spacy(nlp(text))
    with pytest.raises(ValueError, match="not the predicted text"):
        Prediction([Entity("Paris", "location", 0, 5)]).to_spacy(nlp("Rome games"))


# --- the command ------------------------------------------------------------------------------------------


@pytest.fixture()
def scripted_cli(monkeypatch: pytest.MonkeyPatch) -> tuple[Sampled, dict]:
    """`reasoningner predict` with `Sampled` answering `SAMPLES` in place of the loaded model; the dict
    gets the options `from_pretrained` was called with."""
    generator = Sampled(lambda sentence, sample: SAMPLES.get(sentence, [grouped(person=["Ann"])] * 4)[sample])
    loaded: dict = {}

    def from_pretrained(path, backend, prompt, **options) -> NERModel:
        loaded.update(options)
        return NERModel(generator, prompt, max_prompt_chars=options["max_prompt_chars"])

    monkeypatch.setattr(NERModel, "from_pretrained", from_pretrained)
    return generator, loaded


def test_predict_cli_scores_thresholds_and_flattens(
    tmp_path: Path, scripted_cli: tuple[Sampled, dict], capsys: pytest.CaptureFixture
) -> None:
    generator, loaded = scripted_cli
    source = tmp_path / "texts.txt"
    source.write_text(f"{MEETING}\n\n{SHORT}\n", encoding="utf-8")
    argv = ["predict", "--model", str(tmp_path), "--labels", "person,location", str(source)]
    assert main([*argv, "--num-samples", "4", "--flat-ner", "--max-prompt-chars", "900"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == [MEETING, "", SHORT]
    # Paris as a person (1 sample of 4) loses to Paris as a location (2 of 4).
    assert [(e["text"], e["label"], e["score"]) for e in records[0]["entities"]] == [
        ("Bob", "person", 1.0), ("Ann", "person", 0.5), ("Paris", "location", 0.5),
    ]  # fmt: skip
    assert records[1]["entities"] == [] and records[2]["entities"][0]["score"] == 0.5
    assert generator.calls == [(2, SamplingConfig(n=4, temperature=0.7, max_new_tokens=1024))]
    assert loaded["max_prompt_chars"] == 900

    assert main([*argv, "--num-samples", "4", "--threshold", "0.75"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[e["text"] for e in r["entities"]] for r in records] == [["Bob"], [], []]

    assert main(argv) == 0  # defaults: one greedy answer, nested kept, all scores 1.0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["score"] for e in records[0]["entities"]} == {1.0}
    calls = len(generator.calls)
    assert main([*argv, "--threshold", "2"]) == 2
    assert "threshold must be in [0, 1]" in capsys.readouterr().err
    assert len(generator.calls) == calls


def test_predict_cli_replaces_bytes_that_are_not_utf8(
    tmp_path: Path, scripted_cli: tuple[Sampled, dict], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    generator, _ = scripted_cli
    raw = b"Ann \xff saw Ann .\nAnn \xc3( ran .\nAnn .\n"
    # A C-locale stdin: bad bytes would come as lone surrogates, which a tokenizer refuses (TypeError).
    stdin = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    source = tmp_path / "texts.txt"
    source.write_bytes(raw)
    for path in ("-", str(source)):
        assert main(["predict", "--model", str(tmp_path), "--labels", "person", path]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["text"] for r in records] == ["Ann \ufffd saw Ann .", "Ann \ufffd( ran .", "Ann ."]
        for record in records:
            assert record["entities"][0] == {
                "text": "Ann",
                "label": "person",
                "start": 0,
                "end": 3,
                "score": 1.0,
            }
    assert all(prompt.encode("utf-8") for prompt in generator.prompts)  # no lone surrogate was asked
    assert not stdin.closed


def test_predict_cli_keeps_a_carriage_return_inside_a_line(
    tmp_path: Path, scripted_cli: tuple[Sampled, dict], capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "texts.txt"
    source.write_bytes(b"Ann met\rBob .\r\nAnn .\n")  # a CR inside the first line; CRLF ends it
    assert main(["predict", "--model", str(tmp_path), "--labels", "person", str(source)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["Ann met\rBob .", "Ann ."]


def test_predict_cli_with_the_tiny_model_windows_a_long_line_and_samples(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """The issue's case on the real backend (context 2,048): a 5,000-word line no longer ends the run,
    and two samples per window come from one `generate` with `num_return_sequences` (window offsets are
    checked with scripted answers above: the untrained model names no entity)."""
    long = " ".join(["EU rejects German call ."] * 1000)
    source = tmp_path / "texts.txt"
    source.write_text(f"{long}\nPeter met Peter .\n", encoding="utf-8")
    argv = ["predict", "--model", str(tiny_model_dir), "--labels", "person,location", "--num-samples", "2"]
    assert main([*argv, "--max-new-tokens", "8", str(source)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["text"] for record in records] == [long, "Peter met Peter ."]


def test_the_prompt_bound_is_the_context_left_after_the_answer_when_the_backend_knows_it() -> None:
    from reasoningner.predict import MAX_PROMPT_CHARS

    generator = from_table({})
    assert NERModel(generator).max_prompt_chars == MAX_PROMPT_CHARS  # a server: context unknown
    generator.context_tokens = 2048
    assert NERModel(generator, sampling=SamplingConfig(max_new_tokens=512)).max_prompt_chars == 1536
    assert NERModel(generator, max_prompt_chars=900).max_prompt_chars == 900


def test_the_tiny_model_s_byte_level_tokens_cut_a_chinese_text_into_windows_that_fit(
    tiny_model_dir: Path,
) -> None:
    """The tiny tokenizer never saw Chinese: 3 byte tokens a character, so windows of the characters the
    context leaves would overflow it; counted, each prompt fits and the offsets still map back."""
    from reasoningner.generation import TransformersGenerator

    with TransformersGenerator(tiny_model_dir) as generator:
        model = NERModel(generator, sampling=SamplingConfig(max_new_tokens=1400))
        schema = Schema(("location",))
        text = CITIES * 30
        by_characters = windows(text, model._window_size(schema))
        counts = generator.prompt_tokens([model.conversation(text[a:b], schema) for a, b in by_characters])
        assert max(counts) > 2048 - 1400  # what characters alone would ask
        pieces = model.fit_to_context([text], [(0, a, b) for a, b in by_characters], schema)
        fitted = generator.prompt_tokens([model.conversation(text[a:b], schema) for _, a, b in pieces])
        assert max(fitted) <= 2048 - 1400 and len(pieces) > len(by_characters)
        assert "".join(text[a:b] for _, a, b in pieces) == text
        # predict asks generate windows that each fit (the backend would not refuse one that did not).
        asked: list[Conversation] = []
        generate_outcomes = generator.generate_outcomes

        def recorded(conversations, sampling, *args):
            asked.extend(conversations)
            return generate_outcomes(conversations, sampling, *args)

        generator.generate_outcomes = recorded  # type: ignore[method-assign]
        NERModel(generator, sampling=SamplingConfig(max_new_tokens=1400)).predict([text[:300]], schema)
        assert len(asked) > 1 and max(generator.prompt_tokens(asked)) <= 2048 - 1400


def test_the_transformers_backend_knows_its_context(tiny_model_dir: Path) -> None:
    from reasoningner.generation import TransformersGenerator

    with TransformersGenerator(tiny_model_dir) as generator:
        assert generator.context_tokens == 2048  # the tiny model's max_position_embeddings
