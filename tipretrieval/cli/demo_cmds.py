"""`tipretrieval demo`: the whole pipeline on synthetic CLIP-like data."""

from __future__ import annotations

import click

from ..demo.run import QUICK, DemoConfig, run_demo, summary


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (replaced if it holds a previous demo).")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic dataset.")
@click.option("--quick", is_flag=True, help="A smaller dataset and fewer shots (seconds).")
def demo_cmd(out: str, seed: int, quick: bool) -> None:
    """Run store -> build -> tune -> finetune -> eval -> classify on synthetic data."""
    click.echo(summary(run_demo(out, seed=seed, config=QUICK if quick else DemoConfig())))
