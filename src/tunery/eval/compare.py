"""`tunery compare RUN RUN ...`: runs side by side (figures from run.json and eval.json) with the config
keys whose values differ marked, so the one change that explains a difference stands out."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from tunery.errors import TuneryError

FIGURES = ("status", "step", "best_val_loss", "final_loss", "elapsed_s", "trainable_params", "train_examples")


def flatten(data, prefix: str = "") -> dict:
    """Nested mappings as dotted keys: {"training": {"lr": 1}} -> {"training.lr": 1}."""
    flat = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _eval_figures(root: Path) -> dict:
    path = root / "eval.json"
    if not path.is_file():
        return {}
    result = json.loads(path.read_text(encoding="utf-8"))
    primary = result.get("primary")
    out = {"eval.best": result.get("best"), "eval.examples": result.get("n_examples")}
    for row in result.get("systems", []):
        score = row["scores"].get(primary, {}).get("mean")
        out[f"eval.{primary}: {row['system']['name']}"] = score
    for f in result.get("forgetting", {}).values():
        out["eval.probe before"] = f["before"]["mean"]
        out["eval.probe after"] = f["after"]["mean"]
    return out


def compare_runs(runs: list[str]) -> dict:
    """{"runs": [...], "rows": [{"key", "values", "differs", "section"}]} for figures, eval and config."""
    
    from tunery.runfolder import RunFolder, is_run_folder

    columns = []
    for run in runs:
        root = Path(run).expanduser()
        if not is_run_folder(root):
            raise TuneryError(f"{run} is not a run folder (no run.json)")
        folder = RunFolder(root)
        typed = folder.read_config()
        config = typed.model_dump(mode="json") if typed is not None else {}
        info = folder.read_info()
        columns.append({"figures": {k: info.get(k) for k in FIGURES}, "eval": _eval_figures(root),
                        "config": flatten(config)})
    rows = []
    for section in ("figures", "eval", "config"):
        keys = list(dict.fromkeys(k for c in columns for k in c[section]))
        for key in keys:
            values = [c[section].get(key) for c in columns]
            rows.append({"section": section, "key": key, "values": values,
                         "differs": len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1})
    return {"runs": runs, "rows": rows}


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_compare(table: dict, color: bool = False) -> str:
    """Plain text; config rows that differ are marked with `*` (and shown bold yellow on a terminal).
    Config rows that are equal everywhere are left out, with a count."""
    names = [Path(r).name or r for r in table["runs"]]
    width = max(len(r["key"]) for r in table["rows"]) + 2
    cols = max(12, *(len(n) for n in names), *(len(_show(v)) for r in table["rows"] for v in r["values"])) + 2
    lines = [" " * (width + 2) + "".join(n.ljust(cols) for n in names)]
    same = 0
    for row in table["rows"]:
        if row["section"] == "config" and not row["differs"]:
            same += 1
            continue
        mark = "*" if row["differs"] else " "
        text = f"{mark} {row['key']:<{width}}" + "".join(_show(v).ljust(cols) for v in row["values"])
        lines.append(f"\033[1;33m{text}\033[0m" if color and row["differs"] and row["section"] == "config" else text)
    lines.append(f"(* differs between runs; {same} config keys are equal in all runs and not shown)")
    return "\n".join(lines)


def render_compare_html(table: dict) -> str:
    """A self-contained page with every row; differing config values highlighted."""
    from tunery.eval.report_html import CSS

    head = "".join(f"<th>{escape(r)}</th>" for r in table["runs"])
    rows = []
    for row in table["rows"]:
        cls = ' class="diff"' if row["differs"] else ""
        cells = "".join(f"<td{cls}>{escape(_show(v))}</td>" for v in row["values"])
        rows.append(f'<tr data-differs="{str(row["differs"]).lower()}"><td>{escape(row["section"])}</td>'
                    f"<td>{escape(row['key'])}</td>{cells}</tr>")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tunery compare</title><style>{CSS}</style>"
            f"</head><body><h1>tunery compare</h1><table id=\"compare\"><tr><th>section</th><th>key</th>{head}</tr>"
            + "\n".join(rows) + "</table></body></html>")
