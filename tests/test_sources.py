"""Data sources by name (`hf:`), the paper's layouts and sampler, the contamination check, and the
ReasoningNER recipes run on CPU with local stand-ins of their hub datasets, through the same code path
(`datasets.load_dataset` on a local directory instead of a hub id)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reasoningner.configs import (
    DataArguments,
    EvalArguments,
    GenerationArguments,
    PromptArguments,
    check_contamination,
    training_sources,
)
from reasoningner.readers import DataError, read_dataset
from reasoningner.sources import load_source, load_source_sets, overlaps, parse_source, source_keys
from reasoningner.spans import Schema
from reasoningner.training_data import rl_prompts, sample_reasoningner, sft_examples
from tests.scripts import load_stage

ROOT = Path(__file__).resolve().parents[1]
HUB = Path(__file__).parent / "data" / "hub"
NER_COT = f"hf:{HUB / 'NER-CoT'}@train"
UIE = f"hf:{HUB / 'InstructUIE' / 'NER'}"
RECIPES = ROOT / "recipes" / "reasoningner" / "qwen3-8b"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may contact the hub: a hub id that is not a local stand-in fails instead."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


OFFLINE_ENVIRONMENTS = [
    {},
    {"HF_HUB_OFFLINE": "1"},
    {"TRANSFORMERS_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"},
    {"HF_DATASETS_OFFLINE": "1"},
    {"HF_DATASETS_OFFLINE": "true"},
    {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "0"},
    {"TRANSFORMERS_OFFLINE": "yes", "HF_DATASETS_OFFLINE": "off"},
]


def test_offline_is_what_huggingface_hub_and_datasets_each_take_it_to_be() -> None:
    """Models go through huggingface_hub, data through datasets, and each library reads its own variables:
    doctor failed a model not cached under HF_DATASETS_OFFLINE=1 alone (models download then) and passed
    one under TRANSFORMERS_OFFLINE=1 (they do not). Each environment is read by both libraries anew."""
    script = """
import importlib, json, os, sys
import datasets.config, huggingface_hub.constants
from reasoningner.sources import datasets_offline, hub_offline
found = []
for env in json.loads(sys.argv[1]):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.pop(name, None)
    os.environ.update(env)
    importlib.reload(huggingface_hub.constants)
    importlib.reload(datasets.config)
    found.append([hub_offline(), huggingface_hub.constants.is_offline_mode(),
                  datasets_offline(), datasets.config.HF_HUB_OFFLINE])
