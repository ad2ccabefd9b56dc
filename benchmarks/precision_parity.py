"""Does bf16-mixed training reach the same validation loss as fp32? Same recipe, seed and steps.

    python benchmarks/precision_parity.py [--config configs/shakespeare_char_cpu.yaml] [-- extra fit args]

Runs ``cli.py fit`` once per precision, each in its own temporary folder, and prints every
validation loss of both runs side by side, the final difference and each run's wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402
from plot_loss_curve import load_run  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


def fit(config: Path, precision: str, extra: list[str]) -> tuple[dict[int, float], float]:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            str(ROOT / "cli.py"),
            "fit",
            f"--config={config}",
            f"--trainer.precision={precision}",
            "--trainer.max_time=null",  # same number of steps for both, however long they take
            f"--trainer.default_root_dir={tmp}",
            f"--checkpoint.dirpath={tmp}/checkpoints",
            "--trainer.enable_progress_bar=false",
            "--sample.print_at_end=false",
            *extra,
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        run = load_run(precision, next(Path(tmp).glob("lightning_logs/version_*")))
        return {point.step: point.value for point in run.val}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "shakespeare_char_cpu.yaml")
    parser.add_argument("extra", nargs="*", help="more `cli.py fit` arguments, after --")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"config: {args.config} {' '.join(args.extra)}")
    runs = {precision: fit(args.config, precision, args.extra) for precision in PRECISIONS}
    print("\n| step | " + " | ".join(f"val_loss {p}" for p in PRECISIONS) + " | difference |")
    print("|---|---|---|---|")
    fp32, bf16 = (runs[p][0] for p in PRECISIONS)
    for step in sorted(fp32):
        if step in bf16:
            print(f"| {step} | {fp32[step]:.4f} | {bf16[step]:.4f} | {bf16[step] - fp32[step]:+.4f} |")
    last = max(fp32)
    difference = bf16[last] - fp32[last]
    print(f"\nwall time: 32-true {runs['32-true'][1]:.1f} s, bf16-mixed {runs['bf16-mixed'][1]:.1f} s")
    verdict = "within" if abs(difference) <= 0.02 else "NOT within"
    print(f"final val_loss difference (bf16 - fp32): {difference:+.4f}, {verdict} 0.02")


if __name__ == "__main__":
    main()
