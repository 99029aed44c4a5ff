"""The `lathadapter` command line: thin wrappers over the package's Python functions."""

from __future__ import annotations

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


@app.command()
def fit() -> None:
    """Train one method over a cache (no encoder runs) and evaluate it."""
    _not_yet("fit", 5)


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
