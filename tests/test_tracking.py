"""Lineage manifests, pipeline ids and W&B runs (offline) across the stages."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reasoningner import tracking
from reasoningner.tracking import (
    MANIFEST,
    PIPELINE_ENV,
    artifact_name,
    build_manifest,
    fingerprint,
    input_contents,
    path_artifact,
    pipeline_id,
    with_gold_column,
    write_manifest,
)
from tests.wandb_records import OfflineArtifact, read_offline_runs

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
GOLD = ["--backend", "gold-template"]  # stage 1 without a teacher model


def stage(name: str, *args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture()
def no_given_pipeline(monkeypatch):
    """Neither W&B's group nor ours set: stages inherit or make the pipeline id."""
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.delenv(PIPELINE_ENV, raising=False)


def test_fingerprint_changes_with_content_and_names(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    first = fingerprint(tmp_path)
    (tmp_path / "a.txt").write_text("y")
    second = fingerprint(tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({first, second, fingerprint(tmp_path)}) == 3


def test_a_manifest_records_inputs_its_pipeline_and_the_manifest_it_consumed(tmp_path, no_given_pipeline):
    upstream = tmp_path / "run" / "cot"
    data = upstream / "annotations.jsonl"
    upstream.mkdir(parents=True)
    data.write_text("{}\n")
    write_manifest(upstream, build_manifest("cot", {"x": 1}, [DATA / "conll2003_mini.txt"]))
    pipeline = json.loads((upstream / MANIFEST).read_text())["pipeline"]
    assert pipeline.startswith("run-cot-")
    manifest = build_manifest("sft", {"lr": 0.1}, [data, "Qwen/Qwen3-8B"])
    assert manifest["inputs"][0]["sha256"] == fingerprint(data)
    assert manifest["inputs"][0]["manifest"]["stage"] == "cot"
    assert manifest["inputs"][1] == {"path": "Qwen/Qwen3-8B", "sha256": None}
    assert manifest["versions"]["trl"] and manifest["git"].keys() == {"commit", "dirty"}
    write_manifest(tmp_path / "run" / "sft", manifest)
    assert json.loads((tmp_path / "run" / "sft" / MANIFEST).read_text())["pipeline"] == pipeline


def test_the_pipeline_id_is_given_inherited_or_made_by_the_first_stage(
    tmp_path, monkeypatch, no_given_pipeline
):
    cot = tmp_path / "demo" / "cot"
    made = pipeline_id(cot, [DATA / "conll2003_mini.txt"])
    assert made == pipeline_id(cot, [])  # every relaunch (and shard) of the stage: the same
    assert pipeline_id(tmp_path / "demo-2" / "cot", []) != made  # another demo run: another group
    write_manifest(cot, build_manifest("cot", {}, []))
    (cot / "annotations.jsonl").write_text("{}\n")
    assert (
        pipeline_id(tmp_path / "anywhere", [DATA / "conll2003_mini.txt", cot / "annotations.jsonl"]) == made
    )
    monkeypatch.setenv(PIPELINE_ENV, "exp-1")
    assert pipeline_id(tmp_path / "anywhere", [cot / "annotations.jsonl"]) == "exp-1"
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-3")
    assert pipeline_id(tmp_path / "anywhere", []) == "sweep-3"


def test_artifacts_are_built_alike_by_the_stage_that_writes_and_those_that_read(
    tmp_path, monkeypatch, no_given_pipeline
):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where add_file stages its copies
    cot, sft = tmp_path / "run" / "cot", tmp_path / "run" / "sft"
    write_manifest(cot, build_manifest("cot", {}, []))
    (cot / "annotations.jsonl").write_text("{}\n")
    write_manifest(sft, build_manifest("sft", {}, [cot / "annotations.jsonl"]))
    (sft / "model.safetensors").write_bytes(b"weights")
    pipeline = json.loads((sft / MANIFEST).read_text())["pipeline"]

    annotations = path_artifact(cot / "annotations.jsonl")
    assert (annotations.name, annotations.type) == (f"{pipeline}-annotations", "dataset")
    assert annotations.manifest.entries["annotations.jsonl"].ref is None  # uploaded
    model = path_artifact(sft)
    assert (model.name, model.type) == (f"{pipeline}-sft", "model")
    assert model.manifest.entries["model/model.safetensors"].ref == (sft / "model.safetensors").as_uri()
    assert model.manifest.entries["manifest.json"].ref is None
    assert path_artifact(os.path.relpath(sft)).digest == model.digest  # a reader's view: the same
    (sft / "model.safetensors").write_bytes(b"other weights")
    assert path_artifact(sft).digest == model.digest  # weights are never read
    write_manifest(sft, build_manifest("sft", {"retrained": True}, [cot / "annotations.jsonl"]))
    assert path_artifact(sft).digest != model.digest  # a new training: a new version
    for below in ("checkpoint-500", "merged"):  # each with a copy of its run's manifest
        (sft / below).mkdir()
        shutil.copy2(sft / MANIFEST, sft / below / MANIFEST)
        assert artifact_name(sft / below) == f"{pipeline}-sft-{below}"  # not the rl run's of that name

    base = path_artifact(tmp_path / "run")  # a folder no stage wrote: a base model
    assert (base.name, base.type) == ("run", "model")
    hub = path_artifact("Qwen/Qwen3-8B")
    assert (hub.name, hub.metadata) == ("Qwen--Qwen3-8B", {"hub_id": "Qwen/Qwen3-8B"})
    assert [e.ref for e in hub.manifest.entries.values()] == ["https://huggingface.co/Qwen/Qwen3-8B"]
    source = path_artifact("hf:DFKI-SLT/cross_ner:ai@test")
    assert (source.name, source.type) == ("hf-DFKI-SLT--cross_ner-ai-test", "dataset")
    assert [e.ref for e in source.manifest.entries.values()] == [
        "https://huggingface.co/datasets/DFKI-SLT/cross_ner"
    ]
    monkeypatch.setattr(tracking, "UPLOAD_LIMIT", 0)
    raw = path_artifact(DATA / "conll2003_mini.txt")
    assert (raw.name, raw.type) == ("data-conll2003_mini.txt", "dataset")
    assert [e.ref for e in raw.manifest.entries.values()] == [(DATA / "conll2003_mini.txt").as_uri()]


def test_the_first_reward_function_adds_the_gold_to_trls_completions_table():
    def format_reward(completions, **_):
        return [0.5] * len(completions)

    def f1_reward(completions, **_):
        return [1.0] * len(completions)

    first, second = with_gold_column([format_reward, f1_reward])
    assert first.__name__ == "format_reward" and second is f1_reward  # TRL names the reward columns by it
    columns = {}
    entities = [[{"start": 0, "end": 2, "label": "organisation", "text": "EU"}], []]
    rewards = first(completions=["a", "b"], entities=entities, log_extra=columns.__setitem__)
    assert rewards == [0.5, 0.5] and columns == {"gold": ["EU (organisation)", ""]}
    assert first(completions=["a"], entities=[[]]) == [0.5]  # a TRL without log_extra: no column


def test_a_resumed_training_run_continues_its_wandb_run_and_a_fresh_start_opens_another(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_RUN_ID", "")  # unset, and restored after the test (the stage sets both)
    monkeypatch.setenv("WANDB_RESUME", "")
    tracking.continue_wandb_run(tmp_path / "run", resuming=False)
    first = os.environ["WANDB_RUN_ID"]
    assert os.environ["WANDB_RESUME"] == "allow"
    assert (tmp_path / "run" / tracking.WANDB_RUN_ID).read_text().strip() == first
    monkeypatch.delenv("WANDB_RUN_ID")  # a relaunch is a new process
    tracking.continue_wandb_run(tmp_path / "run", resuming=True)
    assert os.environ["WANDB_RUN_ID"] == first
    monkeypatch.delenv("WANDB_RUN_ID")
    tracking.continue_wandb_run(tmp_path / "run", resuming=False)  # started afresh (overwrite_output_dir)
    second = os.environ["WANDB_RUN_ID"]
    assert second != first
    assert (tmp_path / "run" / tracking.WANDB_RUN_ID).read_text().strip() == second
    tracking.continue_wandb_run(tmp_path / "next-stage", resuming=False)  # in the same process
    assert os.environ["WANDB_RUN_ID"] not in (first, second)
    monkeypatch.setenv("WANDB_RUN_ID", "given")  # the user's choice wins and is not recorded
    tracking.continue_wandb_run(tmp_path / "other", resuming=False)
    assert os.environ["WANDB_RUN_ID"] == "given"
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="WANDB_RUN_ID=given is set: every shard would log into that one"):
        tracking.continue_wandb_run(tmp_path / "other", resuming=False, id_file="wandb_run_id.shard-0-of-2")


@pytest.fixture()
def offline_wandb(tmp_path):
    wandb_dir, data_dir = tmp_path / "wandb-runs", tmp_path / "wandb-data"
    wandb_dir.mkdir()
    return {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_DATA_DIR": str(data_dir),  # staged artifact files
        "WANDB_CACHE_DIR": str(data_dir),
        "WANDB_CONFIG_DIR": str(data_dir),
        "WANDB_RUN_GROUP": "",
        PIPELINE_ENV: "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


EVAL_RECIPE = """
backend: transformers
backend_options: {batch_size: 16, dtype: float32}
datasets:
  - {path: data/crossner/ai-dev-slice.txt, name: crossner-ai, probes: [opaque]}
  - {path: data/genia/dev-slice.json, name: genia}
"""


def only(artifacts: list[OfflineArtifact], type_: str) -> OfflineArtifact:
    (artifact,) = [a for a in artifacts if a.type == type_]
    return artifact


def test_stage_1_logs_its_progress_to_a_wandb_run_per_shard_that_a_relaunch_continues(
    tmp_path, offline_wandb
):
    """A days-long annotation shows in W&B as it goes (speed, acceptance, time left), each shard in a run
    of its own that a relaunch or requeue continues; the merge logs the report and the annotations."""
    common = ["--datasets", str(DATA / "conll2003_mini.txt"), "--output_dir", str(tmp_path / "cot"), *GOLD,
              "--report_to", "wandb", "--logging_seconds", "0"]  # fmt: skip
    stage("cot", *common, "--shard", "0/2", "--limit", "2", env=offline_wandb)  # shard 0: sentence 0
    stage("cot", *common, "--shard", "0/2", "--limit", "4", env=offline_wandb)  # relaunched: and sentence 2
    stage("cot", *common, "--shard", "1/2", "--limit", "4", env=offline_wandb)
    stage("cot", *common, "--merge", "true", "--limit", "4", env=offline_wandb)
    runs = read_offline_runs(Path(offline_wandb["WANDB_DIR"]))
    assert [run.name for run in runs] == ["cot.shard-0-of-2", "cot.shard-0-of-2", "cot.shard-1-of-2", "cot"]
    first, relaunched, other, merged = runs
    assert first.id == relaunched.id and len({first.id, other.id, merged.id}) == 3
    assert len({run.group for run in runs}) == 1 and {run.job_type for run in runs} == {"cot"}
    rows = [row for run in (first, relaunched) for row in run.history]
    assert [row["cot/sentences_done"] for row in rows] == [1, 2]  # one row a record: logging_seconds 0
    assert [row["cot/sentences_left"] for row in rows] == [0, 0]  # of the shard at each launch's limit
    assert rows[-1]["cot/acceptance_rate"] == 1.0 and rows[-1]["cot/failure_rate"] == 0.0
    assert relaunched.summary["sentences"] == 2 and not relaunched.outputs  # a shard's report, no artifact
    assert merged.summary["sentences"] == 4 and [a.name for a in merged.outputs] == [
        f"{merged.group}-annotations"
    ]


def test_a_second_launch_of_a_running_stage_1_leaves_its_wandb_run_alone(
    tmp_path, offline_wandb, held_elsewhere
):
    """It stops at the output's lock before W&B: it would have resumed the live run, ended it, and with
    --overwrite_output_dir pointed that run's later requeues at a new one."""
    out = tmp_path / "cot"
    (out / tracking.WANDB_RUN_ID).parent.mkdir()
    (out / tracking.WANDB_RUN_ID).write_text("live0run0id\n")
    with held_elsewhere(out / "annotations.jsonl"):
        second = subprocess.run(
            [sys.executable, str(ROOT / "stages" / "cot.py"), "--datasets", str(DATA / "conll2003_mini.txt"),
             "--output_dir", str(out), *GOLD, "--report_to", "wandb", "--overwrite_output_dir", "true"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **offline_wandb},
        )  # fmt: skip
    assert second.returncode != 0 and "being written by another run" in second.stderr
    assert (out / tracking.WANDB_RUN_ID).read_text() == "live0run0id\n"
    assert read_offline_runs(Path(offline_wandb["WANDB_DIR"])) == []


def test_a_stage_that_fails_ends_its_wandb_run_failed(tmp_path, offline_wandb):
    stage("cot", "--datasets", str(DATA / "conll2003_mini.txt"), "--output_dir", str(tmp_path / "cot"), *GOLD,
          "--report_to", "wandb", "--limit", "2", env=offline_wandb)  # fmt: skip
    records = (tmp_path / "cot" / "annotations.jsonl").read_text().splitlines()
    (tmp_path / "cot" / "annotations.jsonl").write_text(records[0] + "\n" + records[0] + "\n")  # a key twice
    failed = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "cot.py"), "--datasets", str(DATA / "conll2003_mini.txt"),
         "--output_dir", str(tmp_path / "cot"), *GOLD, "--report_to", "wandb", "--limit", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **offline_wandb},
    )  # fmt: skip
    assert failed.returncode != 0 and "is already at" in failed.stderr
    first, relaunched = read_offline_runs(Path(offline_wandb["WANDB_DIR"]))
    assert first.id == relaunched.id and (first.exit_code, relaunched.exit_code) == (0, 1)


