"""The model card a trained model carries, and publishing the model with it on the Hub.

SFT and GRPO write `README.md` beside the weights from what the run recorded: the prompt contract
(`prompt_contract.json`: how to ask the model, its labels) and the manifest (`manifest.json`: base
model, data with fingerprints, settings, last metrics). TRL's own card knows none of this (it reads
"fine-tuned version of [None]" for a local base model), so this one replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reasoningner.configs import (
    PROMPT_CONTRACT,
    PromptArguments,
    PromptContract,
    is_adapter,
    is_hub_id,
    local_manifest,
)
from reasoningner.files import write_whole
from reasoningner.generation import adapter_config, vllm_lora_rank
from reasoningner.prompts import ner_instruction
from reasoningner.sources import is_source, parse_source
from reasoningner.spans import Schema
from reasoningner.tracking import MANIFEST, RUN_DATA, RUN_SETTINGS, WANDB_RUN_ID, data_sources

CARD = "README.md"
STAGE_NAMES = {"sft": "CoT tuning (TRL SFT)", "rl": "reasoning enhancement (TRL GRPO)"}
# Settings worth a line of the card; the whole configuration is in manifest.json.
CARD_SETTINGS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "lr_scheduler_type", "use_peft", "lora_r", "num_generations", "beta",
    "loss_type", "reward_funcs", "reward_weights", "reward_parse", "seed",
)  # fmt: skip
# Files a run keeps beside its model about its progress (settings, data digests, W&B id, files being
# written, writers' locks): never the model, nor what it answers.
RUN_PROGRESS = [RUN_SETTINGS, RUN_DATA, WANDB_RUN_ID, "*.partial", "*.lock"]
# Files of an output folder that are not the model: not published.
NOT_PUBLISHED = ["checkpoint-*", *RUN_PROGRESS, "runs/*", "completions/*"]


def hub_base(model: str) -> str | None:
    """The Hub model a training run started from, followed through local stages (GRPO from an SFT
    folder, which started from the Hub model): what the card names as `base_model`."""
    for _ in range(8):  # a chain of stages, not a cycle
        if is_hub_id(model):
            return model
        manifest = local_manifest(model)
        if manifest is None:
            return None
        model = str(json.loads(manifest.read_text(encoding="utf-8"))["config"].get("model_name_or_path", ""))
    return None


def model_card(
    model: str, manifest: dict[str, Any], contract: PromptContract, adapter: dict[str, Any] | None = None
) -> str:
    """The card of the model found (or to be published) at `model`, from its manifest and contract;
    `adapter`: the `adapter_config.json` of a LoRA adapter published alone (PEFT loads it on its base)."""
    config = manifest["config"]
    base = str(config.get("model_name_or_path", ""))
    labels = contract.labels
    lineage = data_sources(manifest)  # this stage's training files, every earlier stage's, their corpora
    hub_data = [  # Hub repositories only: a local stand-in names nothing others can load
        repo for source in lineage if is_source(source) and (repo := parse_source(source).repo)
    ]
    front = ["---", f"library_name: {'peft' if adapter else 'transformers'}", "pipeline_tag: text-generation"]
    front += ["tags: [reasoningner, named-entity-recognition, trl, " + manifest["stage"] + "]"]
    if origin := hub_base(base):
        front.append(f"base_model: {origin}")
    if hub_data:
        front.append("datasets: [" + ", ".join(dict.fromkeys(hub_data)) + "]")
    front.append("---")
    # vLLM serves an adapter on the base it was trained on (not a stage it continued), with its trained
    # chat template, under a name of its own (the base's generation config applies).
    served_by, served_as = model, model
    if adapter is not None:
        rank = vllm_lora_rank(adapter)
        served_by = (
            f"{adapter.get('base_model_name_or_path')} --tokenizer {model} --enable-lora "
            f"--lora-modules ner={model}" + (f" --max-lora-rank {rank}" if rank else "")
        )
        served_as = "ner"
    example = "Peter Blackburn met EU officials in Brussels ."
    # Every label: a prompt copied from the card asks what `predict` asks by default.
    asked = contract.asked(Schema(tuple(labels))) if labels else Schema(("person", "organisation"))
    raw_prompt = ner_instruction(example, asked, contract.prompt)
    reasoning = contract.prompt.reasoning
    label_lines = [
        f"- `{label}`" + (f": {contract.descriptions[label]}" if label in contract.descriptions else "")
        for label in labels
    ]
    prompt_rows = [f"| `{name}` | `{getattr(contract.prompt, name)}` |" for name in PromptArguments.DEFAULTS]
    if contract.max_new_tokens:  # the output budget it was trained with: predict's default
        prompt_rows.append(f"| `max_new_tokens` | `{contract.max_new_tokens}` |")
    data_rows = [
        f"| `{entry['path']}` | `{(entry.get('sha256') or 'not local')[:16]}` |"
        for entry in manifest["inputs"]
        if entry["path"] != base
    ]
    settings = [
        f"| `{key}` | `{config[key]}` |"
        for key in CARD_SETTINGS
        if config.get(key) is not None and (config.get("use_peft") or not key.startswith("lora_"))
    ]
    metrics = manifest.get("summary") or {}
    return "\n".join(
        [
            *front,
            f"# {Path(model).name}",
            "",
            (
                "A named-entity recognizer that reasons (a `<think>` rationale) before it answers, "
                if reasoning
                else "A named-entity recognizer that answers without a rationale, "
            )
            + f"trained with reasoningner, stage {STAGE_NAMES.get(manifest['stage'], manifest['stage'])}, "
            f"from `{base}`.",
            "",
            "## Labels",
            "",
            *(label_lines or ["(none recorded: give the labels to find)"]),
            "",
            "## Usage",
            "",
            "A model must be asked as it was trained: `reasoningner` reads how from `prompt_contract.json`.",
            "",
            "```python",
            "from reasoningner.predict import NERModel",
            "",
            f'with NERModel.from_pretrained("{model}") as model:',
            f'    print(model.predict_entities("{example}", {labels[:4]!r}))',
            "```",
            "",
            "```bash",
            f"reasoningner predict --model {model} texts.txt   # one text per line in, JSON lines out",
            "```",
            "",
            "`reasoningner` is installed from its repository (`pip install -e .` in a clone); it also maps "
            "the answer back to character offsets. Without it, ask the model with its chat template and "
            "the prompt below as the only user turn (no system prompt"
            + (", and no `enable_thinking=False`, which fills in an empty rationale" if reasoning else "")
            + "), greedily, as evaluation asks ("
            + (
                "`do_sample=False`, or `temperature=0` from a server: an adapter has no generation config "
                "of its own, and its base's may sample), "
                if adapter is not None
                else "the saved generation config's default; `temperature=0` from a server), "
            )
            + (f"up to {contract.max_new_tokens} new tokens, " if contract.max_new_tokens else "")
            + "and read "
            + (
                "the answer after `</think>` (with vLLM's reasoning parser, the whole `content`). The prompt:"
                if reasoning
                else "the reply as the answer, after an empty `<think></think>` where the chat template "
                "writes one (Qwen3's). The prompt:"
            ),
            "",
            "```text",
            raw_prompt,
            "```",
            "",
            "```python",
            f"# vllm serve {served_by}",
            "from openai import OpenAI",
            "",
            'prompt = open("prompt.txt").read()  # the text above, your sentence after "Sentence: "',
            'reply = OpenAI(base_url="http://localhost:8000/v1", api_key="none").chat.completions.create(',
            f'    model="{served_as}", messages=[{{"role": "user", "content": prompt}}], temperature=0'
            + (f", max_tokens={contract.max_new_tokens}" if contract.max_new_tokens else "")
            + ",",
            ")",
            *(
                ["# None when cut off inside the rationale under a reasoning parser: raise max_tokens"]
                * reasoning
            ),
            'answer = (reply.choices[0].message.content or "").rsplit("</think>", 1)[-1]',
            "```",
            "",
            "## Prompt contract",
            "",
            "| setting | value |",
            "| --- | --- |",
            *prompt_rows,
            "",
            "## Training data",
            "",
            "| input | sha256 (first 16) |",
            "| --- | --- |",
            *data_rows,
            "",
            "Behind it, over every stage (training files, and the corpora their records name): "
            + (", ".join(f"`{source}`" for source in lineage) or "none recorded")
            + ".",
            "",
            "## Training",
            "",
            "| setting | value |",
            "| --- | --- |",
            *settings,
            "",
            "Last logged metrics (of the final attempt of a run that was relaunched: `train_runtime` and "
            "`train_loss` cover its steps only): "
            + (
                ", ".join(f"`{k}` {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
                or "none"
            )
            + ". Every setting, the code's commit and the library versions are in `manifest.json`.",
            "",
            "## Evaluation",
            "",
            "Not evaluated by the training stage: `python stages/eval.py --config <recipe> "
            f"--model_name_or_path {model}` writes `results.md` (per dataset and type, both matching modes).",
            "",
        ]
    )


def write_model_card(output_dir: str | Path, repo_id: str | None = None) -> Path:
    """`README.md` of a trained model's folder (and of its `merged/` model), named as it is published."""
    output_dir = Path(output_dir)
    manifest = json.loads((output_dir / MANIFEST).read_text(encoding="utf-8"))
    contract = PromptContract.load(output_dir)
    if contract is None:
        raise FileNotFoundError(f"{output_dir / PROMPT_CONTRACT}: a trained model's folder has one")
    for folder in (output_dir, output_dir / "merged"):
        if folder.is_dir():
            name = repo_id or str(folder)
            adapter = adapter_config(folder) if is_adapter(folder) else None
            write_whole(folder / CARD, model_card(name, manifest, contract, adapter))
    return output_dir / CARD