print(json.dumps(found))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(OFFLINE_ENVIRONMENTS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = json.loads(out.splitlines()[-1])
    assert [(ours, hub) for ours, hub, _, _ in found] == [(hub, hub) for _, hub, _, _ in found]
    assert [(ours, data) for _, _, ours, data in found] == [(data, data) for _, _, _, data in found]
    # Every case tells the two apart somewhere: models offline with data online, and the other way.
    assert {(hub, data) for _, hub, _, data in found} == {
        (False, False),
        (True, True),
        (False, True),
        (True, False),
    }


def test_the_source_grammar() -> None:
    source = parse_source("hf:DFKI-SLT/cross_ner:ai@test?reader=tokens&streaming=true")
    assert (source.repo, source.config, source.split, source.layout, source.streaming) == (
        "DFKI-SLT/cross_ner", "ai", "test", "tokens", True
    )  # fmt: skip
    tree = parse_source("hf:OWNER/NAME/IE_INSTRUCTIONS/NER@train?sets=ACE 2005,CoNLL 2003")
    assert (tree.repo, tree.subdir, tree.sets, tree.layout) == (
        "OWNER/NAME", "IE_INSTRUCTIONS/NER", ("ACE 2005", "CoNLL 2003"), "instructuie"
    )  # fmt: skip
    assert parse_source("hf:HuiHuang/NER-CoT").split == "train"
    for bad in ("HuiHuang/NER-CoT", "hf:NER-CoT", "hf:a/b?sets=x&shuffle=1", "hf:a/b?reader=xml"):
        with pytest.raises(ValueError, match="hf:"):
            parse_source(bad)


def test_ner_cot_keeps_the_cot_and_reports_what_it_cannot_locate() -> None:
    [(dataset, rationales)] = load_source_sets(NER_COT)
    rows = [json.loads(line) for line in (HUB / "NER-CoT" / "train.jsonl").read_text().splitlines()]
    assert len(dataset.examples) == len(rows) == len(rationales)
    assert rationales == [row["cot"] for row in rows]
    first = dataset.examples[0]
    assert first.schema.labels == ("location", "organisation", "person")  # the protocol: lower-cased, sorted
    assert [(s.text(first.text), s.label) for s in first.spans] == [("EU", "organisation")]
    second = dataset.examples[1]
    assert [(s.text(second.text), s.label) for s in second.spans] == [("Peter Blackburn", "person")]
    assert dataset.notes == [
        f"{NER_COT}: record 1: entity 'Blackbird' (person) is not in the sentence: left out"
    ]
    # A local NER-CoT file reads the same through the registered reader.
    local = read_dataset(HUB / "NER-CoT" / "train.jsonl", "nercot")
    assert local.name == "NER-CoT-train" and local.examples[0].id == "NER-CoT-train-0"
    assert [(e.text, e.spans) for e in local.examples] == [(e.text, e.spans) for e in dataset.examples]


def test_a_mention_found_only_ignoring_case_keeps_its_offsets_after_a_letter_that_lowers_longer(
    tmp_path: Path,
) -> None:
    """ "İ".lower() is two characters: a search in the lowered sentence would shift every later offset."""
    row = {"guid": 0, "sentence": "İzmir , İstanbul and ANKARA-based firms", "schema": ["Location"],
           "cot": "", "entities": [{"text": "Ankara", "label": "Location"}]}  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    dataset = read_dataset(path, "nercot")
    [example] = dataset.examples
    assert [(s.text(example.text), s.label) for s in example.spans] == [("ANKARA", "location")]
    assert [note.split(": ", 2)[2] for note in dataset.notes] == [
        "entity 'Ankara' (location) is in the sentence only in another case: placed there"
    ]


def test_a_type_named_in_words_keeps_its_words(tmp_path: Path) -> None:
    """The paper's types of several words ("psychological entity") were asked as `psychological_entity`,
    a name that neither its teacher's rationales nor a pretrained model's reading use."""
    row = {"guid": 0, "sentence": "Guido wrote Python .", "schema": ["Programming  Language", "Person"],
           "cot": '"Python" is a programming language',
           "entities": [{"text": "Python", "label": "programming language"}]}  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [example] = read_dataset(path, "nercot").examples
    assert example.schema.labels == ("person", "programming language")
    assert [(s.text(example.text), s.label) for s in example.spans] == [("Python", "programming language")]


def test_a_mention_listed_again_with_another_label_takes_its_next_occurrence(tmp_path: Path) -> None:
    row = {"guid": 0, "sentence": "Washington praised Washington .", "schema": ["Person", "Location"],
           "cot": "", "entities": [{"text": "Washington", "label": "Person"},
                                   {"text": "Washington", "label": "Location"}]}  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [example] = read_dataset(path, "nercot").examples
    assert [(s.start, s.label) for s in example.spans] == [(0, "person"), (19, "location")]


def test_a_shorter_mention_is_placed_outside_the_longer_one_that_contains_it(tmp_path: Path) -> None:
    """NER-CoT lists mentions without offsets: "Smith" after "John Smith" is the standalone Smith, not the
    one inside; a mention found only inside another is placed there (nested), with a note."""
    rows = [
        {"guid": 0, "sentence": "John Smith met Bob . Smith left .", "schema": ["Person"], "cot": "",
         "entities": [{"text": "Smith", "label": "Person"}, {"text": "John Smith", "label": "Person"},
                      {"text": "Bob", "label": "Person"}]},
        {"guid": 1, "sentence": "John Smith left .", "schema": ["Person"], "cot": "",
         "entities": [{"text": "John Smith", "label": "Person"}, {"text": "Smith", "label": "Person"},
                      {"text": "Smith", "label": "Person"}]},
        {"guid": 2, "sentence": "IL-2 binds the IL-2 gene .", "schema": ["Protein", "DNA"], "cot": "",
         "entities": [{"text": "IL-2", "label": "Protein"}, {"text": "IL-2 gene", "label": "DNA"},
                      {"text": "IL-2", "label": "Protein"}]},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    dataset = read_dataset(path, "nercot")
    first, second, nested = ([(s.start, s.text(e.text)) for s in e.spans] for e in dataset.examples)
    assert first == [(0, "John Smith"), (15, "Bob"), (21, "Smith")]
    assert second == [(0, "John Smith"), (5, "Smith")]
    assert nested == [(0, "IL-2"), (15, "IL-2 gene"), (15, "IL-2")]  # GENIA-like nesting, once each
    assert [note.split(": ", 1)[1] for note in dataset.notes] == [
        "record 1: entity 'Smith' (person) is only inside another entity: placed there",
        "record 1: entity 'Smith' (person) is listed more times than it occurs: left out",
        "record 2: entity 'IL-2' (protein) is only inside another entity: placed there",
    ]


def test_an_instructuie_sentence_without_entities_and_a_wrong_pos_read_as_the_paper_reads_them(
    tmp_path: Path,
) -> None:
    """InstructUIE writes a sentence without entities as one {"name": "", "type": "NA"}: a sentence, not a
    bad record. A `pos` that does not cover its mention is corrected to a free occurrence, and a mention
    stated twice is kept once, each with a note."""
    tree = tmp_path / "NER" / "set"
    tree.mkdir(parents=True)
    (tree / "labels.json").write_text('["organisation", "location"]')
    records = [
        {"sentence": "Nothing to see .", "entities": [{"name": "", "type": "NA", "pos": ""}]},
        {"sentence": "EU backs EU plan .", "entities": [
            {"name": "EU", "type": "organisation", "pos": [0, 2]},
            {"name": "EU", "type": "location", "pos": [3, 5]},
            {"name": "EU", "type": "organisation", "pos": [0, 2]}]},  # listed twice: one span
    ]  # fmt: skip
    (tree / "train.json").write_text(json.dumps(records))
    dataset = load_source(f"hf:{tmp_path / 'NER'}@train?sets=set")
    empty, eu = dataset.examples
    assert (empty.text, empty.spans) == ("Nothing to see .", ()) and not dataset.skipped
    assert [(s.start, s.label) for s in eu.spans] == [(0, "organisation"), (9, "location")]
    assert [note.split(": ", 1)[1] for note in dataset.notes] == [
        "record 1: entity 'EU' (organisation) is stated twice at [0, 2]: kept once",
        "record 1: entity 'EU': pos [3, 5] does not cover it, placed at 9",
    ]


def test_a_malformed_line_skipped_leaves_the_later_records_their_own_index_and_id(tmp_path: Path) -> None:
    """Predictions pair with gold sentences by record index (`score`): a skip must not shift them."""
    entry = '{"text": "%s runs", "labels": ["person"], "entities": []}'
    lines = [entry % "Al", '{"text": ', entry % "Bo"]
    path = tmp_path / "gold.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hub = load_source(f"hf:{path}?reader=jsonl", on_error="skip")
    plain = read_dataset(path, "jsonl", on_error="skip")
    assert hub.indices == plain.indices == [0, 2]
    assert [e.id for e in hub.examples] == [e.id for e in plain.examples] == ["gold-0", "gold-2"]
    assert hub.skipped == [f"{path}:2: record 1: invalid JSON: Expecting value at column 10"]


def test_a_local_ner_cot_file_is_read_whatever_characters_its_path_holds(tmp_path: Path) -> None:
    """A path is not a source spec: `@`, `:` and `?` there are no split, config or options."""
    row = {"guid": 0, "sentence": "Ann left .", "schema": ["Person"], "cot": "why",
           "entities": [{"text": "Ann", "label": "Person"}]}  # fmt: skip
    path = tmp_path / "run@2:v?x" / "nercot.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [example] = read_dataset(path, "nercot").examples
    assert (example.text, [s.label for s in example.spans]) == ("Ann left .", ["person"])
    with pytest.raises(DataError, match="missing.jsonl: no such file"):  # not asked of the Hub
        read_dataset(tmp_path / "run@2:v?x" / "missing.jsonl", "nercot")


def test_each_ner_cot_row_keeps_its_own_rationale_when_two_share_a_guid(tmp_path: Path) -> None:
    rows = [{"guid": 7, "sentence": f"{name} left .", "schema": ["Person"], "cot": f"why {name}",
             "entities": [{"text": name, "label": "Person"}]} for name in ("Ann", "Bob")]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    [(dataset, rationales)] = load_source_sets(f"hf:{path}?reader=nercot")
    assert [(e.text, why) for e, why in zip(dataset.examples, rationales, strict=True)] == [
        ("Ann left .", "why Ann"),
        ("Bob left .", "why Bob"),
    ]


def test_our_jsonl_from_the_hub_reads_as_the_file_does_when_rows_lack_optional_fields(tmp_path: Path) -> None:
    """`datasets` gives every row each column of the file: a row without `id` or `labels` gets nulls."""
    rows = [
        {"id": "a", "text": "Ann met Bob .", "labels": ["person", "organisation"],
         "entities": [{"start": 0, "end": 3, "label": "person", "text": "Ann"}]},
        {"text": "Bob left .", "entities": [{"start": 0, "end": 3, "label": "person"}]},
    ]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    plain = read_dataset(tmp_path / "train.jsonl", "jsonl")
    hub = read_dataset(f"hf:{tmp_path}@train", "hf")
    assert [(e.text, e.spans, e.schema) for e in hub.examples] == [
        (e.text, e.spans, e.schema) for e in plain.examples
    ]
    assert hub.examples[0].id == "a" and not hub.skipped


def test_skip_bad_skips_a_malformed_row_of_a_hub_source_in_sft_and_grpo(tmp_path: Path) -> None:
    """SFT and GRPO read Hub sources with the run's skip_bad too: one unusable label among NER-CoT's
    45,800 rows stopped the stage, whatever skip_bad said."""
    hub = tmp_path / "NER-CoT"
    shutil.copytree(HUB / "NER-CoT", hub)
    rows = (hub / "train.jsonl").read_text().splitlines(keepends=True)
    bad = json.loads(rows[0]) | {"schema": ['programming_language_"cpp"']}
    (hub / "train.jsonl").write_text(json.dumps(bad) + "\n" + "".join(rows[1:]))
    source = f"hf:{hub}@train"
    with pytest.raises(DataError, match="is not usable"):
        sft_examples([source], PromptArguments())
    kept = sft_examples([source], PromptArguments(), DataArguments(skip_bad=True))
    assert len(kept) == len(rows) - 1
    prompts = rl_prompts([source], PromptArguments(), DataArguments(skip_bad=True))
    assert len(prompts) == len(rows) - 1


def test_a_row_without_a_rationale_stops_sft_or_with_skip_bad_is_left_out(tmp_path: Path) -> None:
    """One empty cot among NER-CoT's rows stopped the stage whatever skip_bad said; trained without it, the
    row would teach answering without reasoning."""
    hub = tmp_path / "NER-CoT"
    shutil.copytree(HUB / "NER-CoT", hub)
    rows = (hub / "train.jsonl").read_text().splitlines(keepends=True)
    empty = json.loads(rows[1]) | {"cot": "  "}
    (hub / "train.jsonl").write_text(rows[0] + json.dumps(empty) + "\n" + "".join(rows[2:]))
    source = f"hf:{hub}@train"
    with pytest.raises(ValueError, match=r"has no rationale .*or skip_bad: true to leave such rows out"):
        sft_examples([source], PromptArguments())
    kept = sft_examples([source], PromptArguments(), DataArguments(skip_bad=True))
    assert len(kept) == len(rows) - 1 and all(example.rationale.strip() for example in kept)
    assert len(sft_examples([source], PromptArguments(reasoning=False))) == len(rows)  # answers only: kept


def test_an_instructuie_tree_is_one_source_with_a_dataset_per_set() -> None:
    sets = load_source_sets(f"{UIE}@train?sets=CoNLL 2003,WikiANN en")
    assert [(d.name, len(d.examples)) for d, _ in sets] == [("CoNLL 2003", 32), ("WikiANN en", 12)]
    conll = sets[0][0]
    assert conll.schema.labels == ("location", "organisation", "person")  # misc dropped, as the paper does
    assert all("label 'misc'" in note for note in conll.notes) and conll.notes
    test = read_dataset(f"{UIE}@test?sets=CrossNER_AI", "hf")
    assert test.name == "CrossNER_AI" and len(test.examples) == 4
    # A split file alone has no label set: its gold entities' labels would have been each prompt's.
    alone = f"hf:{HUB / 'InstructUIE' / 'NER' / 'CrossNER_AI' / 'train.json'}@train"
    with pytest.raises(DataError, match=r"CrossNER_AI/train.json:2: record 0: no label set: .*sets=<set>"):
        read_dataset(alone, "hf")
    given = read_dataset(alone, "hf", schema=Schema(("algorithm", "field", "task")))  # the caller's
    assert given.schema.labels == ("algorithm", "field", "task") and given.examples


def test_the_papers_sampler_floors_shares_of_the_capped_sizes() -> None:
    groups = [[f"a{i}" for i in range(30)], [f"b{i}" for i in range(10)], [f"c{i}" for i in range(5)]]
    drawn = sample_reasoningner(groups, total=20, cap=20, seed=42)  # type: ignore[arg-type]
    assert [len(d) for d in drawn] == [int(20 * 20 / 35), int(20 * 10 / 35), int(20 * 5 / 35)]
    rng = random.Random(42)  # sample_grpo.py: random.seed(seed), then shuffle each source in turn
    expected = []
    for group, take in zip(groups, (11, 5, 2), strict=True):
        shuffled = list(group)
        rng.shuffle(shuffled)
        expected.append(shuffled[:take])
    assert drawn == expected
    prompts = rl_prompts(
        [f"{UIE}@train?sets=CoNLL 2003,WikiANN en"],
        PromptArguments(),
        total=11,
        sampler="reasoningner",
        cap_per_dataset=20,
        seed=0,
    )
    assert [p["dataset"] for p in prompts] == ["CoNLL 2003"] * 6 + ["WikiANN en"] * 4  # int(11*20/32), ...


def test_sft_trains_on_the_ner_cot_rationale_and_refuses_a_source_without_one(tmp_path: Path) -> None:
    examples = sft_examples([NER_COT], PromptArguments())
    example, answer, rationale = examples[0]
    assert rationale.startswith('"EU" is an organisation')
    assert json.loads(answer) == {"entities": {"organisation": ["EU"]}}
    corpora: list[str] = []
    sft_examples([NER_COT, f"{UIE}@train?sets=WikiANN en"], PromptArguments(reasoning=False), corpora=corpora)
    assert corpora == ["CoNLL 2003"]  # what the NER-CoT records name as their source; InstructUIE has none
    with pytest.raises(ValueError, match="has no rationale"):
        sft_examples([f"{UIE}@train?sets=WikiANN en"], PromptArguments())
    # A NER-CoT file of one's own, named without `hf:` or `reader: nercot`, is NER-CoT too.
    local = sft_examples([str(HUB / "NER-CoT" / "train.jsonl")], PromptArguments())
    assert [(e.text, a, r) for e, a, r in local] == [(e.text, a, r) for e, a, r in examples]
    released = tmp_path / "NER-CoT"  # the Hub release: string guids, the corpus under `dataset`
    released.mkdir()
    rows = [json.loads(line) for line in (HUB / "NER-CoT" / "train.jsonl").read_text().splitlines()]
    renamed = [
        {
            **{k: v for k, v in row.items() if k != "source"},
            "guid": str(row["guid"]),
            "dataset": row["source"],
        }
        for row in rows
    ]
    (released / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in renamed))
    corpora = []
    assert len(sft_examples([f"hf:{released}@train"], PromptArguments(), corpora=corpora)) == len(rows)
    assert corpora == ["CoNLL 2003"]
    assert len(sft_examples([f"{UIE}@train?sets=WikiANN en"], PromptArguments(reasoning=False))) == 12


def test_contamination_is_the_same_file_hub_dataset_or_corpus_family() -> None:
    train = ["../shared/data/crossner/music/train.txt", f"{UIE}@train?sets=CoNLL 2003,mit-movie"]
    found = overlaps(
        train,
        [
            "hf:DFKI-SLT/cross_ner:ai@test",  # another CrossNER domain: the same family
            f"{UIE}@test?sets=mit-movie",  # the same set of the same tree, another split
            f"{UIE}@test?sets=WikiANN en",  # clean
            "../shared/data/crossner/music/train.txt",  # the same file
        ],
    )
    assert [message.split(" overlaps ")[0] for message in found] == [
        "hf:DFKI-SLT/cross_ner:ai@test",
        f"{UIE}@test?sets=mit-movie",
        "../shared/data/crossner/music/train.txt",
    ]
    assert "family:crossner" in source_keys("data/crossner/ai-dev-slice.txt")
    assert "family:conll2003" in source_keys("hf:DFKI-SLT/cross_ner:conll2003@test")


def test_an_overlap_is_an_error_at_eval_start_unless_allowed_and_then_in_domain(tmp_path: Path) -> None:
    model = tmp_path / "rl"
    model.mkdir()
    (model / "manifest.json").write_text(
        json.dumps({"stage": "rl", "config": {"train_files": [f"{UIE}@train?sets=CoNLL 2003,CrossNER_AI"]}})
    )
    parser = load_stage("eval").make_parser()
    args = ["--config", str(RECIPES / "eval.yaml"), "--model_name_or_path", str(model), "--output_dir",
            str(tmp_path / "eval"), "--backend", "transformers"]  # fmt: skip
    with pytest.raises(ValueError, match=r"CrossNER_AI overlaps training source .*family:crossner"):
        parser.parse_args_and_config(args=args)
    evaluation, *_ = parser.parse_args_and_config(args=[*args, "--allow_overlap", "true"])
    # Every CrossNER domain is in-domain (one corpus family); the MIT sets stay zero-shot.
    assert [m.split("sets=")[1].split(" ")[0] for m in evaluation.in_domain] == [
        "CrossNER_AI", "CrossNER_literature", "CrossNER_music", "CrossNER_politics", "CrossNER_science"
    ]  # fmt: skip
    assert len(evaluation.in_domain_sources) == 5 and all(
        "CrossNER" in s for s in evaluation.in_domain_sources
    )
    clean = EvalArguments(output_dir="o", datasets=[{"path": f"{UIE}@test?sets=mit-movie"}])
    check_contamination(clean, [f"{UIE}@train?sets=CoNLL 2003"])
    assert clean.in_domain == []


def test_the_corpora_ner_cot_records_name_are_training_sources(tmp_path: Path) -> None:
    """NER-CoT's records say which corpus each comes from (`source`): an SFT model records them, and an
    evaluation on a set of one of those corpora is in-domain, though no training file names it."""
    sft, rl = tmp_path / "sft", tmp_path / "rl"
    for folder, manifest in (
        (sft, {"stage": "sft", "config": {"train_files": [NER_COT]}, "corpora": ["CrossNER_politics"]}),
        (rl, {"stage": "rl", "config": {"train_files": []}, "corpora": [],
              "inputs": [{"path": str(sft), "manifest": {"path": str(sft / "manifest.json")}}]}),
    ):  # fmt: skip
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(manifest))
    assert training_sources(rl) == [NER_COT, "corpus:CrossNER_politics"]
    (rl / "merged").mkdir()  # a merged LoRA model: its run's manifest is in the folder above
    assert training_sources(rl / "merged") == training_sources(rl)
    crossner = EvalArguments(output_dir="o", datasets=[{"path": f"{UIE}@test?sets=CrossNER_AI"}])
    with pytest.raises(
        ValueError, match=r"overlaps training source corpus:CrossNER_politics \(family:crossner\)"
    ):
        check_contamination(crossner, training_sources(rl))
    assert source_keys("corpus:Pile-CC") == {"family:pilecc"}  # an unknown corpus is a family of its own