def test_one_pipeline_run_is_one_wandb_group_and_one_artifact_chain(tmp_path, offline_wandb, tiny_model_dir):
    """CoT -> SFT -> GRPO -> eval, each with --report_to wandb: one group, the pipeline id of every
    manifest; each stage's input artifact is the previous stage's output (name, type, digest)."""
    run_dir = tmp_path / "pipeline-8"
    annotations = str(run_dir / "cot" / "annotations.jsonl")
    wandb = ["--report_to", "wandb"]
    eval_recipe = tmp_path / "eval.yaml"  # sets the model was not trained on, one with a probe
    eval_recipe.write_text(EVAL_RECIPE, encoding="utf-8")
    stage("cot", "--datasets", str(DATA / "conll2003_mini.txt"), "--output_dir", str(run_dir / "cot"),
          *GOLD, *wandb, env=offline_wandb)  # fmt: skip
    stage(
        "sft", "--config", str(ROOT / "recipes/tiny-cpu/sft.yaml"),
        "--model_name_or_path", str(tiny_model_dir), "--train_files", annotations,
        "--output_dir", str(run_dir / "sft"),
        "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2", *wandb,
        env=offline_wandb,
    )  # fmt: skip
    stage(
        "rl", "--config", str(ROOT / "recipes/tiny-cpu/rl.yaml"),
        "--model_name_or_path", str(run_dir / "sft"), "--train_files", annotations,
        "--output_dir", str(run_dir / "rl"), "--max_steps", "1", "--total", "4", "--num_generations", "2",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--max_completion_length", "8", "--save_strategy", "no", *wandb,
        env=offline_wandb,
    )  # fmt: skip
    stage(
        "eval", "--config", str(eval_recipe),
        "--model_name_or_path", str(run_dir / "rl"), "--output_dir", str(run_dir / "eval"),
        "--limit", "2", "--max_new_tokens", "8", *wandb,
        env=offline_wandb,
    )  # fmt: skip

    stages = ["cot", "sft", "rl", "eval"]
    manifests = {name: json.loads((run_dir / name / MANIFEST).read_text()) for name in stages}
    pipeline = manifests["cot"]["pipeline"]
    assert pipeline.startswith("pipeline-8-cot-")
    assert {manifest["pipeline"] for manifest in manifests.values()} == {pipeline}
    runs = {run.job_type: run for run in read_offline_runs(Path(offline_wandb["WANDB_DIR"]))}
    assert list(runs) == stages
    assert {(run.group, run.config["manifest"]["pipeline"]) for run in runs.values()} == {
        (pipeline, pipeline)
    }
    assert [run.name for run in runs.values()] == stages  # named after their output folders
    # A relaunch of SFT or GRPO would log into the same run: its id is kept in the output folder.
    assert [runs[name].id for name in ("sft", "rl")] == [
        (run_dir / name / tracking.WANDB_RUN_ID).read_text().strip() for name in ("sft", "rl")
    ]
    cot, sft, rl, evaluation = runs.values()

    data = only(cot.inputs, "dataset")
    assert (data.name, list(data.files)) == ("data-conll2003_mini.txt", ["conll2003_mini.txt"])
    used_annotations = only(sft.inputs, "dataset")
    (annotations_out,) = cot.outputs
    assert dataclasses.replace(annotations_out, used=True) == used_annotations
    assert used_annotations.name == f"{pipeline}-annotations" and used_annotations.files == {
        "annotations.jsonl": ""
    }
    assert only(rl.inputs, "dataset") == used_annotations  # the same version feeds SFT and GRPO
    base = only(sft.inputs, "model")
    assert base.name == tiny_model_dir.name and base.metadata == {"path": str(tiny_model_dir.resolve())}
    (sft_model,) = sft.outputs
    assert (sft_model.name, sft_model.type) == (f"{pipeline}-sft", "model")
    assert sft_model.files["manifest.json"] == ""  # uploaded; the weights only referenced, never read
    assert sft_model.files["model/model.safetensors"] == (run_dir / "sft" / "model.safetensors").as_uri()
    assert only(rl.inputs, "model") == dataclasses.replace(sft_model, used=True)
    (rl_model,) = rl.outputs
    assert (rl_model.name, rl_model.type) == (f"{pipeline}-rl", "model")
    assert only(evaluation.inputs, "model") == dataclasses.replace(rl_model, used=True)
    assert sorted(a.name for a in evaluation.inputs if a.type == "dataset") == [
        "crossner-ai-dev-slice.txt", "genia-dev-slice.json"
    ]  # fmt: skip
    (results,) = evaluation.outputs
    assert (results.name, results.type, sorted(results.files)) == (
        f"{pipeline}-eval", "evaluation", ["results.json", "results.md"]
    )  # fmt: skip

    assert cot.summary["acceptance_rate"] == 1.0 and cot.summary["teacher_f1_mean"] == 1.0
    assert manifests["sft"]["inputs"][0]["manifest"]["stage"] == "cot"
    assert manifests["sft"]["summary"]["train_loss"] > 0
    assert any("train/loss" in row for row in sft.history)

    completions = rl.tables["completions"]
    rewards = [f"{name}_reward" for name in ("format", "f1", "consistency", "schema", "grounding")]
    assert completions["columns"] == ["step", "prompt", "completion", *rewards, "gold", "advantage"]
    # The training step's table: the recipe's held-out evaluation after it (eval_files) neither adds
    # rows nor replaces it. Each row's gold is its own prompt's sentence's entities.
    sentences = [json.loads(line) for line in Path(annotations).read_text().splitlines()]
    golds = {"; ".join(f"{e['text']} ({e['label']})" for e in s["entities"]) for s in sentences}
    assert [row[0] for row in completions["data"]] == [1, 1]
    assert {row[-2] for row in completions["data"]} <= golds
    assert any("eval/reward" in row for row in rl.history)
    for _, prompt, _, *_, gold, _ in completions["data"]:
        sentence = prompt[0]["content"].rsplit("Sentence: ", 1)[1]
        mentions = re.findall(r"(.+?) \((\w+)\)(?:; |$)", gold)
        assert mentions and all(text in sentence for text, _ in mentions), (sentence, gold)

    tables = evaluation.tables
    assert {"text/avg_f1", "exact/avg_f1"} <= evaluation.summary.keys()
    assert len(tables["results"]["data"]) == 2 * 2  # modes x datasets
    assert tables["per_type"]["columns"] == ["mode", "dataset", "type", "gold", "predicted", "precision",
                                             "recall", "f1"]  # fmt: skip
    assert {row[0] for row in tables["per_type"]["data"]} == {"text", "exact"}
    assert {row[1] for row in tables["per_type"]["data"]} <= {"crossner-ai", "genia"}
    assert {row[0] for row in tables["errors"]["data"]} == {"normal", "opaque"}
    assert [row[:3] for row in tables["probe_drops"]["data"]] == [
        ["crossner-ai", "opaque", "text"], ["crossner-ai", "opaque", "exact"]
    ]  # fmt: skip
    outputs = (run_dir / "eval" / "generations.jsonl").read_text().splitlines()
    columns = ["dataset", "variant", "id", "text", "gold", "output", "parsed", "errors"]
    assert tables["generations"]["columns"] == columns
    assert len(tables["generations"]["data"]) == evaluation.summary["outputs"] == len(outputs) == 6
    assert evaluation.summary["outputs_in_generations_table"] == 6


