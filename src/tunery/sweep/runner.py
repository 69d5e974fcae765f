"""The sweep's loop: keep up to `parallel` trials running, hand their figures to the chooser (which may
prune them), record each end in sweep.json, and stop every trial cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from typing import Callable

from tunery.sweep.state import SweepState
from tunery.sweep.trials import TrialProcess

POLL_S = 0.5  # how often metrics.jsonl of the running trials is read (a few small files)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextmanager
def caught_signals():
    """SIGINT/SIGTERM set a flag (the loop then stops the trials, which checkpoint); a second one raises
    KeyboardInterrupt (the trials still get SIGTERM, as the sweep process dies)."""
    caught: list[int] = []

    def handler(signum, _frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        print(f"\nsignal {signal.Signals(signum).name}: stopping the running trials (they write a "
              "checkpoint); run the same command again to resume", flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in EXIT_CODES}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_trials(state: SweepState, chooser, parallel: int, threads: int | None,
               say: Callable[[str], None] = print) -> int | None:
    """Run the sweep's trials to the end. Returns None, or the exit code of the signal that stopped it."""
    running: list[TrialProcess] = []
    metric = state.plan.metric
    with caught_signals() as caught:
        stopping = False
        while True:
            while not caught and len(running) < parallel and (trial := chooser.next_trial()) is not None:
                running.append(TrialProcess.start(state, trial, threads))
                state.save()
                say(f"{trial.name} started: {_params_text(trial.params)}")
            if not running:
                break
            time.sleep(POLL_S)
            if caught and not stopping:
                stopping = True
                for process in running:
                    process.stop()
            for process in list(running):
                _watch(state, chooser, process, metric, say)
                if process.proc.poll() is None:
                    continue
                running.remove(process)
                if caught and process.proc.returncode in EXIT_CODES.values() and not process.pruning:
                    process.trial.state = "pending"  # stopped by us: resumed from its checkpoint next time
                    say(f"{process.trial.name} stopped; it continues from its checkpoint when the sweep resumes")
                else:
                    process.settle(state)
                    chooser.end(process.trial)
                    say(_end_text(process, metric, state.run_of(process.trial).read_info()))
                state.save()
    return EXIT_CODES[caught[0]] if caught else None


def _watch(state: SweepState, chooser, process: TrialProcess, metric: str, say) -> None:
    for step, value in process.new_figures(state):
        if process.pruning:
            continue
        prune = chooser.report(process.trial, step, value)
        say(f"{process.trial.name} step {step}: {metric} {value:.4f}" + ("; pruned" if prune else ""))
        if prune:
            process.prune()


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _end_text(process: TrialProcess, metric: str, info: dict) -> str:
    trial = process.trial
    seconds = time.monotonic() - process.started
    if trial.state == "failed":
        return f"{trial.name} failed: {trial.error}"
    figure = f"best {metric} {trial.value:.4f}" if trial.value is not None else f"no {metric} measured"
    where = f" (stopped at step {info.get('step')} of {info.get('total_steps')})" if trial.state == "pruned" else ""
    return f"{trial.name} {trial.state}{where}: {figure} ({seconds:.0f} s)"