def test_a_hub_model_s_training_data_comes_from_the_manifest_published_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A published model's manifest records the data of its whole lineage (`data_sources`): the files it
    was built from are not on the machine that evaluates it."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    (tmp_path / "manifest.json").write_text(
        json.dumps({"stage": "rl", "config": {"train_files": ["gone.jsonl"]}, "data_sources": [NER_COT]})
    )
    answers: dict[str, Exception | None] = {"me/rl": None, "me/offline": LocalEntryNotFoundError("no")}

    revisions: list[str | None] = []

    def download(repo_id: str, filename: str, revision: str | None = None) -> str:
        revisions.append(revision)
        if answers[repo_id] is not None:
            raise answers[repo_id]
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert training_sources("me/rl", from_hub=True) == [NER_COT]
    assert training_sources("me/rl") == []  # not without from_hub
    # A model served or loaded at a revision (vLLM's `revision` option) is checked at that revision.
    served = GenerationArguments(
        model_name_or_path="me/rl", backend="openai", backend_options={"revision": "v1"}
    )
    assert served.training_sources() == [NER_COT] and revisions[-1] == "v1"
    with caplog.at_level("WARNING"):
        assert training_sources("me/offline", from_hub=True) == []
    assert "me/offline: no manifest.json from the Hub" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_a_use_vllm_recipe_fails_at_once_with_the_install_command() -> None:
    parser = load_stage("rl").make_parser()
    with pytest.raises(ValueError, match=r'use_vllm: True needs vllm, not installed: pip install "vllm'):
        parser.parse_args_and_config(args=["--config", str(RECIPES / "rl.yaml"), "--use_cpu", "true"])


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_is_opt_in_and_checked_up_front() -> None:
    parser = load_stage("sft").make_parser()
    _, _, training, model = parser.parse_args_and_config(
        args=["--config", str(RECIPES / "sft.yaml"), "--use_cpu", "true"]
    )
    assert model.attn_implementation == "sdpa" and training.use_liger_kernel is False  # Liger: off on CPU
    with pytest.raises(
        ValueError, match="flash_attention_2 needs flash_attn, not installed: pip install flash-attn"
    ):
        parser.parse_args_and_config(
            args=[
                "--config",
                str(RECIPES / "sft.yaml"),
                "--use_cpu",
                "true",
                "--attn_implementation",
                "flash_attention_2",
            ]  # fmt: skip
        )


