"""Evaluation results: scores per variant and mode, error counts, and their renderings.

`evaluate` computes an `Evaluation`; this module only presents it: `results.json` (`to_dict`),
`results.md` (`to_markdown`) and the console table (`table`). Definitions of the error categories:
`reasoningner/evaluate.py`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any

from rich.table import Table

from reasoningner.compat import COUNTED_MODE
from reasoningner.metrics import MATCH_MODES, Counts, MatchMode, Report
from reasoningner.tracking import mentions

NORMAL = "normal"  # the variant asked with the real labels; probes are the others


@dataclass
class ErrorCounts:
    """The error categories of `evaluate` summed over outputs; `problems` counts outputs per kind."""

    outputs: int = 0
    format_failures: int = 0
    no_answer: int = 0
    cut_off: int = 0
    hallucinated: int = 0
    boundary_errors: int = 0
    type_errors: int = 0
    missed: int = 0
    spurious: int = 0
    problems: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        return ErrorCounts(**summed)

    def to_dict(self) -> dict[str, Any]:
        counts = asdict(self)
        counts["problems"] = dict(sorted(self.problems.items()))
        return counts


@dataclass
class Evaluation:
    """Scores per variant (normal, then each probe) and mode, error counts, set details, timing."""

    primary_mode: MatchMode
    reports: dict[str, dict[str, Report]]
    errors: dict[str, dict[str, ErrorCounts]]
    datasets: dict[str, dict[str, Any]]
    label_maps: dict[str, dict[str, dict[str, str]]]
    generation: dict[str, Any]
    config: dict[str, Any]

    @property
    def modes(self) -> list[str]:
        """The primary mode first."""
        return [self.primary_mode, *(mode for mode in MATCH_MODES if mode != self.primary_mode)]

    @property
    def counting(self) -> dict[str, str]:
        """How each mode's scores were counted: a paper's scripts' way (`compat`) or ours."""
        compat = self.config.get("compat") or "none"
        return {mode: compat if COUNTED_MODE.get(compat) == mode else "ours" for mode in self.modes}

    def mode_key(self, mode: str) -> str:
        """A mode's name where its figures are keyed (W&B, the console): `text[reasoningie]` when counted as
        a paper's scripts count, so that they never share a column with ours."""
        counted = self.counting[mode]
        return mode if counted == "ours" else f"{mode}[{counted}]"

    def drops(self) -> dict[str, dict[str, dict[str, float]]]:
        """dataset -> probe -> mode -> normal F1 minus probe F1 (fractions)."""
        drops: dict[str, dict[str, dict[str, float]]] = {}
        for probe, maps in self.label_maps.items():
            for dataset in maps:
                drops.setdefault(dataset, {})[probe] = {
                    mode: self.reports[NORMAL][mode].datasets[dataset].micro.f1
                    - self.reports[probe][mode].datasets[dataset].micro.f1
                    for mode in self.modes
                }
        return drops

    def to_dict(self) -> dict[str, Any]:
        """The content of results.json."""
        return {
            "primary_mode": self.primary_mode,
            "counting": self.counting,
            "scores": {mode: self.reports[NORMAL][mode].to_dict() for mode in self.modes},
            "errors": {name: counts.to_dict() for name, counts in self.errors[NORMAL].items()},
            "probes": {
                probe: {
                    "label_maps": self.label_maps[probe],
                    "scores": {mode: self.reports[probe][mode].to_dict() for mode in self.modes},
                    "errors": {name: counts.to_dict() for name, counts in self.errors[probe].items()},
                }
                for probe in self.label_maps
            },
            "probe_drops": self.drops(),
            "datasets": self.datasets,
            "generation": self.generation,
            "config": self.config,
        }

    def to_markdown(self) -> str:
        """results.md: scores in both modes, per type, error analysis, probe drops."""
        generation = self.generation
        reused = f" ({generation['reused']} of an earlier run)" if generation.get("reused") else ""
        parts = [
            f"# Evaluation of `{self.config.get('model_name_or_path') or 'an injected generator'}`\n",
            f"Backend `{self.config.get('backend')}`, format `{self.config.get('output_format')}`, "
            f"{generation['sentences']} outputs{reused} in {generation['seconds']:.1f} s "
            f"({generation['sentences_per_second']:.2f} sentences/s). Micro P/R/F1 in percent; Avg is the "
            "unweighted mean over datasets. Primary score: "
            f"**{_MODE_NAMES[self.primary_mode]}**.\n",
        ]
        if contradictions := self.config.get("prompt_contradicts_contract"):
            parts.append(f"**Not asked as trained:** {'; '.join(contradictions)}.\n")
        papers = {mode: how for mode, how in self.counting.items() if how != "ours"}
        for mode, how in papers.items():
            parts.append(
                f"**{_MODE_NAMES[mode]} counted as {how}'s scripts count it** (`reasoningner/compat.py`), "
                "to compare with its paper; the other mode and the error analysis are ours.\n"
            )
        if self.config.get("in_domain"):
            trained_on = [name for name, info in self.datasets.items() if info.get("in_domain")]
            parts.append(
                f"**In domain:** {', '.join(trained_on) or 'some sets'} (allow_overlap; "
                f"{'; '.join(self.config['in_domain'])}): not zero-shot scores, and part of Avg.\n"
            )
        for mode in self.modes:
            primary = " (primary)" if mode == self.primary_mode else ""
            how = f", as {papers[mode]} counts" if mode in papers else ""
            parts.append(
                f"## {_MODE_NAMES[mode]}{primary}{how}\n\n{self.reports[NORMAL][mode].to_markdown()}"
            )
        parts.append(self._per_type_markdown())
        parts.append(self._errors_markdown())
        if self.label_maps:
            parts.append(self._probes_markdown())
        return "\n".join(parts)

    def _per_type_markdown(self) -> str:
        primary, other = self.modes
        lines = [
            f"## Per type ({_MODE_NAMES[primary]}; gold and predicted count {primary}-mode keys)\n",
        ]
        for name, scores in self.reports[NORMAL][primary].datasets.items():
            other_labels = self.reports[NORMAL][other].datasets[name].per_label
            lines += [
                f"### {name}\n",
                f"| Type | Gold | Predicted | P | R | F1 | {other} F1 |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for label in sorted(scores.per_label.keys() | other_labels.keys()):
                c = scores.per_label.get(label, Counts())
                other_f1 = other_labels.get(label, Counts()).f1
                lines.append(
                    f"| {label} | {c.tp + c.fn} | {c.tp + c.fp} | {_pct(c.precision)} | {_pct(c.recall)} | "
                    f"{_pct(c.f1)} | {_pct(other_f1)} |"
                )
            lines.append("")
        return "\n".join(lines)

    def _errors_markdown(self) -> str:
        # Cut off: outputs that ran into max_new_tokens, known only for outputs generated here.
        budget = self.config.get("max_new_tokens")
        lines = [
            "## Error analysis\n",
            "Counts over outputs (definitions: `reasoningner/evaluate.py`). Exact-mode false positives = "
            "type + boundary + spurious + hallucinated.\n",
            "| Dataset | Outputs | Format failures | No answer | "
            + (f"Cut off at {budget} tokens | " if budget else "")
            + "Hallucinated | Boundary | Type | Missed | Spurious |",
            "| --- | ---: | ---: | ---: | "
            + ("---: | " if budget else "")
            + "---: | ---: | ---: | ---: | ---: |",
        ]
        for variant, by_dataset in self.errors.items():
            for name, c in by_dataset.items():
                shown = name if variant == NORMAL else f"{name} ({variant})"
                lines.append(
                    f"| {shown} | {c.outputs} | {c.format_failures} | {c.no_answer} | "
                    + (f"{c.cut_off} | " if budget else "")
                    + f"{c.hallucinated} | {c.boundary_errors} | {c.type_errors} | {c.missed} | "
                    + f"{c.spurious} |"
                )
        lines += [
            "",
            "### Parse problems (outputs with each kind)\n",
            "| Dataset | Problems |",
            "| --- | --- |",
        ]
        for name, c in self.errors[NORMAL].items():
            listed = ", ".join(f"{kind} {count}" for kind, count in sorted(c.problems.items())) or "none"
            lines.append(f"| {name} | {listed} |")
        return "\n".join(lines) + "\n"

    def _probes_markdown(self) -> str:
        primary = self.primary_mode
        probes = list(self.label_maps)
        header = "| Dataset | F1 | " + " | ".join(f"{probe} F1 | drop" for probe in probes) + " |"
        lines = [
            f"## Memorization probe ({_MODE_NAMES[primary]}, drop in points)\n",
            "Labels renamed in prompt and gold; descriptions stay with their entity type.\n",
            header,
            "| --- | ---: |" + " ---: | ---: |" * len(probes),
        ]
        drops = self.drops()
        for name, by_probe in drops.items():
            cells = [name, _pct(self.reports[NORMAL][primary].datasets[name].micro.f1)]
            for probe in probes:
                if probe in by_probe:
                    probe_f1 = self.reports[probe][primary].datasets[name].micro.f1
                    cells += [_pct(probe_f1), _pct(by_probe[probe][primary])]
                else:
                    cells += ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for probe, maps in self.label_maps.items():
            for name, mapping in maps.items():
                shown = ", ".join(f"{label} -> {new}" for label, new in mapping.items())
                lines.append(f"- {name} {probe}: {shown}")
        return "\n".join(lines) + "\n"

    def table(self) -> Table:
        """The per-dataset table for the console, both modes, primary first."""
        table = Table(title=f"NER evaluation (primary: {_MODE_NAMES[self.primary_mode]})")
        table.add_column("Dataset", no_wrap=True)
        table.add_column("N", justify="right")
        for mode in self.modes:
            for metric in ("P", "R", "F1"):
                table.add_column(f"{self.mode_key(mode)} {metric}", justify="right")
        names = list(self.reports[NORMAL][self.primary_mode].datasets)
        for name in names:
            row = [name, str(self.reports[NORMAL][self.primary_mode].datasets[name].examples)]
            for mode in self.modes:
                micro = self.reports[NORMAL][mode].datasets[name].micro
                row += [_pct(micro.precision), _pct(micro.recall), _pct(micro.f1)]
            table.add_row(*row)
        average = ["Avg", ""]
        for mode in self.modes:
            avg = self.reports[NORMAL][mode].average
            average += [_pct(avg.precision), _pct(avg.recall), _pct(avg.f1)]
        table.add_row(*average, style="bold")
        return table


_MODE_NAMES = {"text": "text-pair F1", "exact": "exact-span F1"}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


# --- W&B -------------------------------------------------------------------------------------------------

GENERATIONS_IN_TABLE = 500  # outputs of generations.jsonl shown in W&B; the file holds them all
_ERROR_COLUMNS = [f.name for f in fields(ErrorCounts) if f.name != "problems"]


def log_wandb_tables(run: Any, evaluation: Evaluation, generations: Path) -> None:
    """What results.md shows, as W&B tables to sort and filter: scores per dataset and per type in both
    modes, the error analysis, the probe drops (when probes ran) and `GENERATIONS_IN_TABLE` outputs
    beside their gold (`spread_sample`); the average F1s and how many outputs the table holds in the
    summary."""
    import wandb

    results = wandb.Table(columns=["mode", "dataset", "precision", "recall", "f1"])
    per_type = wandb.Table(
        columns=["mode", "dataset", "type", "gold", "predicted", "precision", "recall", "f1"]
    )
    for mode in evaluation.modes:
        report = evaluation.reports[NORMAL][mode]
        key = evaluation.mode_key(mode)
        for name, scores in report.datasets.items():
            results.add_data(key, name, scores.micro.precision, scores.micro.recall, scores.micro.f1)
            for label, c in scores.per_label.items():
                per_type.add_data(key, name, label, c.tp + c.fn, c.tp + c.fp, c.precision, c.recall, c.f1)
            # Per set, so that runs compare set by set in W&B's runs table, not only inside a logged table.
            run.summary[f"{key}/{name}/f1"] = scores.micro.f1
        run.summary[f"{key}/avg_f1"] = report.average.f1
    errors = wandb.Table(columns=["variant", "dataset", *_ERROR_COLUMNS, "problems"])
    for variant, by_dataset in evaluation.errors.items():
        for name, counts in by_dataset.items():
            problems = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.problems.items()))
            errors.add_data(variant, name, *(getattr(counts, column) for column in _ERROR_COLUMNS), problems)
    tables = {"results": results, "per_type": per_type, "errors": errors}
    if evaluation.label_maps:
        drops = wandb.Table(columns=["dataset", "probe", "mode", "f1", "probe_f1", "drop"])
        for name, by_probe in evaluation.drops().items():
            for probe, by_mode in by_probe.items():
                for mode, drop in by_mode.items():
                    f1 = evaluation.reports[NORMAL][mode].datasets[name].micro.f1
                    drops.add_data(name, probe, mode, f1, f1 - drop, drop)
        tables["probe_drops"] = drops
    shown = wandb.Table(columns=["dataset", "variant", "id", "text", "gold", "output", "parsed", "errors"])
    for record in spread_sample(generations, evaluation.generation["sentences"], GENERATIONS_IN_TABLE):
        shown.add_data(
            record["dataset"],
            record["variant"],
            record["id"],
            record["text"],
            mentions(record["gold"]),
            record["output"],
            parsed_cell(record),
            errors_cell(record),
        )
    tables["generations"] = shown
    run.summary["outputs"] = evaluation.generation["sentences"]
    run.summary["outputs_in_generations_table"] = len(shown.data)
    run.log(tables)


def spread_sample(generations: Path, total: int, limit: int) -> list[dict[str, Any]]:
    """At most `limit` of the `total` records of `generations`, every k-th line: the file is in completion
    order (with local generation, longest prompts first), so its first lines would show only the longest
    sentences."""
    step = max(1, -(-total // limit))
    with generations.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in islice(lines, 0, None, step)]


def parsed_cell(record: dict[str, Any]) -> str:
    """The spans parsed from an output, then the mentions it gave that are not in the sentence."""
    ungrounded = f" | not in the text: {mentions(record['ungrounded'])}" if record["ungrounded"] else ""
    return mentions(record["predicted"]) + ungrounded


def errors_cell(record: dict[str, Any]) -> str:
    """An output's error counts that are not zero, and the kinds of its parse problems."""
    cells = [f"{c} {record['errors'][c]}" for c in _ERROR_COLUMNS if c != "outputs" and record["errors"][c]]
    kinds = sorted({problem["kind"] for problem in record["problems"]})
    if kinds:
        cells.append(f"problems: {' '.join(kinds)}")
    return ", ".join(cells)
