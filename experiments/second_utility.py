"""Does a second utility network, of another family than E_ut, keep what an independent classifier reads?

    python experiments/second_utility.py --preset phantom-cxr64 --data data/phantom-cxr64 \
        --out outputs/utility-arms/phantom-cxr64/second-val [--arch plain] [--weight 1] [--limit 200]
    python experiments/utility_arms.py --preset phantom-cxr64 --real data/phantom-cxr64 --anon BASELINE --also OUT

Trains a classifier on the training originals' findings: ``--arch mobilenet`` (torchvision's MobileNetV3-small),
``--arch plain`` (a plain CNN, no residual or dense connections) or ``--arch convnext`` (a small ConvNeXt). None is
E_ut's family (dense blocks) or the evaluation's (ResNet-18). It prints the network's AUROC per finding on the first
400 ``--split`` originals. It then anonymizes the first ``--limit`` images of that split with the preset's stage 2
(on the chest preset that already reads E_ut2, so this network is a third) plus one more term: the L2 distance of
the network's pooled features, scaled so that on the stage-1 reconstructions it weighs what E_ut's distance weighs,
times ``--weight``. Minutes on a CPU.
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


class ChannelNorm(torch.nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map, each pixel on its own (ConvNeXt's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNextBlock(torch.nn.Module):
    """Depthwise 7x7 convolution, channel norm, a 4x wider pointwise MLP with GELU, added to the input."""

    def __init__(self, c: int):
        super().__init__()
        self.dw, self.norm = torch.nn.Conv2d(c, c, 7, padding=3, groups=c), ChannelNorm(c)
        self.up, self.down = torch.nn.Conv2d(c, 4 * c, 1), torch.nn.Conv2d(4 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(self.dw(x)))))


class PooledNet(torch.nn.Module):
    """A classifier read as a feature extractor: its pooled last feature map (``features``), then its head.

    ``arch``: "mobilenet" (torchvision's MobileNetV3-small), "plain" (four stages of two 3x3 convolutions with
    batch norm, then max-pooling: no residual or dense connections, so neither E_ut's family nor the ResNet's) or
    "convnext" (a small ConvNeXt: depthwise 7x7 convolutions, layer norm, GELU, no batch norm)."""

    def __init__(self, findings: int, channels: int, arch: str = "mobilenet"):
        super().__init__()
        if arch == "mobilenet":
            from torchvision.models import mobilenet_v3_small

            net = mobilenet_v3_small(weights=None, num_classes=findings)
            first = net.features[0][0]
            net.features[0][0] = torch.nn.Conv2d(channels, first.out_channels, first.kernel_size, first.stride,
                                                 first.padding, bias=False)
            self.trunk, self.head = net.features, net.classifier
        elif arch == "plain":
            layers, c = [], channels
            for width in (32, 64, 128, 256):
                for k in range(2):
                    layers += [torch.nn.Conv2d(c if k == 0 else width, width, 3, padding=1, bias=False),
                               torch.nn.BatchNorm2d(width), torch.nn.ReLU(inplace=True)]
                layers.append(torch.nn.MaxPool2d(2))
                c = width
            self.trunk, self.head = torch.nn.Sequential(*layers), torch.nn.Linear(c, findings)
        elif arch == "convnext":
            layers, c = [torch.nn.Conv2d(channels, 32, 3, padding=1), ChannelNorm(32)], 32
            for stage, (width, depth) in enumerate(zip((32, 64, 128, 256), (1, 1, 2, 1))):
                if stage:
                    layers += [ChannelNorm(c), torch.nn.Conv2d(c, width, 2, stride=2)]
                layers += [ConvNextBlock(width) for _ in range(depth)]
                c = width
            self.trunk, self.head = torch.nn.Sequential(*layers, ChannelNorm(c)), torch.nn.Linear(c, findings)
        else:
            raise ValueError(f"arch must be 'mobilenet', 'plain' or 'convnext', got {arch!r}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(ds: PhantomFolder, epochs: int, seed: int, arch: str, lr: float = 1e-3) -> PooledNet:
    torch.manual_seed(seed)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.stack([ds[i]["labels"] for i in range(len(ds))]).float()
    known = ~torch.isnan(y)
    y = torch.nan_to_num(y)
    net = PooledNet(y.shape[1], x.shape[1], arch).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x) // 64)) if arch == "convnext" else None
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
            if sched is not None:  # without batch norm, a larger step that decays trains it in as few epochs
                sched.step()
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
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's step (convnext: decayed to 0 on a cosine)")
    ap.add_argument("--arch", choices=["mobilenet", "plain", "convnext"], default="mobilenet")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    out = Path(args.out)
    suffix = "" if args.arch == "mobilenet" else f"-{args.arch}"
    if (args.lr, args.epochs) != (ap.get_default("lr"), ap.get_default("epochs")):
        suffix += f"-lr{args.lr:g}-ep{args.epochs}"
    weights = out.parent / f"second-net{suffix}-seed{args.seed}.pt"  # trained once, shared by the weights tried
    net = PooledNet(6, 1, args.arch)
    if weights.is_file():
        net.load_state_dict(torch.load(weights))
        net = net.eval().requires_grad_(False)
    else:
        net = train(PhantomFolder(args.data, split="train"), args.epochs, args.seed, args.arch, args.lr)
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
    term.name = "ut3" if cfg.lambda_ut2 > 0 else "ut2"  # beside the preset's E_ut2 term, not in its place
    engine.objective.extra.append(term)
    print(f"second utility term: weight {term.weight:.4f} (E_ut distance {d_ut:.3f}, second {d_two:.3f} on G(E(x)))")
    anonymize_dataset(cfg, ds, out, engine=engine, limit=args.limit, write_linkage=True, progress=False,
                      resume=out.exists())


if __name__ == "__main__":
    main()
