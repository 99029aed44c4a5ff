"""The `lathadapter` command line: thin wrappers over the package's Python functions."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Few-shot adaptation of CLIP-style models over a precomputed feature cache.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
cache_app = typer.Typer(help="Build and inspect HDF5 feature caches (one encoder pass over a dataset).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _not_yet(what: str, issue: int) -> None:
    typer.echo(f"error: `lathadapter {what}` is not implemented yet (tracked in issue {issue}).", err=True)
    raise typer.Exit(code=2)


@cache_app.command("build")
def cache_build() -> None:
    """Encode a CoOp-layout dataset with an open_clip model into a fingerprinted HDF5 cache."""
    _not_yet("cache build", 3)


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)


def _format_accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


@app.command()
def fit(
    cache: Path | None = typer.Option(None, help="Cache file (default: the one cache under caches/)."),
    method: str = typer.Option("lathadapter", help="Method name (zeroshot, linear-probe, clip-adapter, "
                               "tip-adapter, tip-adapter-f, taskres, lathadapter)."),
    shots: int = typer.Option(4, help="Shots per class of the few-shot subset."),
    seed: int = typer.Option(1, help="Few-shot subset seed (also seeds training)."),
    classes: str = typer.Option("all", help="all: every class; base: base-to-novel (train on base, report HM)."),
    text: str = typer.Option("coop", help="Class text features: coop (one template) or ensemble."),
    select: str = typer.Option("last", help="Model kept: last epoch, or best on the few-shot val set (val)."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available, else cpu)."),
    out: Path = typer.Option(Path("runs"), help="Folder that receives the run directory."),
    set_: list[str] = typer.Option([], "--set", help="Method option NAME=VALUE (repeatable)."),
) -> None:
    """Train one method over a cache (no encoder runs), evaluate it and write a run directory."""
    from lathadapter.adapter.fit import fit as fit_run
    from lathadapter.adapter.options import parse_assignments

    try:
        metrics = fit_run(cache, method, shots, seed, classes=classes, text=text, select=select, device=device,
                          out=out, **parse_assignments(set_))
    except (ValueError, OSError) as error:
        _fail(error)
    accuracy = ", ".join(f"{k} {_format_accuracy(v)}" for k, v in metrics["accuracy"].items())
    hm = f", HM {_format_accuracy(metrics['hm'])}" if classes == "base" else ""
    typer.echo(f"{method} · {metrics['dataset']} · {shots}-shot seed {seed} · {accuracy}{hm} · "
               f"train {metrics['train_seconds']:.2f} s, eval {metrics['eval_seconds']:.2f} s → {metrics['run_dir']}")


def _split_ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(ValueError(f"{option} expects comma-separated integers, got {text!r}"))
        raise


@app.command()
def grid(
    cache: list[str] = typer.Option([], help="Cache file(s) (repeatable; default: the one cache under caches/)."),
    method: str | None = typer.Option(None, help="Comma-separated methods [default: lathadapter]."),
    shots: str | None = typer.Option(None, help="Comma-separated shots [default: 1,2,4,8,16]."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds [default: 1,2,3]."),
    classes: str | None = typer.Option(None, help="Comma-separated class protocols: all, base [default: all]."),
    text: str | None = typer.Option(None, help="Comma-separated text features: coop, ensemble [default: coop]."),
    set_: list[str] = typer.Option([], "--set", help="Axis [METHOD.]OPTION=V1,V2,... (repeatable)."),
    config: Path | None = typer.Option(None, help="YAML/TOML file of axes (keys: caches, methods, shots, seeds, "
                                       "classes, text, select, options); command-line axes override it."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available)."),
    out: Path = typer.Option(Path("grids/grid"), help="Grid folder: runs/, results.csv. Re-running resumes."),
) -> None:
    """Run an ablation grid (cartesian product of the axes) in one process; finished runs are skipped."""
    from lathadapter.adapter.fit import default_device
    from lathadapter.adapter.grid import GridSpec, load_spec_file, parse_axis_assignments, run_grid, split_list
    from lathadapter.cache.store import resolve_cache

    try:
        axes: dict = load_spec_file(config) if config else {}
        for key, value in (("methods", method), ("classes", classes), ("text", text)):
            if value is not None:
                axes[key] = split_list(value)
        for key, value in (("shots", shots), ("seeds", seeds)):
            if value is not None:
                axes[key] = _split_ints(value, f"--{key}")
        axes["shots"] = [int(v) for v in axes.get("shots", [1, 2, 4, 8, 16])]
        axes["seeds"] = [int(v) for v in axes.get("seeds", [1, 2, 3])]
        axes["options"] = {**axes.get("options", {}), **parse_axis_assignments(set_)}
        axes["caches"] = [str(c) for c in (cache or axes.get("caches") or [resolve_cache(None)])]
        summary = run_grid(GridSpec(**axes), out, device or default_device())
    except (ValueError, OSError) as error:
        _fail(error)
    typer.echo(f"grid: {summary['runs']} runs ({summary['done']} run, {summary['skipped']} already done) in "
               f"{summary['seconds']:.1f} s → {summary['results']}")


@app.command()
def protocol(
    name: str = typer.Argument(..., help="few-shot | base-to-novel | cross-dataset | domain"),
    cache: list[str] = typer.Option(..., help="Dataset cache(s); for cross-dataset and domain, the source cache."),
    target: list[str] = typer.Option([], help="Target cache(s) (cross-dataset, domain)."),
    method: str = typer.Option(",".join(["zeroshot", "linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f",
                                         "taskres", "lathadapter"]), help="Comma-separated methods."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated seeds."),
    shots: str | None = typer.Option(None, help="Override the protocol's shots (default 1,2,4,8,16 or 16)."),
    set_: list[str] = typer.Option([], "--set", help="Axis [METHOD.]OPTION=V1,V2,... (repeatable)."),
    text: str = typer.Option("coop", help="Class text features: coop or ensemble."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available)."),
    out: Path | None = typer.Option(None, help="Output folder (default: grids/<protocol>)."),
) -> None:
    """Run one of the field's four evaluation protocols over caches you have built (resumable)."""
    from lathadapter.adapter.fit import default_device
    from lathadapter.adapter.grid import parse_axis_assignments, split_list
    from lathadapter.adapter.protocols import run_protocol

    try:
        summary = run_protocol(name, list(cache), out or Path("grids") / name, split_list(method),
                               _split_ints(seeds, "--seeds"), list(target), parse_axis_assignments(set_), text,
                               _split_ints(shots, "--shots") if shots else None, device or default_device())
    except (ValueError, OSError) as error:
        _fail(error)
    typer.echo(f"{name}: {summary['runs']} runs ({summary['done']} run, {summary['skipped']} already done) "
               f"→ {summary['results']}")


@app.command()
def report(
    results: Path = typer.Argument(..., help="A results.csv written by `grid` or `protocol`."),
    out: Path | None = typer.Option(None, help="Report folder (default: <results folder>/report)."),
    disk_run: Path | None = typer.Option(None, help="LatHAdapter run directory for the Poincaré-disk picture "
                                         "(default: the table's last lathadapter run)."),
) -> None:
    """Write paper-style tables (markdown, CSV) and plots from a results table."""
    from lathadapter.adapter.report import write_report

    try:
        written = write_report(results, out or results.parent / "report", disk_run)
    except (ValueError, OSError) as error:
        _fail(error)
    typer.echo(written["markdown"])
    typer.echo(f"report: {written['report']}; plots: {', '.join(written['plots']) or 'none'}")


@app.command()
def demo() -> None:
    """Build the bundled demo dataset and cache, run the methods, print the table and write the plots."""
    _not_yet("demo", 7)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
