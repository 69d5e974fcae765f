"""Body of `tunery plan`: the preflight estimate for a config, without training."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_plan(config: Path, overrides: list[str], as_json: bool) -> int:
    """Print the estimate; exit code 0 when the run fits, 1 when it does not."""
    from tunery.config.load import load_config
    from tunery.trainers.preflight import estimate, format_estimate
    from tunery.trainers.run import prepare

    cfg = load_config(config, overrides).config
    est = estimate(prepare(cfg, log=lambda text: print(text, file=sys.stderr)))
    print(json.dumps(est.to_json(), indent=2) if as_json else format_estimate(est))
    return 0 if est.fits else 1
