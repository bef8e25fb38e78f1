"""Every setting a stage parses, each defined once: the dataclasses of the recipes and the CLI.

A stage's `make_parser()` parses a tuple of these with `RecipeParser` (TRL's `TrlParser`: YAML
recipe, then command line overrides), as TRL's own scripts parse `(ScriptArguments, SFTConfig, ModelConfig)`:

| stage | dataclasses |
| --- | --- |
| `stages/cot.py` | `CoTArguments`, `PromptArguments`, `GenerationArguments` |
| `stages/sft.py` | `TrainerScriptArguments`, `PromptArguments`, TRL's `SFTConfig`, `ModelConfig` |
| `stages/rl.py` | `RLScriptArguments`, `PromptArguments`, TRL's `GRPOConfig`, `ModelConfig` |
| `stages/eval.py` | `EvalArguments`, `PromptArguments`, `GenerationArguments` |

Shared ideas are shared classes, never copied fields: the prompt contract (`PromptArguments`), how
text is generated (`GenerationArguments`), how data files are read (`DataArguments`, the base of
every stage's script arguments). `RENAMED` lists keys of earlier versions: a recipe or command line
that still uses one is refused with the new name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import yaml
from trl import TrlParser

from reasoningner.compat import COMPAT
from reasoningner.files import write_whole
from reasoningner.formats import FORMATS
from reasoningner.generation import (
    ADAPTER_CONFIG,
    BACKENDS,
    Generator,
    SamplingConfig,
    adapter_config,
    build_generator,
    options_from,
)
from reasoningner.jobs import requeued, seconds_left
from reasoningner.metrics import MATCH_MODES
from reasoningner.readers import Dataset, OnError, read_dataset
from reasoningner.rewards import DEFAULT_WEIGHTS, PARSE_MODES, REWARDS
from reasoningner.sources import overlaps
from reasoningner.spans import Schema
from reasoningner.tracking import MANIFEST, data_sources

logger = logging.getLogger(__name__)

GOLD_TEMPLATE = "gold-template"  # stage 1's teacher-free "backend": rationales written from gold
LOCAL_BACKENDS = ("transformers", "vllm")  # they load the model here (a server names its own)

# Old recipe and command-line keys -> the one name each idea has now.
RENAMED = {
    "rationales": "reasoning",
    "teacher_model": "model_name_or_path",
}


PROMPT_CONTRACT = "prompt_contract.json"  # saved beside a trained model's weights
DEFAULT_MAX_NEW_TOKENS = 1024  # for a model whose contract records no budget (a base model, a teacher)
SAMPLERS = ("proportional", "reasoningner")  # how stage 3 draws its prompts (`training_data.rl_prompts`)


@dataclass
class PromptArguments:
    """The prompt contract: how a model is asked and how it answers.

    A model must be asked as it was trained, so the teacher (stage 1), SFT, GRPO, evaluation and
    prediction all build prompts from this one dataclass (`prompts.ner_instruction`). A field left
    unset (None) takes its value from `DEFAULTS` at once, and remembers it was not given: `resolve`
    then takes it from the contract saved beside the model (`PromptContract`) instead.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "output_format": "grouped_json",
        "reasoning": True,
        "descriptions": True,
        "compact_prompt": False,
    }

    output_format: str | None = field(
        default=None, metadata={"help": f"answer format: {', '.join(FORMATS)} (default grouped_json)"}
    )
    reasoning: bool | None = field(
        default=None,
        metadata={"help": "<think> rationale before the answer; false: the answer alone (default true)"},
    )
    descriptions: bool | None = field(
        default=None, metadata={"help": "label descriptions in the prompt (default true)"}
    )
    compact_prompt: bool | None = field(
        default=None, metadata={"help": "short prompts for small models trained from scratch (default false)"}
    )

    def __post_init__(self) -> None:
        self._given = frozenset(name for name in self.DEFAULTS if getattr(self, name) is not None)
        for name, default in self.DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        _check_choice("output_format", self.output_format, FORMATS)

    def resolve(self, contract: PromptContract | None) -> PromptArguments:
        """The settings to ask a model with: the given ones, the rest from its `contract` (if any).

        A given value that contradicts the contract is kept (an experiment may mean it), with one
        warning naming both: a model asked otherwise than it was trained answers worse.
        """
        if contract is None:
            return self
        for contradiction in self.contradictions(contract):
            logger.warning("%s", contradiction)
        given = {name: getattr(self, name) for name in self._given}
        return PromptArguments(**{name: getattr(contract.prompt, name) for name in self.DEFAULTS} | given)

    def contradictions(self, contract: PromptContract | None) -> list[str]:
        """The given settings that differ from those the model was trained with (its `contract`)."""
        if contract is None:
            return []
        return [
            f"{name}={getattr(self, name)!r} contradicts the prompt contract {contract.source}: the model "
            f"was trained with {name}={getattr(contract.prompt, name)!r}"
            for name in self.DEFAULTS
            if name in self._given and getattr(self, name) != getattr(contract.prompt, name)
        ]


