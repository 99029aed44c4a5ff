"""A report's plots (matplotlib, PNG, each written atomically): accuracy against shots (per dataset and averaged over
datasets), base / novel / HM dots and transfer dots (source, each target, their average), one line or row per
configuration with error bars over seeds, accuracy against each setting an ablation table ablates, reliability
diagrams, a LatHAdapter run's Poincaré disk, one run's reliability and confusion matrices (`inspect --plots`), and
two configurations' differences across datasets (`compare --plot`).
The only module that imports matplotlib, so that the tables (`report_tables`,
what `grid` and `protocol` print) do without it."""

from __future__ import annotations

import json
import math
import re
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.text import Text

from lathadapter.adapter.evaluate import ECE_BINS, Reliability
from lathadapter.experiments.cells import (
    AVERAGE,
    MISSING,
    TARGETS_AVERAGE,
    Cell,
    ablation_groups,
    base_novel_cells,
    config_label,
    covarying,
    dataset_slug,
    few_shot_average,
    few_shot_cells,
    ordered_configs,
    setting_name,
    shown_value,
    slug,
    sortable,
    transfer_cells,
    varied_settings,
)
from lathadapter.experiments.compare_grid import GridComparison, PartComparison
from lathadapter.experiments.records import TUNED, Choice, Configuration, Record, distinct_slugs, shots_label
from lathadapter.experiments.run import write_atomic


def outside_legend(ax: Axes) -> None:
    """The legend to the right of the axes, so that it never covers the data; none where nothing is drawn (a block
    whose every cell diverged)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of its own, outside pyplot: drawing a report neither switches the matplotlib backend of the process
    that asks for it (a notebook's) nor leaves figures open in it."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


# matplotlib's warning for a character its fonts lack, once per character and drawing pass (as 3.6 to 3.11 word it)
MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font\(s\) (.+?)\.?$")


def _save(fig: Figure, path: Path) -> Path:
    """Save a plot atomically (a full disk keeps the previous plot whole). Every text is drawn as written: a `$` in
    a class, dataset or option name is no mathtext, which would misdraw it or fail to parse. Characters the fonts
    lack (CJK class names) are one warning naming the plot, not one per character and drawing pass; any other
    warning is left to the filters in force (an error stops the save), from where it was raised. Plots are drawn in
    one thread (`warnings.catch_warnings` is not thread-safe before Python 3.14)."""
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    missing: dict[str, str] = {}  # character → the fonts that lack it
    show = warnings.showwarning

    def gather(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
               line: str | None = None) -> None:
        match = MISSING_GLYPH.match(str(message))
        if match:
            missing.setdefault(chr(int(match.group(1))), match.group(2))
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", MISSING_GLYPH.pattern)  # each character's, not once a process
        warnings.showwarning = gather
        fig.tight_layout()
        write_atomic(path, lambda temporary: fig.savefig(temporary, format=path.suffix.lstrip("."), dpi=120,
                                                         bbox_inches="tight"))
    if missing:
        fonts = ", ".join(sorted(set(missing.values())))
        warnings.warn(f"{path.name}: the font ({fonts}) has no glyph for {' '.join(missing)}, drawn as boxes; a font "
                      f"that has them, listed after it in matplotlib's font.family, draws them (a matplotlibrc line "
                      f"`font.family: {fonts}, Noto Sans CJK JP`)", stacklevel=2)
    return path


# Line styles of the accuracy-against-shots plot: the ten tab10 colours, then again with other markers and dashes, so
# that no two configurations of a plot look alike however many there are (a grid of 13 methods had three colours twice)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", "-.", ":")


# An accuracy-against-shots plot of more configurations than there are distinct line styles is left out (two of its
# lines would look alike), its tables alone holding the cells
MOST_SHOTS_LINES = 10 * len(MARKERS)


def line_style(index: int) -> dict[str, str]:
    """The colour, marker and line style of a plot's `index`-th line: each pass over the ten colours takes the next
    marker and dash, so the triple is unique for every index below 80."""
    colours = matplotlib.colormaps["tab10"].colors
    cycle = index // len(colours)
    return {"color": matplotlib.colors.to_hex(colours[index % len(colours)]), "marker": MARKERS[cycle % len(MARKERS)],
            "linestyle": DASHES[cycle % len(DASHES)]}


def _config_choices(records: Iterable[Record]) -> dict[Configuration, list[Choice]]:
    """Each configuration's kept tuning choices among `records`."""
    choices: dict[Configuration, list[Choice]] = defaultdict(list)
    for record in records:
        if record.tuned:
            choices[record.config].append(record.tuned)
    return choices


