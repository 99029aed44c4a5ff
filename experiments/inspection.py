"""`lathadapter inspect`: a trained run loaded back and scored again, set by set (its test sets and a transfer run's
targets): accuracy and ECE against its metrics.json, the ECE after temperature scaling, its worst and best classes,
and on request a per-class CSV and plots. The command parses its options and prints what this module says."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from lathadapter.adapter.evaluate import NaNScores
from lathadapter.experiments.records import distinct_slugs, percent, plural
from lathadapter.experiments.run import forget_stale
from lathadapter.experiments.trained import (
    PLOTS_WRITTEN,
    TrainedRun,
    check_per_class_out,
    class_accuracies,
    load,
    per_class_rows,
    ranked,
    write_per_class,
)

SHOWN = 5  # the worst and the best classes printed (at most half the classes each)

Echo = Callable[[str], None]


def inspect_run(run_dir: Path, cache: Path | None, device: str | None, targets: list[Path], out: Path | None,
                plots: Path | None, echo: Echo, note: Echo) -> None:
    """Load `run_dir` (`load`) and report each of its test sets through `echo` (files written through `note`); a
    folder `plots` (and its parents) made here and left empty by a failure is removed before the error goes on."""
    made: list[Path] = []  # the folders --plots made, removed again when the run fails before drawing in them
    try:
        if out is not None:
            check_per_class_out(out)
        run = load(run_dir, cache, device, targets=list(targets))
        if plots is not None:  # before any scoring; after loading, so a run that cannot be loaded leaves no folder
            made = [folder for folder in (plots, *plots.parents) if not folder.exists()]
            plots.mkdir(parents=True, exist_ok=True)
        _report(run, run_dir, out, plots, echo, note)
    except (ValueError, OSError):
        for folder in made:  # innermost first; one holding a file (a plot drawn before the failure) stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _report(run: TrainedRun, run_dir: Path, out: Path | None, plots: Path | None, echo: Echo, note: Echo) -> None:
    c = run.config
    echo(f"{c.method} · {run.data.dataset} · {c.shots}-shot seed {c.seed} · classes {c.classes} · {run_dir}")
    recorded_targets = [name for name in run.metrics.get("targets") or {} if name != "source"]
    own = "source" if recorded_targets else ""  # a transfer run's own test set: the results table's `source`
    sets = [(part, None, part, run.metrics["accuracy"].get(part), (run.metrics.get("ece") or {}).get(part))
            for part in run.parts]
    sets += [(None, name, f"target {name}", run.metrics["targets"].get(name),
              (run.metrics.get("targets_ece") or {}).get(name)) for name in run.targets]
    # targets `a b` and `a|b`: a file each, named over every target the run records, as a report names them, so
    # that `--target` of one of them alone names its file as when both are given
    files = distinct_slugs(["source", *recorded_targets, *run.targets])
    per_class = {}  # the sets the method scores: each set's test images are scored three times (evaluation, the
    # temperature-scaled ECE, the confusion matrix), each a few hundredths of a second on 3,000 images
    reliability, drawn = [], []  # the sets' bins, and the confusion matrices drawn (`--plots`)
    for part, name, label, recorded, recorded_ece in sets:
        try:  # accuracy and ECE as evaluation (a target: its protocol) computes them
            scores = run.scores(part, name)
        except NaNScores:  # a run that diverged is refused when loaded: what it saved has changed since
            raise NaNScores(f"{run_dir}: the loaded {c.method} gives NaN or infinite scores on {label}, where "
                            f"metrics.json records {percent(recorded)}: its weights.pt (or its cache) is not what the "
                            "run saved; train it again (fit --force, or delete the run directory and rerun its grid)"
                            ) from None
        accuracy = None if scores is None else scores.accuracy
        same = "as metrics.json" if accuracy == recorded else \
            f"metrics.json records {percent(recorded)}: the loaded model does not score as the run did"
        ece = "" if scores is None else f", ECE {scores.ece:.2f}%" + (
            "" if recorded_ece == scores.ece else " (metrics.json: none, saved before ECE)"
            if recorded_ece is None else f" (metrics.json: {recorded_ece:.2f}%)")
        echo(f"{label}: {percent(accuracy)} ({same}){ece}")
        if accuracy is None:
            continue
        echo("  after temperature scaling: " + _temperature_line(run, part, name))
        matrix, names = run.confusion(part, name), run.test_set(part, name)[2].class_names
        per_class[(part or "all", name or own)] = class_accuracies(matrix, names)
        classes = ranked(per_class[(part or "all", name or own)])
        if plots is not None:
            from lathadapter.experiments.plots import plot_confusion

            reliability.append((label, scores.reliability))
            drawn.append(plot_confusion(matrix, names, f"{c.method} · {label}: accuracy {accuracy:.2f}%",
                                        plots / f"confusion_{part or 'target_' + files[name or '']}.png"))
        shown = min(SHOWN, max(1, len(classes) // 2))
        for side, picked in (("worst", classes[:shown]), ("best", classes[::-1][:shown])):
            echo(f"  {side}: " + ", ".join(f"{k.name} {percent(k.accuracy)} ({k.correct}/{k.count})" for k in picked))
    if recorded_targets and not run.targets:
        echo(f"targets: metrics.json records {', '.join(recorded_targets)}; --target PATH (a cache of each) scores "
             "them")
    if out is not None:
        write_per_class(out, per_class_rows(per_class))
        note(f"wrote {out}")
    if reliability:
        from lathadapter.experiments.plots import plot_poincare_disk, plot_run_reliability

        drawn.insert(0, plot_run_reliability(reliability, f"{c.method} · {run.data.dataset} · {c.shots}-shot "
                                             f"seed {c.seed}", plots / "reliability.png"))
        if (run.folder / "points.pt").is_file():  # a LatHAdapter run: its lifted points, as a report draws them
            drawn.append(plot_poincare_disk(run.folder, plots))
        note(f"plots: {', '.join(str(path) for path in drawn)}")
    if plots is not None:  # an earlier inspect's plots not drawn again (another run's, a target's) go
        forget_stale(plots, drawn, PLOTS_WRITTEN)


def _temperature_line(run: TrainedRun, part: str | None, name: str | None) -> str:
    """The ECE after a temperature fitted on the val images of the classes the run trained on, and on how many."""
    try:
        scaled = run.temperature_scaled(part, name)
    except NaNScores as error:  # the val images' scores are NaN where the test set's are not: no T
        return f"none: {error}"
    if scaled is None:
        return "no val image to fit a temperature on"
    fitted_on = " of the source's classes" if name else " of the base classes" if run.novel is not None else ""
    edge = "; the end of the range searched: the val images do not bound T" if scaled.at_edge else ""
    return (f"ECE {scaled.scores.ece:.2f}% (T = {scaled.temperature:.3g}, fitted on "
            f"{plural(scaled.val_images, 'val image')}{fitted_on}{edge})")