@dataclass
class PromptContract:
    """What a trained model carries in `prompt_contract.json`: its prompt settings, the labels it was
    trained on and their descriptions in its training prompts, so that evaluation, prediction and the
    next stage ask it as it learned."""

    prompt: PromptArguments
    labels: list[str] = field(default_factory=list)
    source: str = ""  # where it was read from, for messages
    descriptions: dict[str, str] = field(default_factory=dict)
    # A fingerprint of the instruction's wording the model was trained on (`prompts.wording`), which the
    # settings above do not hold: the code words the prompt. Empty in contracts written before it.
    wording: str = ""
    # The output budget, in tokens, the model was trained for (SFT: `training.answer_budget`, twice its
    # longest answer; GRPO: max_completion_length): what evaluation and predict let it write unless told
    # otherwise, where a fixed default cut a long rationale short (no answer, read as "no entities").
    # None: not recorded (a contract written before it).
    max_new_tokens: int | None = None

    @classmethod
    def trained(
        cls,
        prompt: PromptArguments,
        schemas: Iterable[Schema],
        earlier: PromptContract | None = None,
        *,
        wording: str,
        max_new_tokens: int | None,
    ) -> PromptContract:
        """The contract of a model trained on examples of `schemas` worded as `wording` says, to write up
        to `max_new_tokens`: every label in first-seen order, with its first description (what
        `Schema.union` keeps). A model trained further (GRPO from SFT) keeps what `earlier`, its starting
        model's contract, lists first: it still knows those labels; and its budget, unless this stage
        sets one."""
        if max_new_tokens is None and earlier is not None:
            max_new_tokens = earlier.max_new_tokens
        if earlier is not None and earlier.labels:
            schemas = [Schema(tuple(earlier.labels), earlier.descriptions), *schemas]
        union = Schema.union(schemas)
        return cls(
            prompt,
            list(union.labels),
            descriptions=dict(union.descriptions),
            wording=wording,
            max_new_tokens=max_new_tokens,
        )

    def asked(self, schema: Schema) -> Schema:
        """`schema` as this model learnt to be asked it: a label it leaves undescribed gets the
        description of the training prompts, and exactly the trained labels come in the training order
        (`Schema.ordered_as`); what `schema` states itself is kept."""
        learned = {label: self.descriptions[label] for label in schema.labels if label in self.descriptions}
        if learned.keys() - schema.descriptions.keys():
            schema = Schema(schema.labels, learned | dict(schema.descriptions))
        return schema.ordered_as(self.labels)

    def save(self, directory: str | Path) -> Path:
        """Written whole: a kill mid-write would leave a contract the next stage refuses."""
        path = Path(directory) / PROMPT_CONTRACT
        path.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {"prompt": asdict(self.prompt), "labels": self.labels}
        if self.descriptions:
            payload["descriptions"] = self.descriptions
        if self.wording:
            payload["wording"] = self.wording
        if self.max_new_tokens is not None:
            payload["max_new_tokens"] = self.max_new_tokens
        write_whole(path, json.dumps(payload, indent=2) + "\n")
        return path

    @classmethod
    def load(
        cls,
        model: str | Path | None,
        from_hub: bool = False,
        *,
        revision: str | None = None,
        strict: bool = False,
    ) -> PromptContract | None:
        """The contract saved in a model directory (or in the run directory above a `checkpoint-N`),
        or, with `from_hub`, in the Hub repository `model` names (at `revision`); None for a model
        without one (a base model). Only the caller that loads the model from the Hub anyway asks the Hub.

        A Hub that cannot be asked (no connection, no access to the repository) costs a warning and
        gives None; with `strict` it is an error instead, for a trainer that would otherwise train on the
        recipe's prompt settings rather than the ones the model learnt (`hub_contract_folder`)."""
        if model is None:
            return None
        if from_hub and is_hub_id(model):
            model = hub_contract_folder(str(model), revision, strict) or model
        for folder in (Path(model), Path(model).parent):
            path = folder / PROMPT_CONTRACT
            if path.is_file():
                try:
                    payload = json.loads(path.read_text(encoding="utf-8"))
                    budget = payload.get("max_new_tokens")
                    if budget is not None and (type(budget) is not int or budget < 1):
                        raise ValueError(f"max_new_tokens must be a positive integer, got {budget!r}")
                    return cls(
                        PromptArguments(**payload["prompt"]),
                        list(payload.get("labels", [])),
                        str(path),
                        dict(payload.get("descriptions", {})),
                        str(payload.get("wording", "")),
                        budget,
                    )
                except (ValueError, TypeError, KeyError) as error:
                    raise ValueError(f"{path}: not a prompt contract ({error})") from None
            if not Path(model).name.startswith("checkpoint-"):
                break
        return None


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """`filename` of a Hub repository, downloaded (cached); None when the repository has none. When the
    Hub cannot be asked (no connection, offline mode, an unknown or gated repository, a server error),
    the cache answers if it knows: a copy of the file, or that it is missing; otherwise the OSError."""
    from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    where = {"revision": revision} if revision else {}
    try:
        return Path(hf_hub_download(repo_id, filename, **where))
    except RemoteEntryNotFoundError:
        return None  # the repository is there and has no such file
    except OSError:  # what the Hub raises when it cannot answer (HfHubHTTPError included)
        cached = try_to_load_from_cache(repo_id, filename, **where)
        if cached is _CACHED_NO_EXIST:
            return None
        if isinstance(cached, str):
            return Path(cached)
        raise


