"""What a run shows and leaves behind, as callbacks the trainer calls: a progress bar, `metrics.csv`,
`loss.png` and TensorBoard scalars. The loop knows none of them; a caller may add its own."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError
from lmforge.paths import write_atomically

METRICS = [
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "val_ppl",
    "val_bpc",
    "val_bpb",
    "lr",
    "tokens_per_s",
]


class Reporter:
    """The moments a run reports: every step, each log interval, each evaluation, the end."""

    def on_step(self, step: int, loss: float) -> None:
        pass

    def on_log(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        pass

    def on_evaluation(self, evaluations: list[dict[str, Any]], train_losses: list[float]) -> None:
        pass

    def close(self) -> None:
        pass


class StepCallback(Reporter):
    """A caller's `on_step(step, loss)`, after each step's evaluation and checkpoint."""

    def __init__(self, fn):
        self.fn = fn

    def on_step(self, step: int, loss: float) -> None:
        self.fn(step, loss)


class ProgressBar(Reporter):
    """tqdm's bar with the loss, learning rate and tokens/s."""

    def __init__(self, total: int, done: int, arch: str):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            desc=f"training {arch}",
            unit="step",
            dynamic_ncols=True,
            disable=None,  # off when stderr is not a terminal
        )

    def on_step(self, step: int, loss: float) -> None:
        self.bar.update(1)

    def on_log(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")

    def close(self) -> None:
        self.bar.close()


class MetricsFile(Reporter):
    """`metrics.csv`: one row per evaluation (every figure it has), rewritten atomically each
    time."""

    def __init__(self, out: Path):
        self.path = out / "metrics.csv"

    def on_evaluation(self, evaluations: list[dict[str, Any]], train_losses: list[float]) -> None:
        # the common columns, then what a kind of run adds (BLEU, accuracy, ...) as it appears
        extra = [k for e in evaluations for k in e if k not in METRICS]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, METRICS + list(dict.fromkeys(extra)))
        writer.writeheader()
        writer.writerows(evaluations)
        data = buffer.getvalue().encode()
        write_atomically(self.path, lambda f: f.write(data))


class LossPlot(Reporter):
    """`loss.png`: the training loss of every step and the validation loss of each evaluation."""

    def __init__(self, out: Path, title: str):
        self.path, self.title = out / "loss.png", title

    def on_evaluation(self, evaluations: list[dict[str, Any]], train_losses: list[float]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        steps = range(1, len(train_losses) + 1)
        ax.plot(steps, train_losses, lw=0.8, alpha=0.6, label="train (per step)")
        val = [(e["step"], e["val_loss"]) for e in evaluations if "val_loss" in e]
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(self.title)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        write_atomically(self.path, lambda f: fig.savefig(f, format="png"))
        plt.close(fig)


class TensorBoard(Reporter):
    """Scalars under `tensorboard/` (needs the tensorboard package)."""

    def __init__(self, out: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard=True needs the tensorboard package: pip install tensorboard"
            ) from None
        self.writer = SummaryWriter(str(out / "tensorboard"))

    def on_log(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def on_evaluation(self, evaluations: list[dict[str, Any]], train_losses: list[float]) -> None:
        last = evaluations[-1]
        if "val_loss" in last:
            self.writer.add_scalar("val/loss", last["val_loss"], last["step"])

    def close(self) -> None:
        self.writer.close()
