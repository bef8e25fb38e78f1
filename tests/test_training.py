"""What the SFT and GRPO stages share: the policy handed to GRPO, and how the model is loaded."""

from types import SimpleNamespace

import pytest

from reasoningner.training import check_adapter_start, check_publishable, model_init_kwargs, policy_model


def test_a_full_model_is_handed_over_by_path_and_a_lora_adapter_as_a_trainable_peft_model(
    tmp_path, tiny_model_dir
):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    assert policy_model(str(tiny_model_dir), {"dtype": "float32"}) == str(tiny_model_dir)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter_dir = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter_dir)
    policy = policy_model(str(adapter_dir), {"dtype": "float32", "attn_implementation": None})
    assert isinstance(policy, PeftModel)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)

    # On a bf16 base PEFT upcasts the adapter to fp32, which ZeRO-3's one-dtype gathers refuse.
    bf16 = {"dtype": "bfloat16", "attn_implementation": None}
    lora_dtypes = lambda model: {p.dtype for n, p in model.named_parameters() if "lora_" in n}  # noqa: E731
    assert lora_dtypes(policy_model(str(adapter_dir), bf16)) == {torch.float32}
    zero3 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3))
    assert lora_dtypes(policy_model(str(adapter_dir), bf16, zero3)) == {torch.bfloat16}

    check_adapter_start(SimpleNamespace(model_name_or_path=str(adapter_dir), use_peft=False))
    check_adapter_start(SimpleNamespace(model_name_or_path=str(tiny_model_dir), use_peft=True))
    with pytest.raises(ValueError, match=r"is a LoRA adapter, which GRPO continues.*--use_peft false"):
        check_adapter_start(SimpleNamespace(model_name_or_path=str(adapter_dir), use_peft=True))


def test_model_options_override_the_recipes_model_init_kwargs_and_keep_the_rest():
    training_args = SimpleNamespace(model_init_kwargs={"use_kernels": True, "dtype": "float16"})
    model_args = SimpleNamespace(model_revision="main", dtype="bfloat16", attn_implementation="sdpa")
    assert model_init_kwargs(training_args, model_args) == {
        "use_kernels": True,
        "revision": "main",
        "dtype": "bfloat16",
        "attn_implementation": "sdpa",
    }


def test_the_trainer_loads_without_hub_kernels_unless_the_recipe_asks():
    model_args = SimpleNamespace(model_revision=None, dtype="float32", attn_implementation="sdpa")
    assert model_init_kwargs(SimpleNamespace(model_init_kwargs=None), model_args)["use_kernels"] is False
    asked = SimpleNamespace(model_init_kwargs={"use_kernels": True})
    assert model_init_kwargs(asked, model_args)["use_kernels"] is True


def test_a_trainer_starting_from_a_hub_model_takes_its_prompt_contract_from_the_hub(tmp_path, monkeypatch):
    """GRPO from an SFT model published on the Hub asks it as it was trained (the recipe sets no prompt
    key); a Hub that cannot be asked stops the run before any model loads."""
    import json

    import huggingface_hub
    import pytest
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from reasoningner.configs import PROMPT_CONTRACT, PromptArguments, PromptContract
    from reasoningner.tracking import trainer_manifest
    from reasoningner.training import start_trainer_stage
    from tests.scripts import ROOT, load_stage

    trained = PromptContract(PromptArguments("xml", reasoning=False, compact_prompt=True), ["person"])
    trained.save(tmp_path / "snapshot")
    sft_data = ["hf:HuiHuang/NER-CoT@train", "corpus:conll2003"]  # its published manifest's lineage
    (tmp_path / "snapshot" / "manifest.json").write_text(
        json.dumps({"stage": "sft", "data_sources": sft_data})
    )
    asked = []

    def download(repo_id, filename, revision=None):
        asked.append((repo_id, filename, revision))
        if repo_id != "me/sft":
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)

    def start(model, out):
        recipe = ["--config", str(ROOT / "recipes/tiny-cpu/rl.yaml"), "--model_name_or_path", model,
                  "--model_revision", "v2", "--output_dir", str(tmp_path / out)]  # fmt: skip
        script_args, prompt, training_args, model_args = (
            load_stage("rl").make_parser().parse_args_and_config(args=recipe)
        )
        return start_trainer_stage("rl", script_args, prompt, training_args, model_args)

    started = start("me/sft", "rl")
    assert started.prompt == trained.prompt
    assert started.upstream == sft_data  # this run's manifest, card and contamination check carry them
    assert trainer_manifest("rl", [], [], [], started.upstream)["data_sources"] == sft_data
    assert asked == [("me/sft", PROMPT_CONTRACT, "v2"), ("me/sft", "manifest.json", "v2")]
    with pytest.raises(ConnectionError, match=f"me/unreachable: could not read its {PROMPT_CONTRACT}"):
        start("me/unreachable", "rl2")
    assert not (tmp_path / "rl2").exists()  # stopped before it claimed the output folder


