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


@app.command()
def grid() -> None:
    """Run an ablation grid (cartesian product of options) over caches, resumably."""
    _not_yet("grid", 6)


@app.command()
def report() -> None:
    """Write paper-style tables and plots from a grid's results table."""
    _not_yet("report", 6)


@app.command()
def demo() -> None:
    """Build the bundled demo dataset and cache, run the methods, print the table and write the plots."""
    _not_yet("demo", 7)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
