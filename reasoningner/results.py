"""Evaluation results: scores per variant and mode, error counts, and their renderings.

`evaluate` computes an `Evaluation`; this module only presents it: `results.json` (`to_dict`),
`results.md` (`to_markdown`) and the console table (`table`). Definitions of the error categories:
`reasoningner/evaluate.py`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rich.table import Table

from reasoningner.metrics import MATCH_MODES, Counts, MatchMode, Report

NORMAL = "normal"  # the variant asked with the real labels; probes are the others


@dataclass
class ErrorCounts:
    """The error categories of `evaluate` summed over outputs; `problems` counts outputs per kind."""

    outputs: int = 0
    format_failures: int = 0
    no_answer: int = 0
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
        if self.config.get("in_domain"):
            trained_on = [name for name, info in self.datasets.items() if info.get("in_domain")]
            parts.append(
                f"**In domain:** {', '.join(trained_on) or 'some sets'} (the model was trained on "
                f"{'; '.join(self.config['in_domain'])}, allow_overlap): not zero-shot scores, and part "
                "of Avg.\n"
            )
        for mode in self.modes:
            primary = " (primary)" if mode == self.primary_mode else ""
            parts.append(f"## {_MODE_NAMES[mode]}{primary}\n\n{self.reports[NORMAL][mode].to_markdown()}")
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
        lines = [
            "## Error analysis\n",
            "Counts over outputs (definitions: `reasoningner/evaluate.py`). Exact-mode false positives = "
            "type + boundary + spurious + hallucinated.\n",
            "| Dataset | Outputs | Format failures | No answer | Hallucinated | Boundary | Type | Missed "
            "| Spurious |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for variant, by_dataset in self.errors.items():
            for name, c in by_dataset.items():
                shown = name if variant == NORMAL else f"{name} ({variant})"
                lines.append(
                    f"| {shown} | {c.outputs} | {c.format_failures} | {c.no_answer} | {c.hallucinated} | "
                    f"{c.boundary_errors} | {c.type_errors} | {c.missed} | {c.spurious} |"
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
                table.add_column(f"{mode} {metric}", justify="right")
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