def test_cut_conversations_are_those_at_max_length_that_do_not_end_as_the_others() -> None:
    from datasets import Dataset

    from reasoningner.training import cut_conversations

    end, masked = 9, -100
    rows = [  # (input_ids, labels): the trained part ends on 9 unless cut
        ([1, 2, 3, 9, 4], [masked, masked, 3, 9, masked]),
        ([1, 2, 3, 5, 6], [masked, masked, 3, 5, 6]),  # at max_length 5, cut
        ([1, 2, 3, 3, end], [masked, masked, 3, 3, end]),  # at max_length, ends as the others
        ([1, 2, end], [masked, 2, end]),
    ]
    dataset = Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]})
    assert cut_conversations(dataset, 5) == 1
    assert cut_conversations(dataset, None) == 0 and cut_conversations(dataset, 64) == 0
    assert cut_conversations(dataset.select([1]), 5) == 1  # all at max_length: all cut


def test_a_grpo_card_names_the_hub_base_through_its_sft_start_the_hub_datasets_and_the_raw_prompt(tmp_path):
    """Published from GRPO on a local SFT folder: the card still says which Hub model and datasets it
    comes from, and how to ask it without reasoningner."""
    import json

    from reasoningner.configs import PromptArguments, PromptContract
    from reasoningner.model_card import model_card
    from reasoningner.prompts import ner_instruction
    from reasoningner.spans import Schema

    sft = tmp_path / "outputs" / "qwen3-8b" / "sft"
    sft.mkdir(parents=True)
    sft_data = ["hf:HuiHuang/NER-CoT@train", "corpus:conll2003"]  # what the SFT stage recorded
    (sft / "manifest.json").write_text(
        json.dumps({"config": {"model_name_or_path": "Qwen/Qwen3-8B-Base"}, "data_sources": sft_data})
    )
    inputs = [{"path": "hf:ZWK/InstructUIE_data/IE_INSTRUCTIONS/NER@train?sets=CoNLL 2003"},
              {"path": "hf:tests/data/hub/NER-CoT@train"},
              {"path": str(sft), "manifest": {"path": str(sft / "manifest.json")}}]  # fmt: skip
    config = {"model_name_or_path": str(sft), "train_files": [entry["path"] for entry in inputs[:2]]}
    manifest = {"stage": "rl", "config": config, "inputs": inputs}  # as trainer stages write it
    contract = PromptContract(PromptArguments("grouped_json", reasoning=True), ["person", "location"])
    card = model_card("me/qwen3-8b-rl", manifest, contract)
    front = card.split("---")[1]
    assert "base_model: Qwen/Qwen3-8B-Base" in front and "library_name: transformers" in front
    # The repositories, not a local stand-in; the SFT stage's data too.
    assert "datasets: [ZWK/InstructUIE_data, HuiHuang/NER-CoT]" in front
    assert "`hf:HuiHuang/NER-CoT@train`, `corpus:conll2003`." in card
    asked = ner_instruction("Peter Blackburn met EU officials in Brussels .", Schema(("person", "location")),
                            contract.prompt)  # what NERModel and training ask with  # fmt: skip
    assert f"```text\n{asked}\n```" in card and "read the answer after `</think>`" in card
    # GRPO continuing a stage-2 adapter (its config's unused lora_r 16): vLLM serves the adapter on the
    # base it was trained on, with its trained template, at a rank vLLM takes, under a name of its own.
    adapter = {"base_model_name_or_path": "Qwen/Qwen3-8B-Base", "r": 48}
    adapter_card = model_card("me/adapter", manifest | {"config": config | {"lora_r": 16}}, contract, adapter)
    assert "library_name: peft" in adapter_card
    served = adapter_card.split("```python\n")[2].split("```", 1)[0]
    assert (
        "# vllm serve Qwen/Qwen3-8B-Base --tokenizer me/adapter --enable-lora --lora-modules ner=me/adapter "
        "--max-lora-rank 64\n" in served
    )
    assert 'model="ner"' in served
    assert "`do_sample=False`, or `temperature=0` from a server: an adapter has no generation config" in (
        adapter_card
    )
    # Described labels are shown and asked with their descriptions; an answer-only model says so.
    labels = ["person", "location", "organisation", "miscellaneous", "event"]
    described = PromptContract(
        PromptArguments("grouped_json", reasoning=False, descriptions=True),
        labels,
        descriptions={"person": "a human being"},
    )
    card = model_card("me/answer-only", manifest, described)
    assert "- `person`: a human being\n- `location`\n" in card
    # The prompt asks every label, as `predict` does (it showed the first four).
    asked = ner_instruction("Peter Blackburn met EU officials in Brussels .",
                            described.asked(Schema(tuple(labels))), described.prompt)  # fmt: skip
    assert f"```text\n{asked}\n```" in card and "a human being" in asked and "event" in asked
    # Qwen3's template has an answer-only model write an empty <think></think> first: the snippet skips it.
    assert "answers without a rationale" in card and "read the reply as the answer, after an empty" in card
    served = card.split("```python\n")[2].split("```", 1)[0]
    assert 'answer = (reply.choices[0].message.content or "").rsplit("</think>", 1)[-1]' in served


