"""The prompt contract: unset settings come from the model's saved contract, given ones win with a
warning when they contradict it, and the contract file round-trips beside a model and its checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reasoningner.configs import (
    DEFAULT_MAX_NEW_TOKENS,
    PROMPT_CONTRACT,
    EvalArguments,
    GenerationArguments,
    PromptArguments,
    PromptContract,
    TrainerScriptArguments,
)
from reasoningner.spans import Schema

TRAINED = PromptContract(
    PromptArguments(output_format="xml", reasoning=False, descriptions=False, compact_prompt=True),
    ["person", "location"],
    "model/prompt_contract.json",
)


def test_unset_fields_take_the_defaults_until_a_contract_fills_them() -> None:
    prompt = PromptArguments()
    assert (prompt.output_format, prompt.reasoning, prompt.descriptions, prompt.compact_prompt) == (
        "grouped_json",
        True,
        True,
        False,
    )
    assert prompt.resolve(None) is prompt
    assert prompt.resolve(TRAINED) == TRAINED.prompt


def test_a_given_field_wins_and_warns_once_when_it_contradicts_the_contract(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="reasoningner.configs"):
        resolved = PromptArguments(output_format="bracketed", descriptions=False).resolve(TRAINED)
    assert resolved == PromptArguments("bracketed", reasoning=False, descriptions=False, compact_prompt=True)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "output_format='bracketed' contradicts the prompt contract model/prompt_contract.json: "
        "the model was trained with output_format='xml'"
    ]  # descriptions=False agrees with the contract: no warning


def test_the_contract_round_trips_and_a_checkpoint_reads_its_run_s(tmp_path: Path) -> None:
    TRAINED.save(tmp_path / "run")
    (tmp_path / "run" / "checkpoint-4").mkdir()
    for where in ("run", "run/checkpoint-4"):
        loaded = PromptContract.load(tmp_path / where)
        assert (loaded.prompt, loaded.labels) == (TRAINED.prompt, TRAINED.labels)
        assert loaded.source == str(tmp_path / "run" / PROMPT_CONTRACT)
    (tmp_path / "base").mkdir()
    assert PromptContract.load(tmp_path / "base") is None  # a base model has none
    assert PromptContract.load("Qwen/Qwen3-8B") is None
    assert PromptContract.load(None) is None


def test_the_contract_of_training_data_has_every_label_and_its_first_description(tmp_path: Path) -> None:
    prompt = PromptArguments(descriptions=True)
    contract = PromptContract.trained(
        prompt,
        [
            Schema(("PER", "LOC"), {"PER": "people"}),
            Schema(("ORG", "PER"), {"PER": "humans", "ORG": "firms"}),
        ],
        wording="0123456789abcdef",
        max_new_tokens=300,
    )
    assert contract.labels == ["PER", "LOC", "ORG"]
    assert contract.descriptions == {"PER": "people", "ORG": "firms"}
    contract.save(tmp_path)
    loaded = PromptContract.load(tmp_path)
    assert (loaded.prompt, loaded.labels, loaded.descriptions, loaded.wording, loaded.max_new_tokens) == (
        prompt,
        contract.labels,
        contract.descriptions,
        "0123456789abcdef",
        300,
    )
    sft = PromptContract(prompt, ["MISC", "PER"], descriptions={"MISC": "other names", "PER": "persons"})
    further = PromptContract.trained(
        prompt, [Schema(("PER", "LOC"), {"PER": "people"})], sft, wording="", max_new_tokens=None
    )
    assert further.labels == ["MISC", "PER", "LOC"]  # what the model learnt before stays, first
    budgeted = PromptContract(prompt, ["PER"], max_new_tokens=2048)
    assert (
        PromptContract.trained(prompt, [], budgeted, wording="", max_new_tokens=None).max_new_tokens == 2048
    )
    assert PromptContract.trained(prompt, [], budgeted, wording="", max_new_tokens=512).max_new_tokens == 512
    assert further.descriptions == {"MISC": "other names", "PER": "persons"}
    TRAINED.save(tmp_path / "older")  # without descriptions, as contracts were written before
    assert "descriptions" not in json.loads((tmp_path / "older" / PROMPT_CONTRACT).read_text())
    assert PromptContract.load(tmp_path / "older").descriptions == {}
    assert PromptContract.load(tmp_path / "older").max_new_tokens is None  # no budget recorded


def test_generation_takes_the_budget_the_model_was_trained_with_unless_given() -> None:
    """An evaluation or prediction that names no max_new_tokens lets a model trained here write as long
    as it learnt to (a fixed 1024 cut the rationales of a model trained on longer ones: no answer)."""
    contract = PromptContract(PromptArguments(), ["PER"], max_new_tokens=3000)
    unset = GenerationArguments(model_name_or_path="m", backend_options={"batch_size": 2})
    assert unset.within_budget(contract).max_new_tokens == 3000
    assert unset.within_budget(contract).sampling().max_new_tokens == 3000
    assert unset.within_budget(contract).backend_options == {"batch_size": 2}
    assert unset.within_budget(PromptContract(PromptArguments())).max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert unset.within_budget(None).max_new_tokens == DEFAULT_MAX_NEW_TOKENS  # a base model
    assert unset.sampling().max_new_tokens == DEFAULT_MAX_NEW_TOKENS  # a teacher asked as it is
    given = GenerationArguments(model_name_or_path="m", max_new_tokens=64)
    assert given.within_budget(contract).max_new_tokens == 64
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        GenerationArguments(model_name_or_path="m", max_new_tokens=0)  # not the default in disguise


@pytest.mark.parametrize("budget", [0, -5, 12.5, "4096", True])
def test_a_contract_with_a_budget_that_is_not_a_positive_integer_is_refused(
    tmp_path: Path, budget: Any
) -> None:
    (tmp_path / PROMPT_CONTRACT).write_text(
        json.dumps({"prompt": {}, "labels": ["PER"], "max_new_tokens": budget})
    )
    with pytest.raises(ValueError, match="not a prompt contract .*max_new_tokens must be a positive integer"):
        PromptContract.load(tmp_path)


def test_a_broken_contract_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / PROMPT_CONTRACT).write_text(json.dumps({"prompt": {"output_format": "yaml"}}))
    with pytest.raises(ValueError, match=f"{tmp_path / PROMPT_CONTRACT}: not a prompt contract"):
        PromptContract.load(tmp_path)


def test_choices_are_checked_when_the_config_is_built() -> None:
    with pytest.raises(ValueError, match="output_format 'yaml': choose one of"):
        PromptArguments(output_format="yaml")
    with pytest.raises(ValueError, match="backend 'vlm': choose one of .*gold-template"):
        GenerationArguments(backend="vlm")
    with pytest.raises(ValueError, match="no model: set model_name_or_path"):
        GenerationArguments().build_generator()
    # A negative limit read a file as [:-1] (all but its last sentence) and a Hub source as nothing.
    for arguments in (TrainerScriptArguments, lambda limit: EvalArguments(output_dir="out", limit=limit)):
        with pytest.raises(ValueError, match="limit must be 0 or more"):
            arguments(limit=-1)
        assert arguments(limit=0).limit == 0


def test_the_trainer_choices_are_values_trl_documents() -> None:
    """`TRAINER_CHOICES` checks TRL's values at parse time: each must be one TRL's help names (a value
    TRL drops or renames fails here after an upgrade)."""
    import re
    from dataclasses import fields

    from trl import GRPOConfig

    from reasoningner.configs import TRAINER_CHOICES

    helps = {f.name: f.metadata.get("help", "") for f in fields(GRPOConfig)}
    for name, choices in TRAINER_CHOICES.items():
        documented = {word.lower() for word in re.findall(r"[`']+(\w+)[`']", helps[name])}
        assert set(choices) <= documented, (name, set(choices) - documented)


def test_a_hub_model_s_contract_is_fetched_only_when_the_caller_loads_it_from_the_hub(
    tmp_path, monkeypatch
) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    TRAINED.save(tmp_path / "snapshot")
    asked: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str) -> str:
        asked.append((repo_id, filename))
        if repo_id != "me/tiny-ner":
            raise LocalEntryNotFoundError("offline")
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert PromptContract.load("me/tiny-ner") is None and asked == []  # never without from_hub
    assert PromptContract.load("me/tiny-ner", from_hub=True).prompt == TRAINED.prompt
    assert PromptContract.load("Qwen/Qwen3-8B", from_hub=True) is None
    assert asked == [("me/tiny-ner", PROMPT_CONTRACT), ("Qwen/Qwen3-8B", PROMPT_CONTRACT)]


def test_a_hub_id_is_owner_slash_name_that_is_not_a_local_path(tmp_path, monkeypatch) -> None:
    from reasoningner.configs import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    assert is_hub_id("Qwen/Qwen3-8B")
    for local in ("outputs/sft", "./model", "/abs/model", "~/model", "a/b/c", "model"):
        assert not is_hub_id(local), local


def _hub_error(kind: str) -> OSError:
    """What `hf_hub_download` raises: `missing` when the repository has no such file (404), `offline`
    when the Hub cannot be reached and the cache lacks the file (a connection error, a Hub outage)."""
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    if kind == "missing":
        request = httpx2.Request("HEAD", f"https://huggingface.co/me/sft/resolve/main/{PROMPT_CONTRACT}")
        return RemoteEntryNotFoundError(
            "404 Client Error: Entry Not Found", response=httpx2.Response(404, request=request)
        )
    return LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A fake `hf_hub_download` over an empty cache in `tmp_path`, online: `hub.answer` is what it returns
    (a contract's folder) or raises; `hub.asked` the (repo, file, revision) asked."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    TRAINED.save(tmp_path / "snapshot")
    state = SimpleNamespace(answer=tmp_path / "snapshot", asked=[])

    def download(repo_id: str, filename: str, revision: str | None = None) -> str:
        state.asked.append((repo_id, filename, revision))
        if isinstance(state.answer, Exception):
            raise state.answer
        return str(state.answer / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return state


def test_a_strict_load_reads_the_hub_contract_at_the_revision_and_a_missing_one_is_none(hub, caplog) -> None:
    loaded = PromptContract.load("me/sft", from_hub=True, revision="v1", strict=True)
    assert (loaded.prompt, loaded.labels) == (TRAINED.prompt, TRAINED.labels)
    assert hub.asked == [("me/sft", PROMPT_CONTRACT, "v1")]
    hub.answer = _hub_error("missing")  # a base model's repository: no contract, nothing to say
    with caplog.at_level(logging.WARNING, logger="reasoningner.configs"):
        assert PromptContract.load("Qwen/Qwen3-8B-Base", from_hub=True, strict=True) is None
    assert not caplog.records


def test_a_hub_that_cannot_be_asked_stops_a_strict_load_and_warns_otherwise(hub, caplog) -> None:
    hub.answer = _hub_error("offline")
    with pytest.raises(ConnectionError, match=f"me/sft: could not read its {PROMPT_CONTRACT} from the Hub"):
        PromptContract.load("me/sft", from_hub=True, strict=True)
    # Evaluation and predict load strictly too: a model asked with the default prompt shows little it learnt.
    with pytest.raises(ConnectionError, match="asked \\(or trained\\) with the given prompt settings"):
        GenerationArguments(model_name_or_path="me/sft").prompt_contract()
    with caplog.at_level(logging.WARNING, logger="reasoningner.configs"):
        assert PromptContract.load("me/sft", from_hub=True) is None
    assert f"me/sft: no {PROMPT_CONTRACT} from the Hub (LocalEntryNotFoundError" in caplog.text


def test_a_hub_lora_adapter_is_downloaded_for_vllm_which_applies_adapters_from_a_folder(
    hub, tmp_path, monkeypatch
) -> None:
    """vLLM serves an adapter on its base from a folder (`generation._lora_engine`): a published adapter
    was loaded as a full model. The revision asked is the adapter's; a full model is loaded as named."""
    import huggingface_hub

    from reasoningner import configs

    (hub.answer / "adapter_config.json").write_text('{"base_model_name_or_path": "Qwen/Qwen3-8B", "r": 16}')
    snapshots: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda repo_id, **options: snapshots.append((repo_id, options)) or str(hub.answer),
    )
    built: list[dict] = []
    monkeypatch.setattr(configs, "build_generator", lambda backend, **options: built.append(options))
    GenerationArguments("me/adapter", backend="vllm", backend_options={"revision": "v2"}).build_generator()
    assert built == [{"model": str(hub.answer)}] and snapshots == [("me/adapter", {"revision": "v2"})]
    assert hub.asked == [("me/adapter", "adapter_config.json", "v2")]
    hub.answer = _hub_error("missing")  # a full model's repository
    GenerationArguments("me/full", backend="vllm", backend_options={"revision": "v2"}).build_generator()
    assert built[-1] == {"model": "me/full", "revision": "v2"} and len(snapshots) == 1


