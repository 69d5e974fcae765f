"""`tunery sweep`: many runs of one config that differ in a few settings, ranked by one figure.

A sweep folder (marked as tunery's) holds `sweep.json` (the plan and each trial's state), one ordinary
run folder per trial (`trial-000/` ... made by `tunery train`, so every later command takes them), the
trials' logs (`logs/`), and at the end `results.json`, `results.md`, `sweep.png` and `best.yaml`.

Trials run as `tunery train` processes (`trials.py`): the sweep reads each one's metrics.jsonl as it
grows, which is what pruning needs, a kill of the sweep loses nothing a checkpoint holds (`--resume`
of a trial continues it), and several trials can run at once. Grids are cartesian products of
`--grid key=v1,v2` axes (`space.py`); `--search optuna` samples the `sweep.params` ranges and prunes
trials whose validation figure falls behind (`search.py`).
"""