def test_a_lora_config_records_the_base_revision_it_trains_on():
    """PEFT loads an adapter's base at its config's revision (merge, GRPO, users): TRL leaves it unset."""
    from trl import ModelConfig

    from reasoningner.training import peft_config

    assert peft_config(ModelConfig(use_peft=True, model_revision="abc123")).revision == "abc123"
    assert peft_config(ModelConfig(use_peft=True)).revision == "main"  # ModelConfig's default
    assert peft_config(ModelConfig(use_peft=False, model_revision="abc123")) is None


def test_grpo_continuing_an_adapter_on_a_local_base_publishes_only_merged(tmp_path):
    """The adapter GRPO saves names its base as the stage-2 adapter did: a local path no one else has."""
    import json

    def adapter_on(base: str) -> str:
        folder = tmp_path / base.replace("/", "_")
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        return str(folder)

    continued = SimpleNamespace(model_name_or_path=adapter_on("/scratch/models/Qwen3-8B"), use_peft=False)
    with pytest.raises(ValueError, match="LoRA adapter on the local model /scratch/models/Qwen3-8B"):
        check_publishable(SimpleNamespace(merge_lora=False), continued)
    check_publishable(SimpleNamespace(merge_lora=True), continued)
    on_the_hub = SimpleNamespace(model_name_or_path=adapter_on("Qwen/Qwen3-8B"), use_peft=False)
    check_publishable(SimpleNamespace(merge_lora=False), on_the_hub)


def test_an_epoch_order_drawn_from_the_generator_accelerate_gives_the_sampler_is_drawn_again() -> None:
    """With `use_seedable_sampler: false` on several processes, accelerate sets a generator on a sampler
    that has none (the length-grouped one); the order must be drawn from it, and restored from its state."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from reasoningner.training import _OrderedSampler

    sampler = _OrderedSampler(LengthGroupedSampler(batch_size=4, lengths=[(7 * i) % 23 for i in range(64)]))
    sampler.generator = torch.Generator().manual_seed(7)  # what accelerate does
    first = list(sampler)
    sampler.resume_from = sampler.drawn_from  # a resumed run, its global random state elsewhere
    torch.manual_seed(123)
    assert list(sampler) == first
    assert list(sampler) != first  # the next epoch: another order
