"""Plot val_loss (and train_loss, faintly) of one or more runs from their TensorBoard event files.

    python benchmarks/plot_loss_curve.py --run "CPU recipe=lightning_logs/version_3" \\
        [--run LABEL=DIR ...] [--not-measured "GPU seed recipe"] [--x step|wall] [--out docs/loss_curve.png]

DIR is a run folder holding ``events.out.tfevents.*`` files (``lightning_logs/version_N``) or one
such file; without ``LABEL=`` the folder's path is the label. ``--x wall`` plots against wall-clock
seconds since the first event of the run's event files (written when logging starts, before the
first training step). Steps are TensorBoard's: runs since 2026-11-30 log the validation that
follows N optimizer steps at step N (older runs, like docs/runs/gpu_recipe, at N - 1). A table of
step, wall seconds and val_loss per run goes to stdout.
A run without event files or without a val_loss scalar ends the script with one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

EVENT_GLOB = "events.out.tfevents.*"
X_LABELS = {
    "step": "optimizer step (as logged)",
    "wall": "wall-clock seconds since the run's first event",
}
TITLES = {"step": "Validation loss vs step", "wall": "Validation loss vs wall-clock time"}


class PlotError(Exception):
    """A problem with the input, reported as one line."""


@dataclass
class Point:
    """One scalar: its step, seconds since the run's first event, and value."""

    step: int
    wall: float
    value: float


@dataclass
class Run:
    """The loss curves of one run."""

    label: str
    path: Path
    val: list[Point] = field(default_factory=list)
    train: list[Point] = field(default_factory=list)


def parse_run(spec: str) -> tuple[str, Path]:
    """``"LABEL=DIR"`` -> (LABEL, DIR); a bare ``"DIR"`` is its own label."""
    label, sep, path = spec.partition("=")
    if not sep:
        return spec, Path(spec)
    if not label.strip() or not path.strip():
        raise PlotError(f"--run {spec!r}: expected LABEL=DIR or DIR")
    return label.strip(), Path(path.strip())


def event_files(path: Path) -> list[Path]:
    """The TensorBoard event files of a run folder (or the one file given)."""
    if not path.exists():
        raise PlotError(f"run folder {path} does not exist")
    if path.is_file():
        if not path.name.startswith("events.out.tfevents."):
            raise PlotError(f"{path} is not a TensorBoard event file ({EVENT_GLOB})")
        return [path]
    files = sorted(path.glob(EVENT_GLOB))
    if not files:
        raise PlotError(f"no TensorBoard event file ({EVENT_GLOB}) in {path}")
    return files


def load_run(label: str, path: Path) -> Run:
    """Read the val_loss and train_loss scalars of the run at ``path``."""
    event_files(path)  # one-line errors before TensorBoard reads anything
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Scalars: keep every point (the default keeps a random sample of 10,000); others: keep one.
    guidance = {"scalars": 0, "tensors": 1, "images": 1, "audio": 1, "histograms": 1}
    events = EventAccumulator(str(path), size_guidance=guidance)
    events.Reload()
    scalars = events.Tags().get("scalars", [])
    if "val_loss" not in scalars:
        found = ", ".join(sorted(scalars)) or "none"
        raise PlotError(f"no val_loss scalar in the event files of {path} (scalars: {found})")
    start = events.FirstEventTimestamp()
    run = Run(label, path)
    for tag, points in (("val_loss", run.val), ("train_loss", run.train)):
        if tag in scalars:
            points.extend(Point(e.step, e.wall_time - start, e.value) for e in events.Scalars(tag))
    return run


def format_table(runs: list[Run], not_measured: list[str]) -> str:
    """Step, wall seconds and val_loss of every run, then the runs that were not measured."""
    lines = []
    for run in runs:
        lines.append(f"{run.label} ({run.path})")
        lines.append(f"{'step':>8}  {'wall_s':>10}  {'val_loss':>9}")
        lines.extend(f"{p.step:>8d}  {p.wall:>10.1f}  {p.value:>9.4f}" for p in run.val)
        lines.append("")
    lines.extend(f"{name}: not measured" for name in not_measured)
    return "\n".join(lines).rstrip("\n")


def plot(runs: list[Run], not_measured: list[str], x: str, out: Path, title: str | None = None) -> None:
    """Draw val_loss (solid, with markers) and train_loss (faint) per run and save the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        if run.train:
            ax.plot(
                [getattr(p, x) for p in run.train],
                [p.value for p in run.train],
                color=color,
                alpha=0.25,
                linewidth=0.8,
            )
        ax.plot(
            [getattr(p, x) for p in run.val],
            [p.value for p in run.val],
            color=color,
            marker="o",
            markersize=3,
            label=f"{run.label}: val_loss",
        )
    handles, _ = ax.get_legend_handles_labels()
    if any(run.train for run in runs):
        handles.append(Line2D([], [], color="grey", alpha=0.35, label="train_loss (faint, same colour)"))
    handles.extend(Line2D([], [], linestyle="none", label=f"{name}: not measured") for name in not_measured)
    ax.legend(handles=handles)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(title or TITLES[x])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except (OSError, ValueError) as error:  # an unwritable path, or a file type matplotlib cannot write
        raise PlotError(f"cannot write {out}: {error}") from None
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, read the runs, print the table and write the plot; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", action="append", required=True, metavar="[LABEL=]DIR", help="a run folder; repeatable"
    )
    parser.add_argument(
        "--not-measured", action="append", default=[], metavar="NAME", help="a run listed as not measured"
    )
    parser.add_argument("--x", choices=sorted(X_LABELS), default="step", help="x axis (default: step)")
    parser.add_argument("--out", type=Path, default=Path("loss_curve.png"), help="image file to write")
    parser.add_argument("--title", help="plot title (default: from --x)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(*parse_run(spec)) for spec in args.run]
        print(format_table(runs, args.not_measured))
        plot(runs, args.not_measured, args.x, args.out, args.title)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