def hub_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit of the snapshot of a Hub model (or LoRA adapter) the cache holds for `revision`
    (default: main), as a loaded model's files are there; None when the cache has none."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("config.json", ADAPTER_CONFIG):  # an adapter's repository has no config.json
        cached = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(cached, str):
            return Path(cached).parent.name
    return None


def hub_contract_folder(repo_id: str, revision: str | None = None, strict: bool = False) -> str | None:
    """The folder holding the `prompt_contract.json` of a Hub model repository (`hub_file`); None when
    the repository has none (a base model).

    When neither the Hub nor the cache can answer: a warning and None; with `strict`, a ConnectionError
    naming the repository instead, unless offline mode (`HF_HUB_OFFLINE=1`, `TRANSFORMERS_OFFLINE=1`) was
    asked for, where the warning says the contract of a model cached without it could not be checked.
    """
    from huggingface_hub import constants

    try:
        path = hub_file(repo_id, PROMPT_CONTRACT, revision)
    except OSError as error:
        cause = type(error).__name__ + (f": {str(error).splitlines()[0]}" if str(error).strip() else "")
        if strict and not constants.is_offline_mode():  # what hf_hub_download did (read at import)
            raise ConnectionError(
                f"{repo_id}: could not read its {PROMPT_CONTRACT} from the Hub ({cause}). Without it, "
                "the model would be asked (or trained) with the given prompt settings, not the ones it "
                "was trained with: check the connection and the access to the repository, or download "
                f"the model (hf download {repo_id}) and run with HF_HUB_OFFLINE=1"
            ) from error
        logger.warning(
            "%s: no %s from the Hub (%s): if the model was trained here, download it with its contract "
            "(hf download %s %s manifest.json), or it is asked with the given prompt settings",
            repo_id, PROMPT_CONTRACT, cause, repo_id, PROMPT_CONTRACT,
        )  # fmt: skip
        return None
    return str(path.parent) if path is not None else None