def _plot_shots(shots: list[int], rows: dict[Configuration, list[Cell]], labels: dict[Configuration, str],
                title: str, path: Path) -> Path:
    """Accuracy against shots, one line per configuration of `rows` (its cells by `shots`, in `rows`' order;
    LatHAdapter's thicker): error bars the std over seeds, none on a line whose cells have no std (an average over
    datasets); a cell with no mean (no run, n/a, diverged) draws no point."""
    fig, ax = _figure(9, 4)  # the legend sits right of the axes
    for index, (config, cells) in enumerate(rows.items()):
        points = [(k, c) for k, c in zip(shots, cells, strict=True) if c.mean is not None]
        if points:
            spread = [c.std or 0.0 for _, c in points] if any(c.std is not None for _, c in points) else None
            ax.errorbar([k for k, _ in points], [c.mean for _, c in points], yerr=spread, capsize=3,
                        **line_style(index), label=labels[config],
                        linewidth=2.5 if config.method == "lathadapter" else 1.5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set(xlabel="shots per class", ylabel="top-1 accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    outside_legend(ax)
    return _save(fig, path)


def plot_accuracy_vs_shots(records: list[Record], folder: Path) -> tuple[list[Path], list[str]]:
    """Per dataset with two numbers of shots or more: one line per configuration, error bars the std over seeds; with
    several datasets, their average (the average table's cells, no error bars) where it has two numbers of shots.
    Returns the plots and those left out for having more configurations than `MOST_SHOTS_LINES`."""
    cells = few_shot_cells(records)
    few_shot = [r for r in records if r.classes == "all" and not r.target]
    paths, crowded = [], []
    datasets = sorted({d for d, _, _ in cells})
    for dataset in datasets:
        shots = sorted({k for (d, _, k), cell in cells.items() if d == dataset and cell.mean is not None})
        if len(shots) < 2:  # fewer than two numbers of shots with a point (every run diverged, say): no plot
            continue
        configs = ordered_configs({c for d, c, _ in cells if d == dataset})
        if len(configs) > MOST_SHOTS_LINES:
            crowded.append(f"accuracy_vs_shots_{dataset_slug(dataset)} ({len(configs)} lines)")
            continue
        varied = varied_settings(configs)
        choices = _config_choices(r for r in few_shot if r.dataset == dataset)
        paths.append(_plot_shots(shots, {c: [cells.get((dataset, c, k), MISSING) for k in shots] for c in configs},
                                 {c: config_label(c, varied, choices.get(c, [])) for c in configs},
                                 f"{dataset}: accuracy vs shots",
                                 folder / f"accuracy_vs_shots_{dataset_slug(dataset)}.png"))
    average = few_shot_average(cells)
    shots = sorted({k for (_, k), cell in average.items() if cell.mean is not None})  # a point somewhere
    if len(datasets) < 2 or len(shots) < 2:
        return paths, crowded
    configs = ordered_configs({c for c, _ in average})
    if len(configs) > MOST_SHOTS_LINES:
        crowded.append(f"accuracy_vs_shots_{AVERAGE} ({len(configs)} lines)")
    else:
        varied = varied_settings(configs)
        choices = _config_choices(few_shot)  # as the average table: each dataset's choices
        paths.append(_plot_shots(shots, {c: [average[(c, k)] for k in shots] for c in configs},
                                 {c: config_label(c, varied, choices.get(c, [])) for c in configs},
                                 f"Average over {len(datasets)} datasets: accuracy vs shots",
                                 folder / f"accuracy_vs_shots_{AVERAGE}.png"))
    return paths, crowded


def _row_note(ax: Axes, row: int, text: str) -> None:
    """A grey note at the left of a row of a row-per-configuration plot: what it has no number for."""
    ax.annotate(text, (0.0, row), xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                ha="left", va="center", fontsize=7, color="grey")


def _finish_rows(ax: Axes, labels: list[str], shown: list[float], title: str) -> None:
    """A row-per-configuration dot plot's frame: the rows top to bottom, an accuracy axis spanning every dot's
    mean ± std within 0–103 % (an error bar reaching past what an accuracy can be is cut there), the legend outside."""
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    if shown:
        ax.set_xlim(max(0.0, min(shown) - 8), min(100.0, max(shown)) + 3)
    ax.set(xlabel="top-1 accuracy (%)", title=title)
    outside_legend(ax)
    ax.grid(axis="x", alpha=0.3)


# The base-to-novel plot's three scores: a marker and colour each, drawn as dots on one row per configuration
SCORES = (("base", "o", "tab:blue"), ("novel", "s", "tab:orange"), ("HM", "D", "tab:green"))


def plot_base_novel(records: list[Record], folder: Path) -> list[Path]:
    """Per dataset (and number of shots, when there are several): a row per configuration with its base, novel and
    HM accuracy as dots, error bars the std over seeds; a method that cannot score novel classes says so in its row.
    Dots rather than bars, so that the axis can span the scores alone and their differences stay visible."""
    cells = base_novel_cells(records)
    blocks = sorted({(d, k) for d, _, k in cells})
    several_shots = len({k for _, k in blocks}) > 1
    paths = []
    for dataset, shots in blocks:
        configs = ordered_configs({c for d, c, k in cells if (d, k) == (dataset, shots)})
        varied = varied_settings(configs)
        choices = _config_choices(r for r in records if (r.dataset, r.shots, r.classes) == (dataset, shots, "base")
                                  and not r.target)
        fig, ax = _figure(9, 0.4 * len(configs) + 1.4)
        shown: list[float] = []
        for i, config in enumerate(configs):
            base, novel = cells[(dataset, config, shots)]
            missing = []
            for (score, marker, colour), cell, offset in zip(SCORES, (base, novel, Cell.hm(base, novel)),
                                                             (-0.2, 0.0, 0.2), strict=True):
                if cell.mean is None:
                    missing.append(f"{score} {cell.text()}")
                    continue
                ax.errorbar(cell.mean, i + offset, xerr=cell.std or 0.0, fmt=marker, color=colour, capsize=2,
                            markersize=6, label=score if score not in ax.get_legend_handles_labels()[1] else None)
                shown += [cell.mean - (cell.std or 0.0), cell.mean + (cell.std or 0.0)]
            if missing:
                _row_note(ax, i, ", ".join(missing))
        _finish_rows(ax, [config_label(c, varied, choices.get(c, [])) for c in configs], shown,
                     f"{dataset}: base-to-novel, {shots_label(shots)}")
        name = f"base_novel_{slug(dataset)}" + (f"_{shots}shot" if several_shots else "")
        paths.append(_save(fig, folder / f"{name}.png"))
    return paths


def _dot_style(index: int) -> dict[str, str]:
    """The colour and marker of a transfer plot's `index`-th dataset (the source, then each target): both step at
    once, so the pair is unique for every index below 40."""
    colours = matplotlib.colormaps["tab10"].colors
    return {"color": matplotlib.colors.to_hex(colours[index % len(colours)]), "marker": MARKERS[index % len(MARKERS)]}


def _missing_note(missing: dict[str, str], targets: list[str]) -> str:
    """A transfer row's columns with no number and why (`dtd n/a`); `targets n/a` where every target and their
    average read alike (a method that scores no other class set), so the note stays short."""
    if set(targets) <= set(missing) and len({missing[t] for t in [*targets, TARGETS_AVERAGE]}) == 1:
        rest = [f"{column} {text}" for column, text in missing.items() if column not in [*targets, TARGETS_AVERAGE]]
        return ", ".join([*rest, f"targets {missing[TARGETS_AVERAGE]}"])
    return ", ".join(f"{column} {text}" for column, text in missing.items())


def plot_transfer(records: list[Record], folder: Path) -> list[Path]:
    """Per source dataset and shots of the transfer runs: a row per configuration with its accuracy on the source
    test set, each target and the average over targets as dots (the transfer table's cells), error bars the std over
    seeds; a cell with no number is named in its row. Named `transfer_<source>`, with `_<k>shot` when there are
    several blocks (as the tables name them then; the tables' one block is `transfer`)."""
    blocks = transfer_cells(records)
    paths = []
    for (source, shots), (targets, rows) in blocks.items():
        columns = ["source", *targets, TARGETS_AVERAGE]
        configs = ordered_configs(rows)
        varied = varied_settings(configs)
        choices = _config_choices(r for r in records if (r.dataset, r.shots, r.target) == (source, shots, "source"))
        row_height = max(0.4, 0.12 * len(columns))  # room for each column's dot
        fig, ax = _figure(9, row_height * len(configs) + 1.4)
        offsets = [0.3 * (2 * j / (len(columns) - 1) - 1) for j in range(len(columns))]
        shown: list[float] = []
        for i, config in enumerate(configs):
            missing: dict[str, str] = {}  # column → its text
            for j, (column, cell, offset) in enumerate(zip(columns, rows[config], offsets, strict=True)):
                if cell.mean is None:
                    missing[column] = cell.text()
                    continue
                # the average over targets in black, apart from the tab10 colours of the datasets
                style = {"color": "black", "marker": "D"} if column == TARGETS_AVERAGE else _dot_style(j)
                ax.errorbar(cell.mean, i + offset, xerr=cell.std, fmt=style["marker"], color=style["color"],
                            capsize=2, markersize=6,
                            label=column if column not in ax.get_legend_handles_labels()[1] else None)
                shown += [cell.mean - (cell.std or 0.0), cell.mean + (cell.std or 0.0)]
            if missing:
                _row_note(ax, i, _missing_note(missing, targets))
            if i:
                ax.axhline(i - 0.5, color="grey", linewidth=0.5, alpha=0.4)  # a row's dots spread over its height
        _finish_rows(ax, [config_label(c, varied, choices.get(c, [])) for c in configs], shown,
                     f"Transfer from {source}, {shots_label(shots)}")
        name = f"transfer_{slug(source)}" + (f"_{shots}shot" if len(blocks) > 1 else "")
        paths.append(_save(fig, folder / f"{name}.png"))
    return paths


@dataclass(frozen=True)
class AblationLine:
    """One line of an ablation plot: its part (a number of shots; base, novel or HM; the source, a target or the
    average over targets), label, cells by the setting's
    value (the ablation table's cells) and the index of its `line_style`."""

    part: str
    label: str
    cells: dict[str, Cell]
    style: int


def _ablation_lines(configs: list[Configuration], setting: str, others: list[str],
                    cells: dict[Configuration, list[Cell]], parts: list[str]) -> list[AblationLine]:
    """Per combination of the `others` settings' values run at two values of `setting` or more, and per part (a
    column of `cells`): the configurations' cells by `setting`'s value, in the ablation table's order. A tuned value
    is no point of the setting's axis (it reads `tuned`, chosen per cell), so it draws none. With several
    combinations, a line's colour says its combination and its marker and dash its part; with one, each part has its
    colour."""
    combinations: dict[tuple[str, ...], list[dict[str, Cell]]] = {}
    for config in sorted(configs, key=lambda c: [sortable(c.value(s)) for s in [*others, setting]]):
        if config.value(setting) == TUNED:
            continue
        row = combinations.setdefault(tuple(config.value(s) for s in others), [{} for _ in parts])
        for by_value, cell in zip(row, cells[config], strict=True):
            by_value[config.value(setting)] = cell
    # a combination run at one value of the setting ablates nothing (in a one-at-a-time sweep, every other
    # setting's own ablation): it would be a lone point with a legend entry each
    combinations = {values: row for values, row in combinations.items() if len(row[0]) > 1}
    # several combinations: each part takes the next pass over the ten colours (so its own marker and dash)
    stride = 10 * math.ceil(len(combinations) / 10) if len(combinations) > 1 else 1
    lines = []
    for j, (values, row) in enumerate(combinations.items()):
        fixed = [f"{setting_name(s)}={shown_value(s, v)}" for s, v in zip(others, values, strict=True)]
        lines += [AblationLine(part, ", ".join([part, *fixed]), by_value, j + stride * p)
                  for p, (part, by_value) in enumerate(zip(parts, row, strict=True))]
    return lines


def _numeric(value: str) -> bool:
    return sortable(value)[0] == 0 and math.isfinite(float(value))


def _plot_ablation(lines: list[AblationLine], setting: str, title: str, path: Path) -> Path | None:
    """Accuracy against `setting`, a line per `AblationLine` with error bars the std over seeds: numbers on a numeric
    axis (logarithmic when positive and spanning 10× or more), other values (`recipe`: left to the method's recipe)
    as evenly spaced categories in the ablation table's order. A part with no number anywhere (novel and HM of a
    method that scores no novel class) draws no line and is named in the title; fewer than two values scored: no
    plot."""
    values = sorted({v for line in lines for v, c in line.cells.items() if c.mean is not None}, key=sortable)
    if len(values) < 2:
        return None
    numeric = all(_numeric(v) for v in values)
    position = {v: float(v) if numeric else float(i) for i, v in enumerate(values)}
    fig, ax = _figure(9, 4)
    for line in lines:
        points = [(position[v], line.cells[v]) for v in values if v in line.cells and line.cells[v].mean is not None]
        if points:
            ax.errorbar([x for x, _ in points], [c.mean for _, c in points], yerr=[c.std or 0.0 for _, c in points],
                        capsize=3, label=line.label, **line_style(line.style))
    if numeric and position[values[0]] > 0 and position[values[-1]] >= 10 * position[values[0]]:
        ax.set_xscale("log")
    ax.set_xticks([position[v] for v in values], [shown_value(setting, v) for v in values])
    ax.set_xticks([], minor=True)  # a log axis's own ticks would label values the grid did not run
    if not numeric:
        ax.set_xlim(-0.5, len(values) - 0.5)
    scored = {line.part for line in lines if any(c.mean is not None for c in line.cells.values())}
    unscored: dict[str, set[str]] = {}  # a part with no number: why (n/a, diverged; no run at all says nothing)
    for line in lines:
        if line.part not in scored:
            unscored.setdefault(line.part, set()).update(c.text() for c in line.cells.values() if not c.missing)
    notes = [f"{part} {'/'.join(sorted(texts))}" for part, texts in unscored.items() if texts]
    if notes:
        title += "\n" + ", ".join(notes)
    ax.set(xlabel=setting_name(setting), ylabel="top-1 accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    outside_legend(ax)
    return _save(fig, path)


# An ablation plot of more lines is left out, its table alone holding the cells: a grid varying a dozen settings
# together split each ablation into hundreds of lines, seconds a plot and a legend thousands of pixels tall
MOST_ABLATION_LINES = 40


def _method_ablations(cells: dict[Configuration, list[Cell]], parts: list[str], title: str, name: str,
                      folder: Path, crowded: list[str]) -> list[Path]:
    """The ablation plots of one block of cells (a column per part): one per method and setting varied among its
    configurations, named `<name>_<method>_<setting>.png`; one of over `MOST_ABLATION_LINES` lines is not drawn but
    named in `crowded`."""
    configs = ordered_configs(cells)
    paths = []
    for method, settings in varied_settings(configs).items():
        own = [c for c in configs if c.method == method]
        for group in ablation_groups(own, settings):
            setting = group[0]
            lines = _ablation_lines(own, setting, [s for s in settings if s not in group], cells, parts)
            stem = f"{name}_{slug(method)}_{setting_name(setting)}"
            if len(lines) > MOST_ABLATION_LINES:
                crowded.append(f"{stem} ({len(lines)} lines)")
                continue
            path = _plot_ablation(lines, setting, f"{title}{method}, ablation of {setting_name(setting)}"
                                  f"{covarying(group)}", folder / f"{stem}.png")
            paths += [path] if path is not None else []
    return paths


def plot_ablations(records: list[Record], folder: Path) -> tuple[list[Path], list[str]]:
    """Per dataset, method and setting that varies among the method's configurations (what gets an ablation table):
    accuracy against the setting, from the ablation table's cells. Few-shot: a line per number of shots;
    base-to-novel (per dataset and shots): base, novel and HM lines (HM of the means); transfer (per source and
    shots, as the transfer tables): a line for the source test set, each target and their average. Another varied
    setting of the method splits each line by its values. Returns the plots and the ablations left out for too many
    lines."""
    paths: list[Path] = []
    crowded: list[str] = []
    few = few_shot_cells(records)
    for dataset in sorted({d for d, _, _ in few}):
        shots = sorted({k for d, _, k in few if d == dataset})
        cells = {c: [few.get((dataset, c, k), MISSING) for k in shots] for d, c, _ in few if d == dataset}
        paths += _method_ablations(cells, [shots_label(k) for k in shots], f"{dataset}: ",
                                   f"ablation_{slug(dataset)}", folder, crowded)
    pairs = base_novel_cells(records)
    blocks = sorted({(d, k) for d, _, k in pairs})
    several_shots = len({k for _, k in blocks}) > 1
    for dataset, shots in blocks:
        cells = {c: [b, n, Cell.hm(b, n)] for (d, c, k), (b, n) in pairs.items() if (d, k) == (dataset, shots)}
        name = f"ablation_base_novel_{slug(dataset)}" + (f"_{shots}shot" if several_shots else "")
        paths += _method_ablations(cells, [score for score, _, _ in SCORES],
                                   f"{dataset}: base-to-novel, {shots_label(shots)}, ", name, folder, crowded)
    transfer = transfer_cells(records)
    for (source, shots), (targets, rows) in transfer.items():
        name = f"ablation_transfer_{slug(source)}" + (f"_{shots}shot" if len(transfer) > 1 else "")
        paths += _method_ablations(rows, ["source", *targets, TARGETS_AVERAGE],
                                   f"transfer from {source}, {shots_label(shots)}, ", name, folder, crowded)
    return paths, crowded


# A reliability figure's panels: five a row; a figure of more configurations than five rows is left out (named in
# report.md), its ECE table alone holding the cells
RELIABILITY_COLUMNS = 5
MOST_RELIABILITY_PANELS = 5 * RELIABILITY_COLUMNS
IMAGES_STRIP = 20.0  # the height, in the accuracy axis's %, of the strip under a panel's bars: the share of images


@dataclass(frozen=True)
class ReliabilityPanel:
    """One configuration's panel: its label (its accuracy table's row), its seeds' bins summed and how many seeds."""

    label: str
    bins: Reliability
    seeds: int


def _reliability_panels(records: list[Record], reliability: dict[str, dict[str, Reliability]],
                        part: Callable[[Record], str], block: Callable[[Record], tuple],
                        scope: Callable[[Record], tuple]) -> dict[tuple, list[ReliabilityPanel]]:
    """Per `block` of `records` (a figure): a panel per configuration of which some seed's run recorded bins of
    `part(record)`, in the catalog's order, labelled as its accuracy table's row, the table of the records of one
    `scope` (the settings varied there, and the tuned values chosen: a transfer run's once, from its source row)."""
    scoped: dict[tuple, list[Record]] = defaultdict(list)
    scopes: dict[tuple, tuple] = {}
    runs: dict[tuple, dict[Configuration, list[Reliability]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        scoped[scope(record)].append(record)
        scopes[block(record)] = scope(record)
        bins = reliability.get(record.key, {}).get(part(record))
        if bins is not None:
            runs[block(record)][record.config].append(bins)
    panels = {}
    for key, by_config in sorted(runs.items()):
        table = scoped[scopes[key]]
        varied = varied_settings({r.config for r in table})
        choices = _config_choices(r for r in table if r.target in ("", "source"))
        panels[key] = [ReliabilityPanel(config_label(c, varied, choices.get(c, [])),
                                        Reliability.pooled(by_config[c]), len(by_config[c]))
                       for c in ordered_configs(by_config)]
    return panels


def _reliability_panel(ax: Axes, panel: ReliabilityPanel) -> None:
    """A reliability diagram on a frame's axes (`_reliability_frame`): per bin with images, its accuracy as a bar
    and the gap to its mean confidence hatched (red), the diagonal of perfect calibration, and under the axis a grey
    strip of each bin's share of the images (the tallest bin at the strip's height); the title gives the pooled ECE
    and accuracy."""
    bins, width = panel.bins, 100.0 / ECE_BINS
    filled = [b for b, n in enumerate(bins.images) if n]
    centres = [(b + 0.5) * width for b in filled]
    accuracy = [100.0 * bins.correct[b] / bins.images[b] for b in filled]
    confidence = [100.0 * bins.confidence[b] / bins.images[b] for b in filled]
    ax.bar(centres, accuracy, width=width, color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar(centres, [c - a for a, c in zip(accuracy, confidence, strict=True)], bottom=accuracy, width=width,
           facecolor=(1.0, 0.0, 0.0, 0.2), edgecolor="tab:red", linewidth=0.5, hatch="///",
           label="gap to mean confidence")
    ax.plot([0, 100], [0, 100], linestyle="--", color="grey", linewidth=1.0, label="perfect calibration")
    shares = [bins.images[b] / sum(bins.images) for b in filled]
    ax.bar(centres, [IMAGES_STRIP * share / max(shares) for share in shares], bottom=-IMAGES_STRIP - 2, width=width,
           color="grey", alpha=0.6, label="share of images")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.annotate(f"images (tallest bin {100 * max(shares):.0f} %)", (0.02, -IMAGES_STRIP - 1), fontsize=6,
                color="dimgrey", va="bottom", xycoords=("axes fraction", "data"))
    seeds = f"{panel.seeds} seeds pooled" if panel.seeds > 1 else "1 seed"
    ax.set_title(f"{textwrap.fill(panel.label, 45)}\nECE {bins.ece():.2f}, accuracy {bins.accuracy():.2f} ({seeds})",
                 fontsize=8)


def _reliability_frame(count: int) -> tuple[Figure, list[Axes]]:
    """An empty figure for `count` reliability diagrams, `RELIABILITY_COLUMNS` a row: each panel's axes (limits,
    ticks, grid), their labels and numbers on the outer panels alone (every panel's axes are the same; fewer texts
    also draw faster), the slots left over turned off."""
    columns = min(count, RELIABILITY_COLUMNS)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(2.7 * columns, 2.5 * rows + 0.5))  # outside pyplot, as `_figure`
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for i, ax in enumerate(axes[:count]):
        ax.set(xlim=(0, 100), ylim=(-IMAGES_STRIP - 2, 100))
        ax.set_xticks(range(0, 101, 20))
        ax.set_yticks(range(0, 101, 25))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        bottom, left = i + columns >= count, i % columns == 0  # no panel below; the first column
        ax.tick_params(labelbottom=bottom, labelleft=left)
        if bottom:
            ax.set_xlabel("top-1 confidence (%)", fontsize=8)
        if left:
            ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in axes[count:]:
        ax.axis("off")
    return fig, axes


def _cleared(fig: Figure, axes: list[Axes]) -> tuple[Figure, list[Axes]]:
    """A drawn reliability figure back to its frame: its diagrams and legend taken off (titles are set anew)."""
    for ax in axes:
        for artist in [*ax.patches, *ax.lines, *ax.texts]:
            artist.remove()
        ax.containers.clear()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    for legend in list(fig.legends):
        legend.remove()
    return fig, axes


# A report's reliability figures by their number of panels: a figure of as many panels as one drawn before is drawn
# on its frame, cleared (building the axes took a fifth of a figure's time, and a dataset's figures per number of
# shots have as many panels; the file is byte for byte the one a new figure gives)
Frames = dict[int, tuple[Figure, list[Axes]]]


def _plot_reliability(panels: list[ReliabilityPanel], title: str, path: Path, frames: Frames | None = None) -> Path:
    """Small multiples of reliability diagrams (`_reliability_frame`), the legend in a free slot or under the
    panels, drawn on `frames`' frame of as many panels where there is one (and kept there for the next)."""
    frames = {} if frames is None else frames
    fig, axes = _cleared(*frames[len(panels)]) if len(panels) in frames else _reliability_frame(len(panels))
    frames[len(panels)] = fig, axes
    for ax, panel in zip(axes, panels, strict=False):
        _reliability_panel(ax, panel)
    if len(axes) > len(panels):  # the legend in the last free slot, else under the panels: never over a bar
        axes[-1].legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center")
    else:
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="upper center", ncol=2,
                   bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(records: list[Record], reliability: dict[str, dict[str, Reliability]], folder: Path
                     ) -> tuple[list[Path], list[str]]:
    """Reliability diagrams from the runs' recorded bins (`reliability`: run key → part → bins, a transfer run's
    parts its results rows' `target`s), a panel per configuration, its seeds' bins summed: per dataset and shots of
    the few-shot runs (`reliability_<dataset>_<k>shot.png`, labels as the dataset's few-shot table), of the
    base-to-novel runs one figure for the base and one for the novel classes
    (`reliability_base_novel_<dataset>_<k>shot_<part>.png`, labels as the base-to-novel table of those shots), and
    of the transfer runs per source dataset and shots one figure for the source test set and one per target
    (`reliability_transfer_<source>_<k>shot_<target>.png`, `_source` for the source's, `distinct_slugs`; labels as
    the transfer table). A configuration without bins has no panel, a block without any no figure. Returns the
    figures and those left out for more than `MOST_RELIABILITY_PANELS` panels."""
    figures = []  # (file name, title, panels)
    few_shot = [r for r in records if r.classes == "all" and not r.target]
    for (dataset, shots), panels in _reliability_panels(few_shot, reliability, lambda r: "all",
                                                        lambda r: (r.dataset, r.shots), lambda r: (r.dataset,)).items():
        figures.append((f"reliability_{slug(dataset)}_{shots}shot", f"{dataset}, {shots_label(shots)}", panels))
    base = [r for r in records if r.classes == "base" and not r.target]
    for part in ("base", "novel"):
        for (dataset, shots), panels in _reliability_panels(base, reliability, lambda r, p=part: p,
                                                            lambda r: (r.dataset, r.shots),
                                                            lambda r: (r.shots,)).items():
            figures.append((f"reliability_base_novel_{slug(dataset)}_{shots}shot_{part}",
                            f"{dataset}, base-to-novel, {shots_label(shots)}, {part} classes", panels))
    transfer = _reliability_panels([r for r in records if r.target], reliability, lambda r: r.target,
                                   lambda r: (r.dataset, r.shots, r.target), lambda r: (r.dataset, r.shots))
    # each block's source test set first, then its targets in the transfer table's order
    files = distinct_slugs(["source", *sorted({target for _, _, target in transfer})])  # `a b`, `a|b`: two files
    for dataset, shots, target in sorted(transfer, key=lambda b: (b[0], b[1], b[2] != "source", b[2])):
        tested = "source test set" if target == "source" else f"target {target}"
        figures.append((f"reliability_transfer_{slug(dataset)}_{shots}shot_{files[target]}",
                        f"Transfer from {dataset}, {shots_label(shots)}, {tested}", transfer[(dataset, shots, target)]))
    paths, crowded = [], []
    frames: Frames = {}
    for name, title, panels in figures:
        if len(panels) > MOST_RELIABILITY_PANELS:
            crowded.append(f"{name} ({len(panels)} panels)")
            continue
        paths.append(_plot_reliability(panels, f"{title}: reliability (accuracy against confidence per bin)",
                                       folder / f"{name}.png", frames))
    return paths, crowded


def plot_run_reliability(sets: list[tuple[str, Reliability]], title: str, path: Path) -> Path:
    """One run's reliability diagrams, a panel per test set it was scored on (`sets`: label, bins), as a report's."""
    return _plot_reliability([ReliabilityPanel(label, bins, 1) for label, bins in sets],
                             f"{title}: reliability (accuracy against confidence per bin)", path)


# A confusion matrix of more classes than this has its class names left out of the axes, which would be unreadable:
# its ticks number the labels, as the per-class CSV does
CONFUSION_NAMED = 40
NAME_CHARACTERS = 24  # a longer class name is cut there on a confusion matrix's axes
LEGEND_NAME_CHARACTERS = 40  # and there in the Poincaré disk's legend, which a long name would stretch across the page


def shortened(name: str, limit: int) -> str:
    """`name` cut to `limit` characters, the last an ellipsis, where it is longer."""
    return name if len(name) <= limit else name[:limit - 1] + "…"


def confusion_shares(matrix: torch.Tensor) -> torch.Tensor:
    """A confusion matrix [C, C] (rows true, columns predicted) as the share (%) of each true class's test images;
    a class without test images is a row of zeros."""
    counts = matrix.double()
    return 100.0 * counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)


def plot_confusion(matrix: torch.Tensor, class_names: list[str], title: str, path: Path) -> Path:
    """A confusion matrix as a heat map of `confusion_shares` (the diagonal: each class's accuracy), the class names
    on both axes up to `CONFUSION_NAMED` classes, labels numbered beyond."""
    size = len(class_names)
    side = min(max(4.0, 0.22 * size + 2.0), 16.0)
    fig, ax = _figure(side + 1.2, side)
    shown = ax.imshow(confusion_shares(matrix).numpy(), cmap="Blues", vmin=0.0, vmax=100.0, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's test images")
    if size <= CONFUSION_NAMED:
        names = [shortened(name, NAME_CHARACTERS) for name in class_names]
        ax.set_xticks(range(size), names, rotation=90, fontsize=7)
        ax.set_yticks(range(size), names, fontsize=7)
    ax.set(xlabel="predicted class" + ("" if size <= CONFUSION_NAMED else " (label)"),
           ylabel="true class" + ("" if size <= CONFUSION_NAMED else " (label)"), title=title)
    return _save(fig, path)


def disk_coordinates(points: torch.Tensor, curvature: float, basis: torch.Tensor) -> torch.Tensor:
    """Map ball points to the unit disk: keep each point's distance to the origin exactly (its depth in the
    hierarchy) and take its direction from the projection of its tangent vector at 0 onto a 2-D `basis`."""
    scaled = points * math.sqrt(curvature)  # into the unit ball; radius ∈ [0, 1)
    radius = scaled.norm(dim=-1, keepdim=True)
    direction = torch.nn.functional.normalize(scaled @ basis, dim=-1)
    return radius * direction


def disk_points(run_dir: Path) -> Path:
    """The lifted points a LatHAdapter run saved (`points.pt`), which the disk picture draws; a ValueError names the
    folder when there are none."""
    path = run_dir / "points.pt"
    if not path.is_file():
        problem = "has no points.pt" if run_dir.is_dir() else "does not exist"
        raise ValueError(f"{run_dir} {problem}; the disk picture needs a lathadapter run directory (one holding "
                         "points.pt)")
    return path


def plot_poincare_disk(run_dir: Path, folder: Path) -> Path:
    """A trained LatHAdapter's categories, attribute prompts and sample images of a few classes, on the disk, from
    the lifted points the run saved (`points.pt`); the legend names each class (cut at `LEGEND_NAME_CHARACTERS`)."""
    points = torch.load(disk_points(run_dir))
    c = points["curvature"]
    categories, attributes, images = points["categories"], points["attributes"], points["images"]
    # The 2-D basis: principal directions of the tangent vectors of the points shown.
    tangent = torch.cat([categories, attributes, images])
    basis = torch.linalg.svd(tangent - tangent.mean(0), full_matrices=False).Vh[:2].t()
    xy = {name: disk_coordinates(p, c, basis) for name, p in
          (("categories", categories), ("attributes", attributes), ("images", images))}
    fig, ax = _figure(6, 6)
    ax.add_patch(Circle((0, 0), 1, fill=False, color="black"))
    colours = matplotlib.colormaps["tab10"]
    labels = points["image_labels"]
    names = points["class_names"]
    for i, name in enumerate(names):
        pts = xy["images"][labels == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color=colours(i), alpha=0.6)
        ax.scatter(*xy["categories"][i], s=120, marker="*", color=colours(i), edgecolor="black", alpha=0.85,
                   label=f"{i + 1}: {shortened(name, LEGEND_NAME_CHARACTERS)}", zorder=3)
        # each star's number at its own angle around it: the numbers stay apart where stars coincide
        angle = 2 * math.pi * i / max(len(names), 1)
        ax.annotate(str(i + 1), xy["categories"][i].tolist(), xytext=(12 * math.cos(angle), 12 * math.sin(angle)),
                    textcoords="offset points", ha="center", va="center", fontsize=8, color=colours(i),
                    fontweight="bold", zorder=4)
        strongest = int(points["strongest_attribute"][i])
        ax.plot([xy["categories"][i, 0], xy["attributes"][strongest, 0]],
                [xy["categories"][i, 1], xy["attributes"][strongest, 1]], color=colours(i), linewidth=0.8)
    ax.scatter(xy["attributes"][:, 0], xy["attributes"][:, 1], s=50, marker="^", color="grey",
               edgecolor="black", label="attribute prompts")
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal",
           title=f"LatHAdapter in the Poincaré disk (c = {c:.2f})\n{disk_run_label(run_dir)}")
    ax.axis("off")
    outside_legend(ax)
    fig.text(0.02, 0.02, "radius = exact distance to the origin; angle = PCA of tangent vectors", fontsize=7)
    return _save(fig, folder / "poincare_disk.png")


def disk_run_label(run_dir: Path) -> str:
    """Which run the disk draws: its cache file, classes, shots, seed and run key (from its config.json)."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return f"run {run_dir.name}"
    return (f"{Path(str(config.get('cache', '?'))).name}, {config.get('classes', '?')} classes, "
            f"{config.get('shots', '?')} shots, seed {config.get('seed', '?')}, run {config.get('key', run_dir.name)}")


COMPARISON_COLUMNS = 3  # a `compare --plot` figure's panels a row


def _comparison_panel(ax: Axes, part: PartComparison) -> None:
    """One part and shots of a comparison: a row per dataset, A − B of each seed as a dot and of the seed means as a
    diamond, the zero line; a dataset without a difference (`n/a`) says so in its row."""
    labels = [d.label for d in part.datasets]
    for i, d in enumerate(part.datasets):
        if d.difference is None:
            _row_note(ax, i, "n/a")
            continue
        first = d is part.compared[0]  # one legend entry each
        ax.plot([s.difference for s in d.paired], [i] * len(d.paired), "o", color="tab:blue", alpha=0.6,
                markersize=4, label="seed" if first else None)
        ax.plot([d.difference], [i], "D", color="black", markersize=6, label="seed mean" if first else None)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    test = part.test
    tested = ("one dataset: no test" if test is None else "every difference 0" if test.n == 0 else
              f"Wilcoxon p = {test.p:.3g} (n = {test.n})")
    ax.set_title(f"{part.part}, {shots_label(part.shots)}: {tested}", fontsize=9)
    ax.set_xlabel("A − B (points)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def plot_comparison(compared: GridComparison, path: Path) -> Path:
    """`compare --plot`: configuration A against B, a panel per part and shots (`_comparison_panel`),
    `COMPARISON_COLUMNS` a row, titled with A's and B's labels; the legend under the panels."""
    parts = compared.parts
    columns = max(1, min(len(parts), COMPARISON_COLUMNS))
    rows = max(1, math.ceil(len(parts) / columns))
    most = max((len(p.datasets) for p in parts), default=1)
    fig = Figure(figsize=(4.2 * columns, (0.3 * most + 1.4) * rows + 0.6))  # outside pyplot, as `_figure`
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, part in zip(axes, parts, strict=False):
        _comparison_panel(ax, part)
    for ax in axes[len(parts):]:
        ax.axis("off")
    handles = axes[0].get_legend_handles_labels() if parts else ([], [])
    if handles[1]:
        fig.legend(*handles, fontsize=8, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    title = f"A − B: A = {'; '.join(compared.labels_a)}, B = {'; '.join(compared.labels_b)}"
    fig.suptitle("\n".join(textwrap.wrap(title, 40 * columns)), fontsize=10)
    return _save(fig, path)
