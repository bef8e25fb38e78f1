"""Rationales: the grammar of entity decisions, the consistency score, the gold-template rationale.

A rationale can only be checked against its answer if its decisions can be read off. We ask every
rationale (teacher prompt, gold template, and so the student after SFT) to state each decision as
an *assertion*:

    "Peter Blackburn" is a person
    "EU" is an organisation
    "lamb" is not an entity

An assertion is a double-quoted text (straight or curly quotes; no space after the opening
quote, no newline inside, at most 200 characters; a text holding a straight quote, such as
`Roberto " Hands of Stone " Duran`, is written in curly ones, one holding curly ones in straight
ones, and a line break inside an entity is stated as a space), then a linking phrase
(`is a`, `is an`, `is the`, `is`, `->`, `→`, `:`, `=`, `as`, `labelled`, `labeled`), then a label
of the schema, matched case-insensitively as a whole word (a label's underscores and spaces may be written
either way). "is not a(n) <label>" and "is not an entity" are rejections: they assert nothing.

**Consistency score** in [0, 1]: the F1 between the set of (text, label) pairs asserted in the
rationale and the set of (text, label) pairs in the answer, both keyed with `normalize_mention`.
Both empty gives 1.0 (a sentence without entities, reasoned as such); exactly one empty gives 0.0.
It does not look at gold: it measures whether the reasoning supports exactly what was answered,
which is what stage 1 filters on and what the stage 3 reward pays for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from reasoningner.metrics import agreement, text_keys
from reasoningner.spans import Example, Schema

# Quoted text and link are matched atomically (a lookahead, then a backreference to what it saw; the
# `(?>...)` of Python 3.11 in 3.10's terms): giving characters back could never meet a closing quote,
# nor make a rejection's "is not an entity" name a label. The quoted text must not begin with a
# space, so that a closing quote (followed by " is a ...") fails at once instead of scanning the rest
# of its line. Quotes and newlines have no case, so only the link and the label ignore case.
_QUOTED = r"{quote}(?=[^\s\"“”])(?=(?P<text>[^\"“”\n]{{1,200}}))(?P=text){quote}"
# Curly quotes around a text that holds straight ones (the other alternative, tried second), and
# straight quotes around one that holds curly ones (tried third: "Dwayne “The Rock” Johnson").
_CURLY_QUOTED = r"“(?=[^\s“”])(?=(?P<curly>[^“”\n]{1,200}))(?P=curly)”"
_STRAIGHT_QUOTED = r'"(?=[^\s"])(?=(?P<straight>[^"\n]{1,200}))(?P=straight)"'
_LINK = (
    r"\s*(?:is\s+(?P<negation>not\s+)?(?:an?\s+|the\s+)?|->\s*|→\s*|:\s*|=\s*|as\s+(?:an?\s+)?"
    r"|label(?:l)?ed\s+(?:as\s+)?(?:an?\s+)?)"
)
# Words the link may end with: a label that begins with one needs the link to give them back.
_LINK_WORDS = frozenset({"a", "an", "the", "not", "as"})


@lru_cache(maxsize=256)
def _assertion_pattern(labels: tuple[str, ...], curly_quotes: bool) -> re.Pattern[str]:
    """The assertion regex; without curly quotes in the text, quotes are found as one character,
    which the regex engine searches for much faster than a class of three. Its groups are, in
    order: text, curly text and straight text (with curly quotes only), link, negation, label."""
    # Longest labels first so "musicalartist" wins over "artist"-like prefixes.
    written = {re.escape(label).replace("_", "[_ ]").replace("\\ ", "[_ ]") for label in labels}
    alternatives = sorted(written, key=len, reverse=True)
    label_group = "(?P<label>" + "|".join(alternatives) + ")"
    if curly_quotes:
        quoted = "(?:" + _QUOTED.format(quote='["“”]') + "|" + _CURLY_QUOTED + "|" + _STRAIGHT_QUOTED + ")"
    else:
        quoted = _QUOTED.format(quote='"')
    first_words = {label.casefold().replace("_", " ").split(" ")[0] for label in labels}
    link = f"(?P<link>{_LINK})" if first_words & _LINK_WORDS else f"(?=(?P<link>{_LINK}))(?P=link)"
    return re.compile(quoted + "(?i:" + link + label_group + r"(?![\w-]))")


@lru_cache(maxsize=256)
def _canonical_labels(labels: tuple[str, ...]) -> dict[str, str]:
    """Labels by every form an assertion may write them in: as given, and case-folded with
    underscores as spaces (the form the pattern matches ignoring case)."""
    folded = {label.casefold().replace("_", " "): label for label in labels}
    return folded | {label: label for label in labels}


def asserted_entities(rationale: str, schema: Schema) -> list[tuple[str, str]]:
    """(text, label) pairs the rationale asserts as entities, in order; rejections are left out."""
    canonical = _canonical_labels(schema.labels)
    curly = "“" in rationale or "”" in rationale
    # findall gives the groups in pattern order without a match object each.
    found = _assertion_pattern(schema.labels, curly).findall(rationale)
    if not curly:
        found = [(text, "", "", link, negation, label) for text, link, negation, label in found]
    return [
        (text or curly or straight, canonical.get(label) or canonical[label.casefold().replace("_", " ")])
        for text, curly, straight, _link, negation, label in found
        if not negation
    ]


def asserted_keys(rationale: str, schema: Schema) -> set[tuple[str, str]]:
    """The `metrics.text_keys` of what the rationale asserts: one side of `consistency`."""
    return text_keys(asserted_entities(rationale, schema))


def consistency(rationale: str, answer: Iterable[tuple[str, str]], schema: Schema) -> float:
    """How exactly the rationale supports the answer's (text, label) pairs (module docstring)."""
    return agreement(asserted_keys(rationale, schema), text_keys(answer))


def _article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def assertion(text: str, label: str) -> str:
    """The canonical way to state one decision, understood by `asserted_entities`: on one line (a text's
    line breaks as spaces: its key is the same, `metrics.text_keys`), in the quotes it does not hold."""
    text = " ".join(text.split())
    quoted = f"“{text}”" if '"' in text else f'"{text}"'
    return f"{quoted} is {_article(label)} {label}"


def gold_template_rationale(example: Example, context_words: int = 3) -> str:
    """A rationale grounded in the gold spans, for running the pipeline without a teacher LLM.

    Each entity is stated with up to `context_words` words on either side (none with 0), so that the
    student learns to look at context before deciding a label; the last line says that nothing else
    is an entity.
    """
    if not example.spans:
        return "No span of this sentence names an entity of the given types."
    lines = []
    for span in example.spans:
        line = assertion(span.text(example.text), span.label)
        if context_words > 0:
            left = example.text[: span.start].split()[-context_words:]
            right = example.text[span.end :].split()[:context_words]
            line += (
                f", from its context: {' '.join([*left, '[', *span.text(example.text).split(), ']', *right])}"
            )
        lines.append(line)
    lines.append("No other span names an entity of the given types.")
    return "\n".join(lines)