@dataclass
class GenerationArguments:
    """Which backend generates with which model, and how it samples (stage 1's teacher, evaluation)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "model directory, hub id, or the name a server serves"}
    )
    backend: str = field(
        default="transformers",
        metadata={"help": f"{', '.join(sorted(BACKENDS))}, or {GOLD_TEMPLATE} (stage 1 only)"},
    )
    backend_options: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "keyword options of the backend (generation.py); JSON on the CLI"}
    )
    temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily"})
    top_p: float = 1.0
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "tokens an output may take; default: the budget a model trained here was trained with "
            f"(its prompt contract), else {DEFAULT_MAX_NEW_TOKENS}"
        },
    )
    seed: int | None = field(
        default=0,
        metadata={
            "help": "sampling seed (each of n samples seed + i); null: unseeded, which keeps vLLM's fastest "
            "sampler (a batch holding a seeded request skips FlashInfer's fused top-k/top-p kernel) at the "
            "cost of repeatable samples"
        },
    )

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, [*sorted(BACKENDS), GOLD_TEMPLATE])
        self.backend_options = options_from(self.backend_options)
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    @property
    def revision(self) -> str | None:
        """The Hub revision of the model (vLLM's `revision` engine option), which its contract is read at."""
        return self.backend_options.get("revision")  # type: ignore[union-attr]

    def prompt_contract(self) -> PromptContract | None:
        """The contract of the model generating: read from the Hub too for a Hub id, also the name a
        server serves (`vllm serve owner/name` serves it under that name). A Hub that cannot be asked is
        an error (`hub_contract_folder`, strict): a model asked otherwise than it learnt answers worse,
        and its scores would say nothing of it."""
        return PromptContract.load(
            self.model_name_or_path, from_hub=True, revision=self.revision, strict=True
        )

    def within_budget(self, contract: PromptContract | None) -> GenerationArguments:
        """These settings with `max_new_tokens` decided: as given, else the budget the model was trained
        with (`contract`), else the default."""
        if self.max_new_tokens is not None:
            return self
        budget = contract.max_new_tokens if contract is not None else None
        return dataclasses.replace(self, max_new_tokens=budget or DEFAULT_MAX_NEW_TOKENS)

    def training_sources(self) -> list[str]:
        """`training_sources` of the model generating, read from the Hub as `prompt_contract` is."""
        return training_sources(self.model_name_or_path, from_hub=True, revision=self.revision)

    def sampling(self, n: int = 1) -> SamplingConfig:
        return SamplingConfig(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if self.max_new_tokens is None else self.max_new_tokens,
            seed=self.seed,
        )

    def build_generator(self) -> Generator:
        """The backend with its options; `model_name_or_path` is its model unless the options name one."""
        if self.backend == GOLD_TEMPLATE:
            raise ValueError(f"the {GOLD_TEMPLATE} backend writes from gold and generates nothing")
        options = dict(self.backend_options)  # type: ignore[arg-type]
        if self.model_name_or_path:
            options.setdefault("model", self.model_name_or_path)
        if "model" not in options:
            raise ValueError("no model: set model_name_or_path")
        if self.backend == "vllm" and is_hub_id(options["model"]):
            options["model"] = hub_adapter_folder(options["model"], options) or options["model"]
        return build_generator(self.backend, **options)


def hub_adapter_folder(repo_id: str, options: dict[str, Any]) -> str | None:
    """A Hub repository holding a LoRA adapter, downloaded: vLLM applies an adapter from a folder, on the
    base model the adapter names (a published adapter had been loaded as a full model, and failed). Its
    `revision` option is then the adapter's, taken out of `options` (the base's is the adapter's record).
    None for a full model, or when neither the Hub nor the cache can tell."""
    try:
        config = hub_file(repo_id, ADAPTER_CONFIG, options.get("revision"))
    except OSError:
        return None
    if config is None or not config.is_file():
        return None
    from huggingface_hub import snapshot_download

    revision = options.pop("revision", None)
    return snapshot_download(repo_id, **({"revision": revision} if revision else {}))


@dataclass
class DataArguments:
    """How a stage reads its NER files (`readers.read_dataset`)."""

    reader: str = field(default="auto", metadata={"help": "reader of plain NER files; auto sniffs each file"})
    limit: int | None = field(
        default=None,
        metadata={"help": "only the first N examples of each file (of an hf: source, of its first N rows)"},
    )
    skip_bad: bool = field(
        default=False, metadata={"help": "skip malformed records (counted and logged) instead of stopping"}
    )

    def __post_init__(self) -> None:
        if (checks := getattr(super(), "__post_init__", None)) is not None:  # a base after it in the MRO
            checks()
        if self.limit is not None and self.limit < 0:  # a file read as [:-1], a Hub source as nothing
            raise ValueError(f"limit must be 0 or more (the first N examples of each file), got {self.limit}")

    def read(self, path: str | Path, reader: str | None = None) -> Dataset:
        """`path` read with `reader` (default: this `reader`), malformed records skipped when asked (the
        reader logs their count and the first one's `file:line`; `Dataset.skipped` holds them all)."""
        return read_dataset(path, reader or self.reader, on_error=self.on_error)

    @property
    def on_error(self) -> OnError:
        """How a reader takes a malformed record: skipped (logged with its `file:line`, counted) under
        `skip_bad`, else an error."""
        return "skip" if self.skip_bad else "raise"


@functools.cache
def _overwrite_ignored() -> None:
    """Said once however often a stage asks `fresh_start`."""
    logger.warning("a requeued job resumes: overwrite_output_dir is for its first attempt only")


@functools.cache
def _overwrite_this_run() -> None:
    """Said once however often a stage asks `fresh_start`."""
    logger.warning(
        "output_dir holds this very run (the same settings): it resumes; overwrite_output_dir starts afresh "
        "only over a run of other settings (delete its outputs to run this one again)"
    )


@dataclass
class ResumableArguments:
    """For stages that resume into their output folder (stage 1, SFT, GRPO)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "start afresh in an output folder a run with other settings left (else an error); a "
            "folder of this very run resumes, and so does a requeued SLURM job"
        },
    )
    stop_before_job_end: float = field(
        default=900,
        metadata={
            "help": "in a SLURM job with a time limit: seconds before it (besides the time between two "
            "checkpoints a run can resume from exactly) at which the stage saves, stops and requeues the "
            "job; 0: never"
        },
    )

    def fresh_start(self, this_run: bool) -> bool:
        """`overwrite_output_dir`, except where the output folder holds this very run (`this_run`: its
        outputs made with these settings), and in a requeued job: a job submitted again with the same
        command line (after a cancel, a failed node, a time limit without requeue), or a requeue of it,
        would delete what its attempts saved, days of training."""
        if self.overwrite_output_dir and this_run:
            _overwrite_this_run()
            return False
        if self.overwrite_output_dir and requeued():
            _overwrite_ignored()
            return False
        return self.overwrite_output_dir

    def job_ending(self, interval: float = 0.0) -> bool:
        """Whether the job's time limit is closer than `stop_before_job_end` plus `interval` (the time
        the stage takes to its next point of stopping)."""
        margin = self.stop_before_job_end
        left = seconds_left(margin) if margin else None
        return left is not None and left < margin + interval


@dataclass
class RunArguments(DataArguments):
    """Where a stage without a Trainer writes (trainer stages take these from TrainingArguments)."""

    output_dir: str | None = field(default=None, metadata={"help": "outputs go here (required)"})
    report_to: str = field(default="none", metadata={"help": "wandb or none"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.output_dir:
            raise ValueError("output_dir is required")


@dataclass
class CoTArguments(RunArguments, ResumableArguments):
    """Stage 1: which files the teacher annotates, how many samples, which ones are kept."""

    datasets: list[str] = field(default_factory=list, metadata={"help": "input files in any readable format"})
    template_context_words: int = field(
        default=3, metadata={"help": "gold-template: words of context quoted around each entity (0: none)"}
    )
    samples_per_sentence: int = field(default=1, metadata={"help": "teacher samples per sentence"})
    chunk_size: int = field(default=64, metadata={"help": "sentences handed to the backend at once"})
    f1_threshold: float = field(default=1.0, metadata={"help": "minimum teacher F1 against gold"})
    min_consistency: float = field(default=1.0, metadata={"help": "minimum rationale/answer consistency"})
    match_mode: str = field(default="text", metadata={"help": "F1 matching: text or exact"})
    gold_answer: bool = field(default=False, metadata={"help": "store the gold answer with the rationale"})
    shard: str = field(default="0/1", metadata={"help": "i/n: annotate every n-th sentence from i"})
    merge: bool = field(default=False, metadata={"help": "merge the shard files in output_dir, then stop"})
    logging_seconds: float = field(
        default=60, metadata={"help": "how often progress (speed, acceptance, time left) goes to W&B"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.shard_index()
        _check_choice("match_mode", self.match_mode, MATCH_MODES)
        if not self.logging_seconds >= 0:  # NaN too
            raise ValueError(f"logging_seconds must be 0 (every record) or more, got {self.logging_seconds}")

    def shard_index(self) -> tuple[int, int]:
        try:
            index, count = (int(part) for part in self.shard.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like i/n, got {self.shard!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"shard {self.shard!r}: need 0 <= i < n")
        return index, count


@dataclass
class TrainerScriptArguments(DataArguments, ResumableArguments):
    """SFT's script arguments, and what GRPO's share: training and held-out files, the LoRA merge."""

    train_files: list[str] = field(
        default_factory=list, metadata={"help": "stage 1 annotations or NER files"}
    )
    merge_lora: bool = field(default=False, metadata={"help": "also save the LoRA-merged model in merged/"})
    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "held-out files: SFT's eval loss, GRPO's reward on held-out prompts"},
    )


@dataclass
class RLScriptArguments(TrainerScriptArguments):
    eval_total: int | None = field(
        default=None, metadata={"help": "held-out prompts drawn over eval_files in proportion (default all)"}
    )
    total: int | None = field(default=None, metadata={"help": "prompts drawn over all files, proportionally"})
    cap_per_dataset: int | None = field(default=None, metadata={"help": "at most this many prompts per file"})
    reward_funcs: list[str] = field(
        default_factory=lambda: list(DEFAULT_WEIGHTS), metadata={"help": "names in rewards.REWARDS"}
    )
    reward_parse: str = field(
        default="strict",
        metadata={
            "help": "strict: entities are paid only on an answer without syntax problems; lenient: also on "
            "what the parser salvages (rewards module docstring)",
            "choices": list(PARSE_MODES),
        },
    )
    reward_fold_label_case: bool = field(
        default=False,
        metadata={"help": "rewards read a label equal to a schema label up to case as that label"},
    )
    sampler: str = field(
        default="proportional",
        metadata={
            "help": "proportional (shares of the uncapped sizes, largest remainder) or reasoningner (the "
            "paper's sample_grpo.py: shares of the capped sizes, floored)",
            "choices": list(SAMPLERS),
        },
    )


def check_rewards(
    names: list[str], weights: list[float] | None, parse: str = "strict", fold_label_case: bool = False
) -> None:
    """Every reward is registered (`rewards.REWARDS`) and, when weights are given, has one; how our
    rewards read an answer is set only where one of ours is paid (the paper's read it their own way)."""
    for name in names:
        if name not in REWARDS:
            close = difflib.get_close_matches(name, REWARDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(
                f"reward_funcs: unknown reward {name!r}{hint}; known: {', '.join(sorted(REWARDS))}"
            )
    if weights is not None and len(weights) != len(names):
        raise ValueError(
            f"{len(weights)} reward_weights for {len(names)} reward_funcs {names}: give one each"
        )
    if (
        names
        and all(name.startswith("reasoningie_") for name in names)
        and (parse != "strict" or fold_label_case)
    ):
        raise ValueError(
            "reward_parse and reward_fold_label_case set how our rewards read an answer; "
            f"{names} read it as the paper's code does and would ignore them: leave them out"
        )


@dataclass
class EvalArguments(RunArguments):
    """Evaluation sets (file, reader, labels, descriptions, probes: see `evaluate`) and scoring."""

    datasets: list[dict[str, Any]] = field(
        default_factory=list, metadata={"help": "evaluation sets: path, reader, name, labels, descriptions"}
    )
    primary_mode: str = field(default="text", metadata={"help": "the score that leads: text or exact"})
    compat: str = field(
        default="none",
        metadata={
            "help": "count as a paper's scripts count (`compat`): reasoningie (text scores, ReasoningNER's "
            "Table 1; grouped_json answers) or llms4ner (exact scores); none: ours"
        },
    )
    probes: list[str] = field(
        default_factory=list, metadata={"help": "memorization probes: opaque, shuffled"}
    )
    probe_seed: int = field(default=0, metadata={"help": "seed of the shuffled-label permutation"})
    max_prompt_chars: int | None = field(
        default=None,
        metadata={
            "help": "a sentence whose prompt is longer is not asked (prompt_too_long); default: the tokens "
            "the context leaves where the backend counts them, else 8,000 characters (a server)"
        },
    )
    allow_overlap: bool = field(
        default=False,
        metadata={
            "help": "evaluate sets the model was trained on (reported as in_domain) instead of refusing"
        },
    )
    # Set when the recipe is read: the overlaps found with the model's training data (results.json config),
    # and the evaluation sources they concern (each set's `in_domain` in results.json).
    in_domain: list[str] = field(default_factory=list, init=False)
    in_domain_sources: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("primary_mode", self.primary_mode, MATCH_MODES)
        _check_choice("compat", self.compat, COMPAT)


# Settings of TRL's and transformers' configs with a fixed set of values that those libraries only
# check when they use them (GRPO's first step, model loading): checked at parse time instead. The
# lists are TRL 1.16's (tests/test_configs.py compares them with its help texts).
TRAINER_CHOICES: dict[str, tuple[str, ...]] = {
    "loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
    "scale_rewards": ("group", "batch", "none", "true", "false"),
    "importance_sampling_level": ("token", "sequence"),
    "vllm_importance_sampling_mode": ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
    "vllm_mode": ("server", "colocate"),
}


# What a recipe setting needs installed: (setting, its value) -> (module, how to install it).
_VLLM = ("vllm", 'pip install "vllm>=0.22,<0.31"  (or: pip install -e ".[vllm]"; docker/ has it)')
_FLASH = ("flash_attn", "pip install flash-attn==2.8.3.post2 --no-build-isolation  (or use sdpa)")
NEEDS: dict[tuple[str, Any], tuple[str, str]] = {
    ("use_vllm", True): _VLLM,
    ("backend", "vllm"): _VLLM,
    ("attn_implementation", "flash_attention_2"): _FLASH,
    ("attn_implementation", "flash_attention_3"): ("flash_attn_interface", "build flash-attn 3 (hopper/)"),
    ("use_liger_kernel", True): ("liger_kernel", 'pip install -e ".[liger]"  (liger-kernel; docker/ has it)'),
}


def missing_packages(configs: Any) -> list[str]:
    """One line per package a setting of `configs` needs and this environment lacks, with the command
    that installs it."""
    found = []
    for config in configs:
        for (key, value), (module, command) in NEEDS.items():
            if getattr(config, key, None) == value and importlib.util.find_spec(module) is None:
                found.append(f"{key}: {value} needs {module}, not installed: {command}")
    return list(dict.fromkeys(found))


class RecipeParser(TrlParser):
    """TRL's parser (YAML recipe, then command line) that refuses a renamed key with its new name and
    an unknown recipe key before any dataclass is built (whose own checks would speak first), and
    checks the choices of TRL's settings (`TRAINER_CHOICES`, and the `choices` of any field) before
    any model loads. It then checks, in seconds, what would otherwise fail after the model loaded:
    packages the settings need (`missing_packages`; `check_environment = False` skips it, as the
    recipe lint does on a machine without GPUs), and an evaluation of sets the model was trained on
    (`check_contamination`), and that a model a backend loads here exists (`require_model`)."""

    check_environment = True
    recipe = "the recipe"  # its path once read, for messages

    def parse_args_and_config(self, args: Any = None, **kwargs: Any) -> tuple[Any, ...]:
        given = list(sys.argv[1:] if args is None else args)
        _refuse_renamed(arg[2:].split("=")[0] for arg in given if arg.startswith("--"))
        self.recipe = given[given.index("--config") + 1] if "--config" in given[:-1] else "the recipe"
        try:
            parsed = super().parse_args_and_config(args=given, **kwargs)
        except yaml.YAMLError as error:
            raise ValueError(f"{self.recipe}: not valid YAML ({' '.join(str(error).split())})") from None
        for config in parsed:
            if dataclasses.is_dataclass(config):
                check_choices(config)
        rl = next((c for c in parsed if isinstance(c, RLScriptArguments)), None)
        if rl is not None:  # TRL compares the weights with the rewards only once the model has loaded
            weights = next((c.reward_weights for c in parsed if hasattr(c, "reward_weights")), None)
            check_rewards(rl.reward_funcs, weights, rl.reward_parse, rl.reward_fold_label_case)
        for config in parsed:
            if getattr(config, "use_liger_kernel", False) and getattr(config, "use_cpu", False):
                logger.warning("use_liger_kernel: off on CPU (Liger's kernels are Triton GPU kernels)")
                config.use_liger_kernel = False
        missing = missing_packages(parsed) if self.check_environment else []
        if missing:
            raise ValueError("; ".join(missing))
        evaluation = next((c for c in parsed if isinstance(c, EvalArguments)), None)
        generation = next((c for c in parsed if isinstance(c, GenerationArguments)), None)
        if self.check_environment and generation is not None and generation.backend in LOCAL_BACKENDS:
            require_model(generation.backend_options.get("model") or generation.model_name_or_path)  # type: ignore[union-attr]
        if evaluation is not None and generation is not None:
            check_contamination(evaluation, generation.training_sources())
        return parsed

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        _refuse_renamed(kwargs)
        unknown = super().set_defaults_with_config(**kwargs)
        if unknown:
            keys = sorted(key.removeprefix("--") for key in unknown[::2])
            known = [action.dest for action in self._actions]
            hints = "".join(
                f" ({key!r}: did you mean {close[0]!r}?)"
                for key in keys
                if (close := difflib.get_close_matches(key, known, n=1))
            )
            raise ValueError(f"{self.recipe}: unknown keys {keys} for this stage{hints}")
        return unknown

    def error(self, message: str) -> NoReturn:
        """argparse's refusal of a value (the recipe's or the command line's) in one line, not its usage."""
        raise ValueError(f"{message} (in {self.recipe} or the command line)")


def eval_sources(datasets: Sequence[str | Mapping[str, Any]]) -> list[str]:
    """The file or source of each evaluation set of a recipe's `datasets` (a path, or an entry naming one)."""
    return [entry if isinstance(entry, str) else str(entry.get("path")) for entry in datasets]


def training_sources(
    model: str | Path | None, from_hub: bool = False, revision: str | None = None
) -> list[str]:
    """Every data source that went into a trained model (`tracking.data_sources` of its manifest, in its
    folder or the run folder above a `checkpoint-N` or a `merged` model; with `from_hub`, the one
    published with a Hub model, at `revision`). Empty for a model without a manifest (a base model) or
    whose Hub cannot be asked (a warning)."""
    if model is None:
        return []
    path = None
    if from_hub and is_hub_id(model):
        try:
            path = hub_file(str(model), MANIFEST, revision)
        except OSError as error:
            logger.warning("%s: no %s from the Hub (%s): training data not checked", model, MANIFEST, error)
    else:
        path = local_manifest(model)
    return data_sources(json.loads(path.read_text(encoding="utf-8"))) if path is not None else []


def local_manifest(model: str | Path) -> Path | None:
    """The manifest of a model trained here: in its folder, or in the run folder above a `checkpoint-N`
    or a `merged` model; None for a model without one (a base model)."""
    inside_run = Path(model).name.startswith("checkpoint-") or Path(model).name == "merged"
    folders = [Path(model), Path(model).parent] if inside_run else [Path(model)]
    return next((folder / MANIFEST for folder in folders if (folder / MANIFEST).is_file()), None)


def is_adapter(path: str | Path) -> bool:
    """A LoRA adapter folder (stage 2 with use_peft and no merge), not a full model."""
    return (Path(path) / ADAPTER_CONFIG).exists()


def adapter_base(path: str | Path) -> str:
    """The model a LoRA adapter folder is put on (PEFT's `base_model_name_or_path`)."""
    return str(adapter_config(path).get("base_model_name_or_path") or "")


def check_contamination(args: EvalArguments, training: list[str]) -> None:
    """An evaluation set that shares a file, a hub dataset or a corpus family (every CrossNER domain
    is one) with the model's training data is refused, or with `allow_overlap` reported as in-domain
    (`args.in_domain`, in results.json): a zero-shot number must not hide a trained-on set."""
    evaluated = eval_sources(args.datasets)
    found = overlaps(training, evaluated)
    if found and not args.allow_overlap:
        raise ValueError(
            "evaluation data overlaps the model's training data: "
            + "; ".join(found)
            + ". Evaluate other sets, or set allow_overlap: true to report these as in-domain"
        )
    args.in_domain = found
    args.in_domain_sources = [source for source in evaluated if overlaps(training, [source])]
    for message in found:
        logger.warning("in-domain: %s", message)


def is_hub_id(name: str | Path) -> bool:
    """Whether `name` names a Hub repository (`owner/name`) rather than a local path: not a path that
    exists, starts like one (`.`, `/`, `~`), has another number of parts, or begins with a folder that
    exists here (`outputs/sft`)."""
    name = str(name)
    path = Path(name).expanduser()
    return not (
        name.startswith((".", "/", "~"))
        or name.count("/") != 1
        or path.exists()
        or Path(path.parts[0]).exists()
    )


def require_model(name: str | None) -> None:
    """A model named by a local path must be there before anything loads: a missing stage output
    would otherwise be looked up on the Hub and fail with a long, unrelated traceback."""
    if not name:
        raise ValueError("no model: set model_name_or_path")
    if not is_hub_id(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(
            f"model {name} does not exist: run the stage that writes it first (GRPO starts from "
            "the SFT output_dir, SFT from a base model), or fix model_name_or_path (a Hub model is "
            "owner/name: openai-community/gpt2, not gpt2)"
        )


def check_choices(config: Any) -> None:
    """Every field of `config` with a fixed set of values holds one of them (None: unset)."""
    for spec in dataclasses.fields(config):
        choices = spec.metadata.get("choices") or TRAINER_CHOICES.get(spec.name)
        value = getattr(config, spec.name)
        if choices and value is not None:
            _check_choice(spec.name, str(value).lower() if isinstance(value, bool) else value, choices)


def _check_choice(key: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise ValueError(f"{key} {value!r}: choose one of {list(choices)}")


def _refuse_renamed(keys: Any) -> None:
    old = [key for key in keys if key in RENAMED]
    if old:
        raise ValueError("; ".join(f"{key} is now called {RENAMED[key]}" for key in old))