def test_the_commit_is_the_checkout_s_or_in_the_image_the_one_it_was_built_from(tmp_path, monkeypatch):
    checkout = tracking.git_commit()
    assert checkout["commit"] and len(checkout["commit"]) == 40
    image = tmp_path / "workspace"  # the image's copy of the repository has no .git
    (image / "reasoningner").mkdir(parents=True)
    (image / "reasoningner" / "tracking.py").write_text("# the code\n")
    (tmp_path / "notes.txt").write_text("mine\n")

    def git(*args: str) -> str:
        command = ["git", "-C", str(tmp_path), "-c", "user.name=a", "-c", "user.email=a@b", "-c",
                   "commit.gpgsign=false", *args]  # fmt: skip
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    # ... and may sit in another repository (a mounted home) that does not track it: not its commit.
    git("init", "-q")
    git("add", "notes.txt")
    git("commit", "-q", "--no-verify", "-m", "around")
    monkeypatch.delenv("REASONINGNER_GIT_COMMIT", raising=False)
    assert tracking.git_commit(image) == {"commit": None, "dirty": None}
    # A repository that tracks the code as a folder (a monorepo) is its code's: changes elsewhere in it
    # are not this code's.
    git("add", "workspace")
    git("commit", "-q", "--no-verify", "-m", "the code")
    (tmp_path / "notes.txt").write_text("changed\n")
    assert tracking.git_commit(image) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (image / "reasoningner" / "tracking.py").write_text("# changed\n")
    assert tracking.git_commit(image)["dirty"] is True
    git("rm", "-q", "--cached", "-r", "workspace")
    git("commit", "-q", "--no-verify", "-m", "untracked again")
    monkeypatch.setenv("REASONINGNER_GIT_COMMIT", "")  # an image built without --build-arg GIT_COMMIT
    assert tracking.git_commit(image) == {"commit": None, "dirty": None}
    monkeypatch.setenv("REASONINGNER_GIT_COMMIT", "0" * 40)  # docker build --build-arg GIT_COMMIT=...
    assert tracking.git_commit(image) == {"commit": "0" * 40, "dirty": None}
    assert tracking.git_commit() == checkout  # a checkout's own git wins


def test_a_model_folder_s_contents_are_its_weights(tmp_path):
    """What a relaunch compares of its starting model: not its card, manifest, checkpoints or
    training_args.bin, which a finished run relaunched rewrites."""
    model = tmp_path / "sft"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "training_args.bin").write_bytes(b"args")
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    before = input_contents([model, data, "hf:OWNER/NAME@train"])
    assert [path for path, _ in before] == [str(model), str(data)]  # a Hub name is not local
    (model / "training_args.bin").write_bytes(b"other args")
    (model / "README.md").write_text("card")
    (model / "checkpoint-9").mkdir()
    assert input_contents([model, data]) == before
    (model / "model.safetensors").write_bytes(b"other weights")
    data.write_text("{}\n{}\n")
    after = input_contents([model, data])
    assert [digest for _, digest in after] != [digest for _, digest in before]
    assert all(a != b for (_, a), (_, b) in zip(after, before, strict=True))
