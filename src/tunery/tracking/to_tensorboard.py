"""TensorBoard event files in the run folder's `tensorboard/` (`tensorboard --logdir runs` shows every
run), through torch's SummaryWriter (the `tensorboard` extra).

Scalars are named by the kind of the metrics line: `train/loss`, `eval/val_loss`, `grader/score`, with
the optimizer step as their step. The resolved config is a text summary `config`; the final figures
are `final/<name>` at the last step. A resumed run purges what the old process wrote after the
checkpoint it resumes from, so the curves show each step once, as metrics.jsonl does.
"""

from __future__ import annotations

from pathlib import Path

from tunery.tracking.values import final_figures, scalars_of


class TensorBoardTracker:
    def __init__(self, folder: Path, resumed_step: int):
        self.folder, self.resumed_step = folder, resumed_step
        self.writer = None
        self.last_step = resumed_step

    def start(self, config_yaml: str, _config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = self.resumed_step + 1 if self.resumed_step else None
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge, flush_secs=10)
        if not self.resumed_step:
            self.writer.add_text("config", "```yaml\n" + config_yaml + "```", 0)

    def metrics(self, record: dict) -> None:
        step = int(record.get("step", 0))
        self.last_step = max(self.last_step, step)
        for tag, value in scalars_of(record).items():
            self.writer.add_scalar(tag, value, step)

    def metrics_batch(self, records: list[dict]) -> None:
        for record in records:
            self.metrics(record)

    def finish(self, status: str, figures: dict) -> None:
        for name, value in final_figures(figures).items():
            self.writer.add_scalar(f"final/{name}", value, self.last_step)
        self.writer.add_text("status", status, self.last_step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