def test_without_the_hub_the_cache_answers_and_offline_mode_only_warns(
    hub, tmp_path, caplog, monkeypatch
) -> None:
    from huggingface_hub import constants

    hub.answer = _hub_error("offline")
    # The cache remembers the file is missing from the commit `main` points to (a 404 seen earlier).
    repo = tmp_path / "cache" / "models--me--base"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / ".no_exist" / "abc123").mkdir(parents=True)
    (repo / ".no_exist" / "abc123" / PROMPT_CONTRACT).touch()
    assert PromptContract.load("me/base", from_hub=True, strict=True) is None
    # HF_HUB_OFFLINE=1 was asked for (huggingface_hub reads it once, at import): a model cached without its
    # contract is trained with a warning.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.WARNING, logger="reasoningner.configs"):
        assert PromptContract.load("me/sft", from_hub=True, strict=True) is None
    assert f"me/sft: no {PROMPT_CONTRACT} from the Hub" in caplog.text


@pytest.mark.parametrize(
    ("recipe", "refusal"),
    [
        (
            "learnig_rate: 0.001\n",
            r"RECIPE: unknown keys \['learnig_rate'\] for this stage .*did you mean 'learning_rate'",
        ),
        ("learning_rate: 2.0e-3x\n", r"invalid float value: '2.0e-3x' \(in RECIPE or the command line\)"),
        ("learning_rate: [0.001,\n", r"RECIPE: not valid YAML \(.*line 2"),
    ],
)
def test_a_recipe_mistake_is_one_line_naming_the_recipe(tmp_path: Path, recipe: str, refusal: str) -> None:
    """Not argparse's 150-line usage, a `--` key or a YAML traceback (`run_stage` prints the line)."""
    from tests.scripts import load_stage

    path = tmp_path / "sft.yaml"
    path.write_text(recipe)
    with pytest.raises(ValueError, match=refusal.replace("RECIPE", str(path))):
        load_stage("sft").make_parser().parse_args_and_config(args=["--config", str(path)])
