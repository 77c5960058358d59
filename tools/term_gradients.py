"""What each QFM-IQM term does to the gradient (issue 23, point 6): on batches of a split's
training side, the gradient of L_match and of L_adv against the gradient of L_reg, per part of
the network (gate, adapter, decoder and, with --train-blocks, the backbone's last blocks).

    python tools/term_gradients.py --model runs/protocol185_frozen/protocol185_qfm/split00/best.safetensors \\
        --dataset datasets/protocol185.csv --split-file runs/protocol185_frozen/splits.json \\
        --split-index 0 --qfm-config configs/protocol185_qfm.yaml [--train-blocks 1] [--batches 16]

Each term's gradient is the gradient of ``L_reg + lambda * term`` minus that of ``L_reg`` on the
same batch (the objective always includes L_reg), so it is exactly what the term adds to a step.
Reported per part, medians over the batches: the term's gradient norm relative to L_reg's, and the
cosine between them. A cosine near 1 means the term pushes the way the regression already does
(more of the same step); near 0, a direction of its own; negative, against it. Prints a Markdown
table and writes it as JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qfmiqm.data.datasets import load as load_dataset
from qfmiqm.data.transforms import normalize
from qfmiqm.eval.evaluate import select_items
from qfmiqm.models.registry import load_net, resolve_model
from qfmiqm.train.data import EvalCrops
from qfmiqm.train.finetune import backbone_units
from qfmiqm.train.objective import QFMConfig, QFMObjective
from qfmiqm.train.schema import load_train_config

TERMS = {"match": dict(match=True, adv=False, kd=False), "adv": dict(match=False, adv=True, kd=False)}


def parameter_parts(net, train_blocks: int) -> dict[str, list[torch.nn.Parameter]]:
    """The head's gate, adapter and decoder, and the backbone's last ``train_blocks`` blocks."""
    head = net.head
    parts = {"gate": list(head.gate.parameters()) if head.gate is not None else [],
             "adapter": list(head.adapter.parameters()), "decoder": list(head.decoder.parameters())}
    if train_blocks:
        _, names, _ = backbone_units(net.backbone)
        parts["backbone blocks"] = [p for n in names[-train_blocks:]
                                    for p in net.backbone.model.get_submodule(n).parameters()]
    return {k: v for k, v in parts.items() if v}


def flat_grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    # the batch's backbone graph is shared by the three losses
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def term_statistics(net, batches, qfm: QFMConfig, train_blocks: int, seed: int = 0) -> dict:
    """Per term and part: median norm ratio and cosine to L_reg's gradient over ``batches``."""
    parts = parameter_parts(net, train_blocks)
    every = [p for ps in parts.values() for p in ps]
    measured = {id(p) for p in every}
    for p in net.parameters():  # the frozen rest of the backbone builds no graph
        p.requires_grad_(id(p) in measured)
    sizes = [sum(p.numel() for p in ps) for ps in parts.values()]
    reg_only = QFMObjective(replace(qfm, match=False, adv=False, kd=False))
    stats = {t: {part: {"ratio": [], "cos": []} for part in parts} for t in TERMS}
    for x, y in batches:
        feats = net.backbone(x)  # once per batch: the objectives only differ in the head

        def loss_of(objective: QFMObjective) -> torch.Tensor:
            torch.manual_seed(seed)
            return objective(net.head, feats, y)[0]

        g_reg = flat_grads(loss_of(reg_only), every).split(sizes)
        for term, switches in TERMS.items():
            g_all = flat_grads(loss_of(QFMObjective(replace(qfm, **switches))), every).split(sizes)
            for part, gr, ga in zip(parts, g_reg, g_all):
                g_term = ga - gr
                s = stats[term][part]
                s["ratio"].append(float(g_term.norm() / (gr.norm() + 1e-12)))
                s["cos"].append(float(torch.nn.functional.cosine_similarity(g_term, gr, dim=0)))
    return {t: {part: {k: statistics.median(v) for k, v in s.items()} for part, s in parts_.items()}
            for t, parts_ in stats.items()}


def training_batches(model: str, dataset: str, split_file: str, split_index: int, n_batches: int,
                     batch_size: int, seed: int):
    """The model and ``n_batches`` random batches (normalised views, centred labels) of the split's
    training side, as training would see them (labels minus the training side's mean)."""
    entry = resolve_model(model)
    net, policy = load_net(entry).eval(), entry.card.input
    ds = select_items(load_dataset(dataset), split_file, split_index, "train")
    views = EvalCrops(ds, policy)
    labels = np.asarray(ds.labels, dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(ds))[: n_batches * batch_size]
    batches = []
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x = torch.stack([views[int(i)][1][0] for i in idx])  # the first (whole-image) view
        y = torch.from_numpy(labels[idx] - labels.mean())
        batches.append((normalize(x, policy), y))
    return net, batches


def markdown(stats: dict) -> str:
    parts = list(next(iter(stats.values())))
    lines = ["| part | " + " | ".join(f"{t}: norm / reg | {t}: cos to reg" for t in stats) + " |",
             "|---|" + "---|---|" * len(stats)]
    for part in parts:
        cells = [f"{stats[t][part]['ratio']:.3f} | {stats[t][part]['cos']:+.3f}" for t in stats]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--split-index", type=int, default=0)
    ap.add_argument("--qfm-config", required=True, help="the training config whose qfm section (lambdas, radii) is used")
    ap.add_argument("--train-blocks", type=int, default=0, help="also the backbone's last N blocks (setting b)")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    qfm = load_train_config(args.qfm_config).qfm
    net, batches = training_batches(args.model, args.dataset, args.split_file, args.split_index, args.batches,
                                    args.batch_size, args.seed)
    stats = term_statistics(net, batches, qfm, args.train_blocks, args.seed)
    table = markdown(stats)
    print(table)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "split_index": args.split_index, "batches": args.batches,
                                        "batch_size": args.batch_size, "train_blocks": args.train_blocks,
                                        "stats": stats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