def hub_repository(name: str, output_dir: str | Path, private: bool = False) -> str:
    """The full id (`owner/name`) of the Hub repository `name` names, made now if missing (the token
    comes from `HF_TOKEN` or the login): a training stage asks before it trains, so that a missing login
    or a name the account may not use fails then, not after days of training, and so that the card names
    the repository users load (a bare `name` is the account's).

    Publishing replaces every file there (`publish`): a repository that holds another model (one not
    published from a folder of this name, or not by us) is refused, before training."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    repo_id = api.create_repo(name, private=private, exist_ok=True).repo_id
    files = [file for file in api.list_repo_files(repo_id) if file != ".gitattributes"]
    if files:
        published_from = None
        if MANIFEST in files:
            manifest = json.loads(Path(hf_hub_download(repo_id, MANIFEST)).read_text(encoding="utf-8"))
            published_from = manifest.get("config", {}).get("output_dir")
        if published_from is None or run_folder(published_from) != run_folder(output_dir):
            raise ValueError(
                f"{repo_id} holds another model ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}; "
                f"published from {published_from or 'elsewhere'}), whose files publishing would delete: "
                "give --hub_model_id another name, or empty that repository"
            )
    return repo_id


def run_folder(output_dir: str | Path) -> str:
    """A run's folder as a published repository records it: its path under `outputs/`
    (`reasoningner/qwen3-8b/sft`), else its last two parts, however the path is spelled. The last two
    alone took the paper recipes' run and the project's (`qwen3-8b/sft`) for one, and one published over
    the other."""
    parts = Path(output_dir).resolve().parts
    under = parts[len(parts) - parts[::-1].index("outputs") :] if "outputs" in parts else ()
    return "/".join(under or parts[-2:])


def default_repository(output_dir: str | Path) -> str:
    """The repository a run publishes to unless told (`hub_model_id`): `run_folder` with dashes
    (`outputs/reasoningner/qwen3-8b/sft`: `reasoningner-qwen3-8b-sft`)."""
    return run_folder(output_dir).replace("/", "-")


def publish(output_dir: str | Path, repo_id: str) -> str:
    """Upload the model users load to the Hub repository `repo_id`: the folder's (weights, tokenizer,
    card, contract, manifest; no checkpoints), or its `merged/` model when there is one (an adapter
    needs its base and a LoRA-enabled engine to run). It replaces the repository's files, so that
    nothing of an earlier publish (an adapter beside new full weights) is loaded with the new model."""
    from huggingface_hub import HfApi

    merged = Path(output_dir) / "merged"
    commit = HfApi().upload_folder(
        repo_id=repo_id,
        folder_path=str(merged if merged.is_dir() else output_dir),
        ignore_patterns=NOT_PUBLISHED,
        delete_patterns="*",  # .gitattributes stays (huggingface_hub keeps it)
        commit_message="reasoningner: trained model, card and prompt contract",
    )
    return str(getattr(commit, "commit_url", commit))