# --- the paper's recipes on CPU: the tiny model and the local stand-ins, a few steps each ----------------


def _run(stage: str, *args: str) -> None:
    module = load_stage(stage)
    module.main(
        *module.make_parser().parse_args_and_config(args=["--config", str(RECIPES / f"{stage}.yaml"), *args])
    )


def test_the_reasoningner_recipes_run_on_cpu_with_local_stand_ins(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    sft, rl = tmp_path / "sft", tmp_path / "rl"
    # float32 weights, as `make smoke`: one process has no DeepSpeed master weights for the recipes' bf16.
    _run("sft", "--model_name_or_path", str(tiny_model_dir), "--train_files", NER_COT, "--max_steps", "2",
         "--use_cpu", "true", "--output_dir", str(sft), "--report_to", "none",
         "--dtype", "float32")  # fmt: skip
    assert (sft / "model.safetensors").is_file()
    assert json.loads((sft / "manifest.json").read_text())["corpora"] == ["CoNLL 2003"]  # NER-CoT's source
    rl_files = f"{UIE}@train?sets=CoNLL 2003,WikiANN en"
    _run("rl", "--model_name_or_path", str(sft), "--train_files", rl_files,
         "--max_steps", "4", "--use_cpu", "true", "--use_vllm", "false", "--output_dir", str(rl),
         "--report_to", "none", "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
         "--max_completion_length", "16", "--dtype", "float32")  # fmt: skip
    state = json.loads((rl / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # one generation cycle (num_iterations 4): a checkpoint may end there
    manifest = json.loads((rl / "manifest.json").read_text())
    assert manifest["config"]["sampler"] == "reasoningner"
    # The whole lineage, recorded for when the model is published without its SFT folder.
    assert manifest["data_sources"] == [rl_files, NER_COT, "corpus:CoNLL 2003"]

    stage = load_stage("eval")
    evaluation, prompt, generation = stage.make_parser().parse_args_and_config(
        args=[
            "--config",
            str(RECIPES / "eval.yaml"),
            "--model_name_or_path",
            str(rl),
            "--output_dir",
            str(tmp_path / "eval"),
            "--max_new_tokens",
            "16",
            "--backend",
            "transformers",
        ]  # fmt: skip
    )
    # The stand-in tree has CrossNER AI only; the recipe's seven sets are its hub sets.
    assert len(evaluation.datasets) == 7
    evaluation.datasets = [{"path": f"{UIE}@test?sets=CrossNER_AI", "name": "CrossNER_AI"}]
    generation.backend_options = {"dtype": "float32"}
    stage.main(evaluation, prompt, generation)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "CrossNER_AI" in json.dumps(results["scores"])


def test_a_hub_source_is_read_at_its_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt of a long run reads the same rows: `revision=` reaches `load_dataset` and the
    InstructUIE files' downloads (here stand-ins answering from the local copies, as the Hub would)."""
    import datasets
    import huggingface_hub

    asked: list[tuple[str, object]] = []
    real_load_dataset = datasets.load_dataset

    def load_dataset(repo: str, config: str | None = None, **options: object) -> datasets.Dataset:
        asked.append((repo, options.pop("revision", None)))
        return real_load_dataset(str(HUB / "NER-CoT"), config, **options)

    def download(repo_id: str, filename: str, repo_type: str, revision: str | None = None) -> str:
        asked.append((f"{repo_id}/{filename}", revision))
        return str(HUB / "InstructUIE" / filename)

    local = load_source(NER_COT)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert load_source("hf:HuiHuang/NER-CoT@train?revision=0123abcd").examples == local.examples
    [(tree, _)] = load_source_sets("hf:OWNER/NAME/NER@train?sets=WikiANN en&revision=v2")
    assert tree.examples and asked == [
        ("HuiHuang/NER-CoT", "0123abcd"),
        ("OWNER/NAME/NER/WikiANN en/labels.json", "v2"),
        ("OWNER/NAME/NER/WikiANN en/train.json", "v2"),
    ]
    with pytest.raises(ValueError, match="revision= is a hub dataset's commit"):
        parse_source(f"{NER_COT}?revision=v2")


def test_a_hub_dataset_with_a_loading_script_is_read_from_its_parquet_export(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """`datasets` >= 4 refuses loading scripts (DFKI-SLT/cross_ner has one); the Hub's Parquet export of
    the same configs and splits is read instead, through the hub cache, so that an offline node reads
    what was downloaded (`datasets` finds no cache for the script's config there). Other errors stand."""
    import datasets
    import huggingface_hub

    # The export's layout, <config>/<split>/*.parquet, here on disk: two configs of one split.
    export = tmp_path / "export"
    for config, word in (("ai", "Paris"), ("music", "Abba")):
        (export / config / "test").mkdir(parents=True)
        rows = [{"tokens": [word, "is"], "ner_tags": ["B-location", "O"]}]
        datasets.Dataset.from_list(rows).to_parquet(export / config / "test" / "0000.parquet")
    calls: list[dict[str, object]] = []
    real_load_dataset = datasets.load_dataset
    cached: list[bool] = []  # the export downloaded: in the hub cache

    def load_dataset(repo: str, config: str | None = None, **options: object) -> datasets.Dataset:
        if repo == "parquet":
            return real_load_dataset(repo, config, **options)
        calls.append({"repo": repo, "config": config, **options})
        if os.environ.get("HF_HUB_OFFLINE"):
            raise ConnectionError("Couldn't reach 'DFKI-SLT/cross_ner' on the Hub (OfflineModeIsEnabled)")
        raise RuntimeError("Dataset scripts are no longer supported, but found cross_ner.py")

    def snapshot_download(repo_id: str, **options: object) -> str:
        calls.append({"repo": repo_id, **options})
        if options["local_files_only"] and not cached:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
        cached.append(True)
        return str(export)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    schema = Schema(("location",))
    spec = "hf:DFKI-SLT/cross_ner:ai@test?reader=tokens"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="OfflineModeIsEnabled"):  # never downloaded: datasets' error
        load_source(spec, schema=schema)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    dataset = load_source(spec, schema=schema)
    assert [e.text for e in dataset.examples] == ["Paris is"]  # the config's rows only
    assert [(s.start, s.end, s.label) for s in dataset.examples[0].spans] == [(0, 5, "location")]
    export_ask = {"repo": "DFKI-SLT/cross_ner", "repo_type": "dataset", "revision": "refs/convert/parquet",
                  "allow_patterns": ["ai/test/*.parquet"]}  # fmt: skip
    assert calls[-1] == {**export_ask, "local_files_only": False}
    assert "Parquet export" in caplog.text
    calls.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_source(spec, schema=schema).examples == dataset.examples  # offline, from the cache
    assert calls[-1] == {**export_ask, "local_files_only": True}
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # datasets online, but the hub it asks is not
    assert load_source(spec, schema=schema).examples == dataset.examples
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(repo: str, config: str, **options: object) -> None:
        raise RuntimeError("the Hub cannot be reached")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(RuntimeError, match="cannot be reached"):
        load_source(spec, schema=schema)
    monkeypatch.setattr(datasets, "load_dataset", lambda *_, **__: load_dataset("DFKI-SLT/cross_ner"))
    with pytest.raises(
        ValueError, match=r"Parquet export \(refs/convert/parquet\), which follows the latest"
    ):
        load_source("hf:DFKI-SLT/cross_ner:ai@test?reader=tokens&revision=0123abcd", schema=schema)


def test_numeric_tags_without_label_names_are_a_clear_error_that_names_the_row() -> None:
    import datasets

    from reasoningner.readers import DataError, from_hf

    rows = datasets.Dataset.from_list([{"tokens": ["Paris", "is"], "ner_tags": [1, 0]}])
    with pytest.raises(
        DataError,
        match=r"^hf:DFKI-SLT/cross_ner:ai@test: record 0: 'ner_tags' holds numbers but its feature names no",
    ):
        from_hf(rows, name="cross_ner", where="hf:DFKI-SLT/cross_ner:ai@test")


def test_a_limited_token_source_asks_the_labels_of_the_whole_split(tmp_path: Path) -> None:
    """`limit` (a smoke run) took the labels of its first rows only: prompts listing fewer labels than a
    full run's. ClassLabel tags are named as in a full read."""
    import datasets

    from reasoningner.readers import from_hf

    rows = [
        {"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]},
        {"tokens": ["Ann"], "ner_tags": ["B-PER"]},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    [(limited, _)] = load_source_sets(f"hf:{tmp_path}@train?reader=tokens", limit=1)
    assert [e.text for e in limited.examples] == ["EU rejects"]
    assert limited.schema.labels == limited.examples[0].schema.labels == ("ORG", "PER")
    names = datasets.ClassLabel(names=["O", "B-PER", "B-LOC"])
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": datasets.Sequence(names)}
    )
    coded = datasets.Dataset.from_list(
        [{"tokens": ["Ann"], "ner_tags": [1]}, {"tokens": ["Rome"], "ner_tags": [2]}], features=features
    )
    assert from_hf(coded, limit=1).schema.labels == ("PER", "LOC")
    assert from_hf(coded).schema.labels == ("PER", "LOC") and len(from_hf(coded, limit=1).examples) == 1


def test_a_hub_instructuie_tree_is_read_from_the_cache_offline(tmp_path: Path) -> None:
    """Compute nodes without internet run on what the login node downloaded (HF_HUB_OFFLINE=1): the
    paper's `?sets=` sources read their files through the Hugging Face cache, as models do."""
    repo = tmp_path / "hub" / "datasets--OWNER--InstructUIE_data"
    shutil.copytree(HUB / "InstructUIE", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    script = (
        "from reasoningner.sources import load_source_sets\n"
        "sets = load_source_sets('hf:OWNER/InstructUIE_data/NER@train?sets=CoNLL 2003,WikiANN en')\n"
        "print([(d.name, len(d.examples)) for d, _ in sets])\n"
    )
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env = (
        os.environ
        | offline
        | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "d")}
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = [
        (d.name, len(d.examples)) for d, _ in load_source_sets(f"{UIE}@train?sets=CoNLL 2003,WikiANN en")
    ]
    assert result.stdout.strip() == str(expected)


def test_a_bad_record_of_a_local_instructuie_tree_or_file_is_named_by_its_file_and_line(
    tmp_path: Path,
) -> None:
    """What `recipes/README.md` has users do with their own InstructUIE copy: every error names where."""
    from reasoningner.readers import DataError

    tree = tmp_path / "NER"
    shutil.copytree(HUB / "InstructUIE" / "NER" / "CoNLL 2003", tree / "set")
    train = tree / "set" / "train.json"
    records = json.loads(train.read_text())
    records[1]["sentence"] = 7
    train.write_text(json.dumps(records, indent=1))
    line = next(n for n, text in enumerate(train.read_text().splitlines(), 1) if '"sentence": 7' in text)
    with pytest.raises(DataError, match=rf"train.json:{line - 1}: record 1: field 'sentence' must be a str"):
        load_source(f"hf:{tree}@train?sets=set")
    assert len(load_source(f"hf:{tree}@train?sets=set", on_error="skip").skipped) == 1

    (tree / "set" / "labels.json").write_text('["person",\n')
    with pytest.raises(DataError, match=r"set/labels.json: not JSON"):
        load_source(f"hf:{tree}@train?sets=set")

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "Ann ran .", "entities": []}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: record 1: invalid JSON"):
        load_source(f"hf:{broken}")


def test_a_hub_that_cannot_be_reached_is_not_reported_as_missing_the_dataset(monkeypatch) -> None:
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from reasoningner import sources

    monkeypatch.setattr(sources, "datasets_offline", lambda: False)
    monkeypatch.setattr(sources, "hub_cached", lambda repo: False)

    def answer(error: Exception):
        def dataset_info(self, repo_id: str, **kwargs) -> None:
            raise error

        monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
        return sources.resolvable("hf:OWNER/NAME@train")

    unreachable = answer(httpx.ConnectError("[Errno -2] Name or service not known"))
    assert unreachable[0] is False and unreachable[1].startswith("cannot reach the hub (offline? a proxy?)")
    missing = answer(
        RepositoryNotFoundError(
            "404 Client Error",
            response=httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co")),
        )
    )
    assert missing[0] is False and missing[1].startswith("the hub does not serve it: RepositoryNotFoundError")


def test_doctor_asks_the_hub_for_a_pinned_revision_even_of_a_cached_dataset(monkeypatch) -> None:
    """A cached copy says nothing of a revision: a misspelt one would fail only when the run loads it."""
    from huggingface_hub import HfApi

    from reasoningner import sources

    monkeypatch.setattr(sources, "datasets_offline", lambda: False)
    monkeypatch.setattr(sources, "hub_cached", lambda repo: True)
    asked: list[object] = []
    monkeypatch.setattr(
        HfApi, "dataset_info", lambda self, repo_id, **kwargs: asked.append(kwargs["revision"])
    )
    assert sources.resolvable("hf:OWNER/NAME@train") == (True, "in the Hugging Face cache") and asked == []
    assert sources.resolvable("hf:OWNER/NAME@train?revision=v2")[0] and asked == ["v2"]
