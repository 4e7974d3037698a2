"""Does a second utility network, of another family than E_ut, keep what an independent classifier reads?

    python experiments/second_utility.py --preset phantom-cxr64 --data data/phantom-cxr64 \
        --out outputs/utility-arms/phantom-cxr64/second-val [--weight 1] [--limit 200]
    python experiments/utility_arms.py --preset phantom-cxr64 --real data/phantom-cxr64 --anon BASELINE --also OUT

Trains a MobileNetV3-small (torchvision, from scratch; neither E_ut's dense blocks nor the evaluation's ResNet-18)
on the training originals' findings, then anonymizes the first ``--limit`` validation images with the preset's
stage 2 plus one more term: the L2 distance of that network's pooled features, scaled so that on the stage-1
reconstructions it weighs what E_ut's distance weighs, times ``--weight``. The evaluation's classifier family stays
unseen by the optimizer. Minutes on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from gmia.anonymization import anonymize_config, anonymize_dataset, load_engine
from gmia.anonymization.losses import UtilityTerm
from gmia.data.datasets import PhantomFolder
from gmia.machine import set_threads


class PooledNet(torch.nn.Module):
    """A torchvision classifier read as a feature extractor: its pooled last feature map (``features``)."""

    def __init__(self, findings: int, channels: int):
        super().__init__()
        from torchvision.models import mobilenet_v3_small

        self.net = mobilenet_v3_small(weights=None, num_classes=findings)
        first = self.net.features[0][0]
        self.net.features[0][0] = torch.nn.Conv2d(channels, first.out_channels, first.kernel_size, first.stride,
                                                  first.padding, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.avgpool(self.net.features(x * 2 - 1)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def train(ds: PhantomFolder, epochs: int, seed: int) -> PooledNet:
    torch.manual_seed(seed)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.stack([ds[i]["labels"] for i in range(len(ds))]).float()
    known = ~torch.isnan(y)
    y = torch.nan_to_num(y)
    net = PooledNet(y.shape[1], x.shape[1]).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order, total = torch.randperm(len(x), generator=g), 0.0
        for i in range(0, len(x) - 63, 64):
            idx = order[i:i + 64]
            loss = F.binary_cross_entropy_with_logits(net(x[idx]), y[idx], reduction="none")
            loss = (loss * known[idx]).sum() / known[idx].sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}: loss {total / (len(x) // 64):.4f}", flush=True)
    # torchvision's MobileNetV3 keeps batch-norm statistics with momentum 0.01: after a few hundred steps they are
    # far from the data's; re-estimate them (cumulative average over the training images) before using it
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for i in range(0, len(x), 256):
            net(x[i:i + 256])
    return net.eval().requires_grad_(False)


def auroc(net: PooledNet, ds: PhantomFolder, limit: int) -> list[float]:
    """The network's AUROC per finding on the first ``limit`` originals of ``ds``: how well it classifies."""
    from sklearn.metrics import roc_auc_score

    samples = [ds[i] for i in range(min(limit, len(ds)))]
    y = torch.stack([s["labels"] for s in samples]).numpy()
    with torch.no_grad():
        p = net(torch.stack([s["image"] for s in samples])).numpy()
    return [float(roc_auc_score(y[:, j], p[:, j])) for j in range(y.shape[1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default="data/phantom-cxr64")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    out = Path(args.out)
    weights = out.parent / f"second-net-seed{args.seed}.pt"  # trained once, shared by the weights tried
    net = PooledNet(6, 1)
    if weights.is_file():
        net.load_state_dict(torch.load(weights))
        net = net.eval().requires_grad_(False)
    else:
        net = train(PhantomFolder(args.data, split="train"), args.epochs, args.seed)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), weights)
    cfg = anonymize_config(args.preset)
    engine = load_engine(cfg)
    ds = PhantomFolder(args.data, split=args.split)
    print(f"second network, AUROC per finding on {min(400, len(ds))} {args.split} originals: "
          f"{', '.join(f'{a:.3f}' for a in auroc(net, ds, 400))}")
    # scale: on the stage-1 reconstructions of the first 64 images, the second distance weighs what E_ut's does
    with torch.no_grad():
        x = torch.stack([ds[i]["image"] for i in range(64)])
        rec = engine.model.render(engine.model.encode(x))
        d_ut = (engine.e_ut.features(rec) - engine.e_ut.features(x)).norm(dim=1).mean()
        d_two = (net.features(rec) - net.features(x)).norm(dim=1).mean()
    term = UtilityTerm(net, args.weight * float(d_ut / d_two))
    term.name = "ut2"
    engine.objective.extra.append(term)
    print(f"second utility term: weight {term.weight:.4f} (E_ut distance {d_ut:.3f}, second {d_two:.3f} on G(E(x)))")
    anonymize_dataset(cfg, ds, out, engine=engine, limit=args.limit, write_linkage=True, progress=False,
                      resume=out.exists())


if __name__ == "__main__":
    main()
