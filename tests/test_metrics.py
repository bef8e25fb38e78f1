"""Tests of `reasoningner.metrics`: agreement with seqeval on real flat data, hand-worked nested and
edge cases, the difference between the two match modes, the macro average and the markdown table."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from reasoningner.metrics import Counts, Scorer, f1_difference, match_counts, multiset_counts
from reasoningner.spans import Example, Schema, Span, SpanError
from tests.scripts import SHARED

SHIPPED = Path(__file__).parents[1] / "data"
FLAT_FILES = {
    "conll2003": SHIPPED / "conll2003" / "dev-slice.txt",
    "crossner_ai": SHIPPED / "crossner" / "ai-dev-slice.txt",
} | {
    name: path
    for name, path in {
        "conll2003_full": SHARED / "conll2003" / "dev.txt",
        "crossner_ai_full": SHARED / "crossner" / "ai" / "dev.txt",
    }.items()
    if path.exists()
}

TokenSpan = tuple[int, int, str]  # [start token, end token), label


# --- seqeval cross-check on real CoNLL BIO data -------------------------------------------------


@lru_cache
def _read_bio(path: Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of a `token<TAB>tag` file as (tokens, tags); private so as not to depend on readers."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if line.strip():
            token, tag = line.split("\t")
            tokens.append(token)
            tags.append(tag)
        elif tokens:
            sentences.append((tokens, tags))
            tokens, tags = [], []
    return sentences


def _bio_to_token_spans(tags: list[str]) -> list[TokenSpan]:
    """Strict IOB2 decoding (these files are valid IOB2, so an I- without its B- is a bug here)."""
    spans: list[TokenSpan] = []
    for i, tag in enumerate(tags):
        if tag.startswith("B-"):
            spans.append((i, i + 1, tag[2:]))
        elif tag.startswith("I-"):
            start, end, label = spans[-1]
            assert end == i and label == tag[2:], f"invalid IOB2 at token {i}: {tags}"
            spans[-1] = (start, i + 1, label)
        else:
            assert tag == "O", tag
    return spans


def _token_spans_to_bio(spans: list[TokenSpan], n_tokens: int) -> list[str]:
    tags = ["O"] * n_tokens
    for start, end, label in spans:
        tags[start:end] = [f"B-{label}"] + [f"I-{label}"] * (end - start - 1)
    return tags


def _char_spans(tokens: list[str], spans: list[TokenSpan]) -> tuple[str, list[Span]]:
    """The sentence text (tokens joined by spaces) and the token spans as character spans of it."""
    starts = []
    offset = 0
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    text = " ".join(tokens)
    return text, [Span(starts[s], starts[e - 1] + len(tokens[e - 1]), label) for s, e, label in spans]


def _corrupt(gold: list[TokenSpan], n_tokens: int, labels: list[str], rng: random.Random) -> list[TokenSpan]:
    """Seeded prediction errors: dropped entities, wrong labels, shifted boundaries, spurious
    entities (some with a label outside the schema); kept flat so that BIO can express it."""
    out: list[TokenSpan] = []
    for start, end, label in gold:
        r = rng.random()
        if r < 0.15:
            continue
        if r < 0.30:
            label = rng.choice([other for other in labels if other != label])
        elif r < 0.45:
            delta_start, delta_end = rng.choice([(-1, 0), (1, 0), (0, -1), (0, 1)])
            start, end = max(0, start + delta_start), min(n_tokens, end + delta_end)
            if start >= end:
                continue
        out.append((start, end, label))
    if rng.random() < 0.3:
        start = rng.randrange(n_tokens)
        out.append((start, min(n_tokens, start + rng.randint(1, 3)), rng.choice([*labels, "spurious"])))
    flat: list[TokenSpan] = []
    for span in sorted(out):
        if not flat or span[0] >= flat[-1][1]:
            flat.append(span)
    return flat


def _score_flat(name: str, scorer: Scorer, seed: int = 13) -> tuple[list[list[str]], list[list[str]]]:
    """Add a corrupted copy of a flat dataset to `scorer`; returns (gold, predicted) BIO."""
    sentences = _read_bio(FLAT_FILES[name])
    labels = sorted({tag[2:] for _, tags in sentences for tag in tags if tag != "O"})
    schema = Schema(tuple(labels))
    rng = random.Random(seed)
    y_true, y_pred = [], []
    for tokens, tags in sentences:
        gold_token_spans = _bio_to_token_spans(tags)
        assert _token_spans_to_bio(gold_token_spans, len(tokens)) == tags
        predicted_token_spans = _corrupt(gold_token_spans, len(tokens), labels, rng)
        text, gold_spans = _char_spans(tokens, gold_token_spans)
        _, predicted_spans = _char_spans(tokens, predicted_token_spans)
        scorer.add(Example(text, tuple(gold_spans), schema), predicted_spans, dataset=name)
        y_true.append(tags)
        y_pred.append(_token_spans_to_bio(predicted_token_spans, len(tokens)))
    return y_true, y_pred


@pytest.mark.parametrize("name", sorted(FLAT_FILES))
def test_exact_mode_equals_seqeval_on_real_flat_data(name: str) -> None:
    scorer = Scorer("exact")
    y_true, y_pred = _score_flat(name, scorer)
    scores = scorer.report().datasets[name]
    expected = classification_report(y_true, y_pred, output_dict=True, zero_division=0)

    # The corruption must exercise every kind of error, including a label outside the schema.
    assert scores.micro.tp and scores.micro.fp and scores.micro.fn
    assert scores.per_label["spurious"].fp > 0

    micro = expected.pop("micro avg")
    assert scores.micro.precision == pytest.approx(micro["precision"], abs=1e-9)
    assert scores.micro.recall == pytest.approx(micro["recall"], abs=1e-9)
    assert scores.micro.f1 == pytest.approx(micro["f1-score"], abs=1e-9)
    assert scores.micro.tp + scores.micro.fn == micro["support"]
    assert scores.micro.precision == pytest.approx(precision_score(y_true, y_pred, zero_division=0), abs=1e-9)
    assert scores.micro.recall == pytest.approx(recall_score(y_true, y_pred, zero_division=0), abs=1e-9)
    assert scores.micro.f1 == pytest.approx(f1_score(y_true, y_pred, zero_division=0), abs=1e-9)

    del expected["macro avg"], expected["weighted avg"]
    assert sorted(scores.per_label) == sorted(expected)
    for label, counts in scores.per_label.items():
        assert counts.precision == pytest.approx(expected[label]["precision"], abs=1e-9), label
        assert counts.recall == pytest.approx(expected[label]["recall"], abs=1e-9), label
        assert counts.f1 == pytest.approx(expected[label]["f1-score"], abs=1e-9), label
        assert counts.tp + counts.fn == expected[label]["support"], label


def test_average_over_real_datasets_is_mean_of_seqeval_f1() -> None:
    scorer = Scorer("exact")
    f1s = [f1_score(*_score_flat(name, scorer), zero_division=0) for name in sorted(FLAT_FILES)]
    report = scorer.report()
    assert list(report.datasets) == sorted(FLAT_FILES)
    assert report.average.f1 == pytest.approx(sum(f1s) / len(f1s), abs=1e-9)


# --- hand-worked cases ---------------------------------------------------------------------------

GENIA = Schema(("DNA", "protein"))
NEWS = Schema(("person", "location"))


def _micro(counts: dict[str, Counts]) -> Counts:
    return sum(counts.values(), Counts())


def _example(text: str, spans: list[Span], schema: Schema = NEWS) -> Example:
    return Example(text, tuple(spans), schema)


def test_nested_spans() -> None:
    # [[IL-2 | protein] gene | DNA] expression
    gold = _example("IL-2 gene expression", [Span(0, 9, "DNA"), Span(0, 4, "protein")], GENIA)
    assert gold.is_nested

    # Inner span right, outer span predicted with the inner label:
    #   (0,4,protein) tp; (0,9,protein) fp of protein; (0,9,DNA) fn of DNA.
    #   micro tp=1 fp=1 fn=1 -> P = 1/2, R = 1/2, F1 = 1/2.
    for mode in ("exact", "text"):
        counts = match_counts(gold, [Span(0, 4, "protein"), Span(0, 9, "protein")], mode=mode)
        assert counts == {"DNA": Counts(0, 0, 1), "protein": Counts(1, 1, 0)}
        micro = _micro(counts)
        assert (micro.precision, micro.recall, micro.f1) == (0.5, 0.5, 0.5)

    # Only the outer span: DNA tp=1, protein fn=1 -> P = 1/1, R = 1/2, F1 = 2*1*0.5/1.5 = 2/3.
    micro = _micro(match_counts(gold, [Span(0, 9, "DNA")]))
    assert micro == Counts(1, 0, 1)
    assert (micro.precision, micro.recall, micro.f1) == (1.0, 0.5, pytest.approx(2 / 3))


def test_repeated_mention_one_predicted() -> None:
    text = "Paris , France and Paris , Texas"
    gold = _example(text, [Span(0, 5, "location"), Span(19, 24, "location")])
    assert [t for t, _ in gold.span_texts()] == ["Paris", "Paris"]
    predicted = [Span(0, 5, "location")]

    # exact: two gold spans, one found: tp=1 fn=1 -> P = 1, R = 1/2, F1 = 2/3.
    exact = match_counts(gold, predicted, mode="exact")
    assert exact == {"location": Counts(1, 0, 1)}
    assert exact["location"].f1 == pytest.approx(2 / 3)
    # text: both gold mentions are the one key ("paris", location), which is predicted: tp=1 -> 1.0.
    text_counts = match_counts(gold, predicted, mode="text")
    assert text_counts == {"location": Counts(1, 0, 0)}
    assert text_counts["location"].f1 == 1.0


def test_same_span_two_labels() -> None:
    # Predicted twice with two labels, gold has one: person tp=1, location fp=1
    #   -> P = 1/2, R = 1/1, F1 = 2*0.5*1/1.5 = 2/3.
    gold = _example("Jordan spoke", [Span(0, 6, "person")])
    counts = match_counts(gold, [Span(0, 6, "person"), Span(0, 6, "location")])
    assert counts == {"location": Counts(0, 1, 0), "person": Counts(1, 0, 0)}
    assert _micro(counts).f1 == pytest.approx(2 / 3)

    # Gold has both labels on one span, one predicted: person tp=1, location fn=1 -> P = 1, R = 1/2.
    gold = _example("Jordan spoke", [Span(0, 6, "person"), Span(0, 6, "location")])
    micro = _micro(match_counts(gold, [Span(0, 6, "person")]))
    assert micro == Counts(1, 0, 1)
    assert (micro.precision, micro.recall) == (1.0, 0.5)


def test_wrong_and_unknown_labels_count_against_the_predicted_label() -> None:
    # Right span, label outside the schema: fp of "deity", fn of "person" -> all scores 0.
    gold = _example("Jordan spoke", [Span(0, 6, "person")])
    counts = match_counts(gold, [Span(0, 6, "deity")])
    assert counts == {"deity": Counts(0, 1, 0), "person": Counts(0, 0, 1)}
    assert (_micro(counts).precision, _micro(counts).recall, _micro(counts).f1) == (0.0, 0.0, 0.0)

    # Right span, wrong schema label: one fp of location and one fn of person (seqeval does the same).
    assert match_counts(gold, [Span(0, 6, "location")]) == {
        "location": Counts(0, 1, 0),
        "person": Counts(0, 0, 1),
    }


def test_empty_gold() -> None:
    gold = _example("nothing to see here", [])
    # Nothing predicted, nothing to find: no counts at all; the ratios of zero counts are 0 by convention.
    for mode in ("exact", "text"):
        assert match_counts(gold, [], mode=mode) == {}
    assert (Counts().precision, Counts().recall, Counts().f1) == (0.0, 0.0, 0.0)

    # Two predictions, no gold: fp=2 -> P = 0/2 = 0, R undefined -> 0, F1 = 0.
    counts = match_counts(gold, [Span(0, 7, "person")], ungrounded=[("Paris", "location")])
    assert counts == {"location": Counts(0, 1, 0), "person": Counts(0, 1, 0)}
    assert _micro(counts).f1 == 0.0


def test_ungrounded_predictions() -> None:
    gold = _example("Barack Obama spoke", [Span(0, 12, "person")])
    ungrounded = [("barack   OBAMA", "person"), ("Michelle Obama", "person")]

    # text: ("barack obama", person) matches the gold key, ("michelle obama", person) does not:
    #   tp=1 fp=1 fn=0 -> P = 1/2, R = 1, F1 = 2/3.
    counts = match_counts(gold, [], ungrounded, mode="text")
    assert counts == {"person": Counts(1, 1, 0)}
    assert counts["person"].f1 == pytest.approx(2 / 3)

    # exact: without offsets nothing matches: fp=2 fn=1 -> 0.
    assert match_counts(gold, [], ungrounded, mode="exact") == {"person": Counts(0, 2, 1)}

    # A grounded prediction and the same mention ungrounded are one key in text mode.
    assert match_counts(gold, [Span(0, 12, "person")], [("Barack Obama", "person")], mode="text") == {
        "person": Counts(1, 0, 0)
    }


def test_duplicate_predictions_count_once() -> None:
    gold = _example("Barack Obama spoke", [Span(0, 12, "person")])
    predicted = [Span(0, 12, "person"), Span(0, 12, "person"), Span(7, 12, "person"), Span(7, 12, "person")]
    assert match_counts(gold, predicted) == {"person": Counts(1, 1, 0)}


def test_invalid_predicted_span_and_mode_are_errors() -> None:
    gold = _example("Barack Obama spoke", [Span(0, 12, "person")])
    with pytest.raises(SpanError):
        match_counts(gold, [Span(0, 40, "person")])
    with pytest.raises(ValueError, match="match mode"):
        match_counts(gold, [], mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="match mode"):
        Scorer("fuzzy")  # type: ignore[arg-type]


# --- where the modes differ ----------------------------------------------------------------------


def test_wrong_occurrence_counts_in_text_mode_only() -> None:
    # "Jordan" the person at 0:6 and "Jordan" the country at 11:17; the prediction swaps them.
    gold = _example("Jordan met Jordan", [Span(0, 6, "person"), Span(11, 17, "location")])
    predicted = [Span(0, 6, "location"), Span(11, 17, "person")]
    # exact: both predictions are at the wrong offsets: tp=0 fp=2 fn=2 -> F1 = 0.
    assert _micro(match_counts(gold, predicted, mode="exact")) == Counts(0, 2, 2)
    # text: the (text, label) pairs are the same sets: tp=2 -> F1 = 1.
    assert _micro(match_counts(gold, predicted, mode="text")) == Counts(2, 0, 0)


def test_case_whitespace_and_punctuation_normalized_in_text_mode() -> None:
    # A tokenized corpus writes "St . Louis"; the model writes "st. louis" and "new york", which
    # cannot be grounded in the text. normalize_mention maps both sides to the same key.
    gold = _example("From St . Louis to New  York .", [Span(5, 15, "location"), Span(19, 28, "location")])
    assert [t for t, _ in gold.span_texts()] == ["St . Louis", "New  York"]
    ungrounded = [("st. louis", "location"), ("new york", "location")]
    assert match_counts(gold, [], ungrounded, mode="text") == {"location": Counts(2, 0, 0)}
    assert match_counts(gold, [], ungrounded, mode="exact") == {"location": Counts(0, 2, 2)}


# --- scorer, macro average, report ---------------------------------------------------------------


def _two_dataset_scorer() -> Scorer:
    scorer = Scorer("exact")
    # "ai", one example: tp=1 -> P = R = F1 = 1.
    ai = _example("Barack Obama spoke", [Span(0, 12, "person")])
    scorer.add(ai, [Span(0, 12, "person")], dataset="ai")
    # "music", three examples: tp=1 fp=1 fn=3 in total -> P = 1/2, R = 1/4, F1 = 2*(1/8)/(3/4) = 1/3.
    music = _example("Paris , France and Paris , Texas", [Span(0, 5, "location"), Span(19, 24, "location")])
    scorer.add(music, [Span(0, 5, "location"), Span(8, 14, "location")], dataset="music")  # tp 1, fp 1, fn 1
    scorer.add(music, [], dataset="music")  # fn 2
    scorer.add(_example("nothing", []), [], dataset="music")  # nothing
    return scorer


def test_macro_average_is_mean_of_dataset_scores_not_pooled_micro() -> None:
    report = _two_dataset_scorer().report()
    assert report.datasets["ai"].micro == Counts(1, 0, 0)
    assert report.datasets["music"].micro == Counts(1, 1, 3)
    assert report.datasets["music"].examples == 3
    assert report.datasets["music"].micro.f1 == pytest.approx(1 / 3)
    # Avg = mean over the two datasets: P = (1 + 1/2)/2 = 3/4, R = (1 + 1/4)/2 = 5/8, F1 = (1 + 1/3)/2 = 2/3.
    assert report.average.precision == pytest.approx(3 / 4)
    assert report.average.recall == pytest.approx(5 / 8)
    assert report.average.f1 == pytest.approx(2 / 3)
    # Pooling would give tp=2 fp=1 fn=3: P = 2/3, R = 2/5, F1 = 1/2; the average is not that.
    assert sum((s.micro for s in report.datasets.values()), Counts()).f1 == pytest.approx(1 / 2)


def test_report_to_markdown_and_dict() -> None:
    report = _two_dataset_scorer().report()
    assert report.to_markdown() == (
        "| Dataset | P | R | F1 |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| ai | 100.00 | 100.00 | 100.00 |\n"
        "| music | 50.00 | 25.00 | 33.33 |\n"
        "| Avg | 75.00 | 62.50 | 66.67 |\n"
    )
    as_dict = report.to_dict()
    assert as_dict["mode"] == "exact"
    assert as_dict["datasets"]["music"]["micro"] == {
        "tp": 1,
        "fp": 1,
        "fn": 3,
        "precision": 0.5,
        "recall": 0.25,
        "f1": pytest.approx(1 / 3),
    }
    per_label = as_dict["datasets"]["music"]["per_label"]
    assert list(per_label) == sorted(NEWS.labels)  # every label of the schema, zeros included
    assert per_label["location"]["tp"] == 1 and per_label["person"] == Counts().to_dict()
    assert as_dict["average"]["f1"] == pytest.approx(2 / 3)


def test_scorer_add_returns_example_counts_and_empty_report_is_an_error() -> None:
    scorer = Scorer("text")
    with pytest.raises(ValueError, match="no examples"):
        scorer.report()
    gold = _example("Paris , France and Paris , Texas", [Span(0, 5, "location"), Span(19, 24, "location")])
    assert scorer.add(gold, [Span(19, 24, "location")]) == {"location": Counts(1, 0, 0)}
    assert list(scorer.report().datasets) == ["default"]


def test_multiset_counts_count_duplicates_as_llms4ner_does() -> None:
    gold = [("PER", 0, 3), ("PER", 0, 3), ("LOC", 8, 12)]
    predicted = [("PER", 0, 3), ("PER", 0, 3), ("PER", 0, 3), ("ORG", 8, 12)]
    assert multiset_counts(gold, predicted, label_at=0) == {
        "LOC": Counts(0, 0, 1),
        "ORG": Counts(0, 1, 0),
        "PER": Counts(2, 1, 0),
    }
    scorer = Scorer("exact")
    scorer.add_counts(multiset_counts(gold, predicted, label_at=0), "d")
    scorer.add_counts(multiset_counts([("x", "LOC")], [], label_at=1), "d")
    report = scorer.report().datasets["d"]
    assert (report.examples, report.micro) == (2, Counts(2, 2, 2))


def test_f1_difference_by_hand_and_its_bootstrap_interval():
    # Micro F1 2/6 -> 4/6. Resampled, the two sentences give: both the first +0.5, both the second 0,
    # one of each +1/3 (half the draws): the 95% interval runs from 0 to +0.5.
    before, after = [Counts(1, 1, 1), Counts(0, 0, 2)], [Counts(2, 0, 0), Counts(0, 0, 2)]
    gain, low, high = f1_difference(before, after)
    assert gain == pytest.approx(1 / 3)
    assert (low, high) == (pytest.approx(0.0), pytest.approx(0.5))
    assert f1_difference(before, before) == (0.0, 0.0, 0.0)


def test_f1_difference_tells_a_gain_on_every_sentence_from_one_on_a_single_sentence():
    draw = random.Random(0)
    before = [Counts(draw.randint(0, 2), draw.randint(0, 2), draw.randint(1, 3)) for _ in range(300)]
    everywhere = [Counts(c.tp + 1, c.fp, c.fn - 1) for c in before]  # one more entity found in each
    one = [Counts(c.tp + 1, c.fp, c.fn - 1) if i == 0 else c for i, c in enumerate(before)]
    assert f1_difference(before, everywhere)[1] > 0
    gain, low, high = f1_difference(before, one)
    assert gain > 0 and low <= 0 < high


def test_f1_difference_needs_the_same_sentences_twice():
    with pytest.raises(ValueError, match="same sentences"):
        f1_difference([Counts(1, 0, 0)], [])
    with pytest.raises(ValueError, match="same sentences"):
        f1_difference([], [])
