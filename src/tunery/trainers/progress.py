"""What a person watching a run sees: a progress bar on a terminal and one stable line per logging step."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """A tqdm bar (only on a terminal, so logs stay clean) plus plain log lines.

    Tokens per second are measured over the window since the last log line, so they track the
    current speed rather than the average since start.
    """

    def __init__(self, total_steps: int, start_step: int, elapsed: float, enabled: bool = True):
        self.total, self.enabled = total_steps, enabled
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=not (enabled and sys.stderr.isatty()), file=sys.stderr)
        self.start_step, self.start_clock, self.elapsed_before = start_step, time.monotonic(), elapsed
        self.window_tokens, self.window_clock = 0, time.monotonic()
        self.last_val: float | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.start_clock

    def seconds_left(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self.start_clock) / done * (self.total - step)

    def count(self, tokens: int) -> None:
        self.window_tokens += tokens

    def tokens_per_second(self) -> float:
        span = time.monotonic() - self.window_clock
        rate = self.window_tokens / span if span > 0 else 0.0
        self.window_tokens, self.window_clock = 0, time.monotonic()
        return rate

    def step_done(self, step: int, loss: float, lr: float) -> None:
        post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
        if self.last_val is not None:
            post["val"] = f"{self.last_val:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def log_line(self, step: int, loss: float, lr: float, tok_s: float) -> None:
        val = f" | val {self.last_val:.4f}" if self.last_val is not None else ""
        left = self.seconds_left(step)
        left_text = format_duration(left) if left == left else "?"
        self.write(
            f"step {step}/{self.total} | loss {loss:.4f}{val} | lr {lr:.2e} | {tok_s:.0f} tok/s"
            f" | {format_duration(self.elapsed())} elapsed | {left_text} left"
        )

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar.disable:
            print(text, flush=True)
        else:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
