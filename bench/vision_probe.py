"""Is the answer in the image features at all? Linear probes on what the projector of
`smollm2-135m-vision` receives, per question kind, before any training of the language model.

    OMP_NUM_THREADS=1 python bench/vision_probe.py [--work DIR] [--train 320] [--heldout 120]
                                                   [--out bench/results/vision_probe.json]

Renders the data of `bench/vision_shapes.py` (`examples/vision/make_shapes.py`, the same seeds), runs
each image through the composed model's processor and frozen backbone (the 16 x (3 + 256 + 512) grid
the projector reads), and fits one multinomial logistic regression per question kind and feature set
on the training renderings of that kind; held-out exact match with a 95% bootstrap interval. Feature
sets: everything, each tap alone (cell mean colours, conv3_3, conv5_2), and everything after the
projector's LayerNorm at initialisation (what its first linear layer reads). Also printed: the scale of
each tap before and after that LayerNorm, and the scale of the image tokens the untrained projector
writes next to the language model's own token embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "vision"))
import make_shapes  # noqa: E402

TAPS = {"pixels": slice(0, 3), "conv3_3": slice(3, 259), "conv5_2": slice(259, 771)}


@torch.no_grad()
def backbone_features(model, processor, folder: Path, records: list[dict]) -> torch.Tensor:
    """[records, 16, 771]: the frozen backbone's grid for each record's image, as the projector gets it."""
    from PIL import Image

    out = []
    for record in records:
        path = folder / record["messages"][1]["content"][0]["path"]
        pixels = processor.pixels(Image.open(path)).unsqueeze(0)
        out.append(model.model.vision_backbone(pixels)[0])
    return torch.stack(out)


def fit_probe(train_x, train_y, classes: int, steps: int = 300, weight_decay: float = 1e-3):
    """Multinomial logistic regression on standardised features (full-batch L-BFGS); returns a predictor."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    x = (train_x - mean) / std

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, train_y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return lambda test_x: (((test_x - mean) / std) @ weight + bias).argmax(-1)


def feature_sets(features: torch.Tensor, norm: torch.nn.LayerNorm) -> dict[str, torch.Tensor]:
    sets = {"all": features}
    sets |= {name: features[..., cut] for name, cut in TAPS.items()}
    with torch.no_grad():
        sets["all after LayerNorm"] = norm(features)
    return {name: value.flatten(1) for name, value in sets.items()}


def probe_table(train_feats, heldout_feats, train, heldout, norm) -> dict:
    from tunery.eval.stats import bootstrap_ci

    train_sets, heldout_sets = feature_sets(train_feats, norm), feature_sets(heldout_feats, norm)
    table: dict = {}
    for kind in make_shapes.QUESTIONS:
        pick_train = [i for i, r in enumerate(train) if r["kind"] == kind]
        pick_held = [i for i, r in enumerate(heldout) if r["kind"] == kind]
        labels = sorted({r["messages"][-1]["content"] for r in train + heldout if r["kind"] == kind})
        y_train = torch.tensor([labels.index(train[i]["messages"][-1]["content"]) for i in pick_train])
        y_held = torch.tensor([labels.index(heldout[i]["messages"][-1]["content"]) for i in pick_held])
        row = {}
        for name in train_sets:
            torch.manual_seed(0)
            predict = fit_probe(train_sets[name][pick_train], y_train, len(labels))
            train_hits = (predict(train_sets[name][pick_train]) == y_train).float()
            hits = (predict(heldout_sets[name][pick_held]) == y_held).float().tolist()
            ci = bootstrap_ci(hits)
            row[name] = {"train": train_hits.mean().item(), "heldout": sum(hits) / len(hits),
                         "ci95": [ci.low, ci.high]}
        table[kind] = {"n_train": len(pick_train), "n_heldout": len(pick_held), "classes": len(labels), "probes": row}
    return table


@torch.no_grad()
def scales(model, features: torch.Tensor) -> dict:
    """RMS of each tap before / after the projector's LayerNorm, and of the projected image tokens next
    to the language model's token embeddings (an image token far smaller or larger is hard to read)."""
    projector = model.model.multi_modal_projector
    normed = projector.norm(features)
    out = {f"{name} rms before / after LayerNorm": [features[..., cut].pow(2).mean().sqrt().item(),
                                                    normed[..., cut].pow(2).mean().sqrt().item()]
           for name, cut in TAPS.items()}
    out["image token rms (untrained projector)"] = projector(features).pow(2).mean().sqrt().item()
    out["text token embedding rms"] = model.get_input_embeddings().weight.pow(2).mean().sqrt().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("vision-probe"))
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--heldout", type=int, default=120)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vision_probe.json")
    args = parser.parse_args()
    from tunery.vision.model import load_processor, load_vlm

    torch.set_num_threads(1)
    work = args.work.resolve()
    (work / "images").mkdir(parents=True, exist_ok=True)
    train = make_shapes.make_split(work, "train", args.train, 0)
    heldout = make_shapes.make_split(work, "heldout", args.heldout, 0)
    model, processor = load_vlm("smollm2-135m-vision"), load_processor("smollm2-135m-vision")
    train_feats = backbone_features(model, processor, work, train)
    heldout_feats = backbone_features(model, processor, work, heldout)
    result = {"train": len(train), "heldout": len(heldout), "scales": scales(model, train_feats),
              "table": probe_table(train_feats, heldout_feats, train, heldout, model.model.multi_modal_projector.norm)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial.json")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    for name, value in result["scales"].items():
        print(f"{name}: {value}")
    for kind, row in result["table"].items():
        for name, probe in row["probes"].items():
            print(f"{kind:7} {name:20} train {probe['train']:.2f}  held-out {probe['heldout']:.2f} "
                  f"[{probe['ci95'][0]:.2f}, {probe['ci95'][1]:.2f}]  (chance {1 / row['classes']:.2f})")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
