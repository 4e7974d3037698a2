"""Does stage 1 keep the patient and the pathology? The acceptance table of the AE-GAN checkpoint.

    python experiments/eval_stage1.py --preset phantom-cxr64                       # prints the table
    python experiments/eval_stage1.py --preset phantom-cxr64 --refine-steps 100 --update-card

On the test split (held-out patients) of the preset's phantom benchmark:

* fidelity: mean SSIM / PSNR of G(E(x)) (encoder only) and of the refined codes (``--refine-steps``); with
  ``--limit`` (refinement is slow on a CPU) the encoder-only pair is also given over the whole split (``_all``);
* identity kept: the evaluation attacker (trained on originals of the training patients; not E_id) retrieves
  the patient of each study 1..3 from a gallery of the study-0 originals (rank-1) — probes are the originals,
  then the reconstructions. Close numbers mean the reconstruction still carries the patient;
* pathology kept: macro AUROC of the utility classifier (trained on originals) on originals and on
  reconstructions, and their ratio (the bar is 0.95).

``--update-card`` writes the numbers into ``checkpoints/<preset>/aegan.json`` under ``meta.metrics``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gmia import networks
from gmia import data
from gmia.fileio import atomic_write_json
from gmia.machine import set_threads
from gmia.metrics import macro_auroc, rank_k
from gmia.projection.project import encoder_fidelity, load_aegan, project_images


def batched(fn, x: torch.Tensor, size: int = 100) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + size]) for i in range(0, len(x), size)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default=None, help="phantom folder (default data/<preset>)")
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--aegan", default=None, help="folder holding aegan.* (default <checkpoints>/<preset>)")
    ap.add_argument("--refine-steps", type=int, default=100)
    ap.add_argument("--refine-space", choices=["w", "w+"], default=None, help="default: the model's latent space")
    ap.add_argument("--lambda-ssim", type=float, default=0.0, help="weight of 1 - SSIM in the refinement loss")
    ap.add_argument("--refine-lr", type=float, default=0.03)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="only the first N test images (whole patients first)")
    ap.add_argument("--update-card", action="store_true")
    args = ap.parse_args()
    set_threads(args.threads)

    folder = Path(args.aegan or Path(args.checkpoints) / args.preset)
    model = load_aegan(folder)
    ds = data.open(args.data or f"data/{args.preset}", split="test", size=model.img_resolution,
                   channels=model.img_channels)
    whole_split = None
    if args.limit and args.limit < len(ds):  # the encoder-only bar on every test image, not just the refined subset
        whole = encoder_fidelity(model, ds, args.batch_size)
        whole_split = {"all_test_images": len(ds), "ssim_encoder_all": whole["ssim"], "psnr_encoder_all": whole["psnr"]}
    if args.limit:
        ds = ds.select(range(min(args.limit, len(ds))))
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    patients = np.array(ds.patients())
    study0 = np.array([k.endswith("_00.png") for k in ds.keys()])
    labels = ds.labels()

    t0 = time.time()
    recon = {"encoder": [], "refined": []}
    ssim = {"encoder": [], "refined": []}
    psnr = {"encoder": [], "refined": []}
    for i in range(0, len(x), args.batch_size):
        res = project_images(model, x[i:i + args.batch_size], args.refine_steps, args.refine_lr,
                             lambda_ssim=args.lambda_ssim, refine_space=args.refine_space)
        for name, suffix in (("encoder", "_encoder"), ("refined", "")):
            recon[name].append(res[f"x_hat{suffix}"].clamp(0, 1))
            ssim[name].append(res[f"metrics{suffix}"]["ssim"])
            psnr[name].append(res[f"metrics{suffix}"]["psnr"])
    seconds = time.time() - t0
    recon = {k: torch.cat(v) for k, v in recon.items()}

    attacker = networks.load(args.preset, "attacker", args.checkpoints)
    utility = networks.load(args.preset, "utility", args.checkpoints)
    gallery = batched(attacker.embed, x[study0]).numpy()

    def rank1(images: torch.Tensor) -> float:
        probes = batched(attacker.embed, images[~study0]).numpy()
        return rank_k(gallery, patients[study0], probes, patients[~study0], k=1)

    auroc_orig = macro_auroc(labels, batched(utility.logits, x).numpy())
    table = {"test_images": len(x), "test_patients": len(set(patients)), "refine_steps": args.refine_steps,
             "refine_space": args.refine_space or model.latent, "refine_lambda_ssim": args.lambda_ssim,
             "refine_lr": args.refine_lr, "seconds": round(seconds, 1),
             "attacker_rank1_originals": rank1(x), "utility_macro_auroc_originals": auroc_orig}
    for name in ("encoder", "refined"):
        auroc = macro_auroc(labels, batched(utility.logits, recon[name]).numpy())
        table.update({f"ssim_{name}": float(torch.cat(ssim[name]).mean()),
                      f"psnr_{name}": float(torch.cat(psnr[name]).mean()),
                      f"attacker_rank1_{name}": rank1(recon[name]),
                      f"utility_macro_auroc_{name}": auroc,
                      f"utility_auroc_kept_{name}": auroc / auroc_orig})
    if whole_split:
        table.update(whole_split)
    table = {k: round(v, 4) if isinstance(v, float) else v for k, v in table.items()}
    for k, v in table.items():
        print(f"{k:34s} {v}")
    if args.update_card:
        card_path = folder / "aegan.json"
        card = json.loads(card_path.read_text())
        card.setdefault("meta", {})["metrics"] = {**card["meta"].get("metrics", {}), "test_split": table,
                                                  "command": " ".join(["python", *sys.argv])}
        atomic_write_json(card_path, card)
        print(f"updated {card_path}")


if __name__ == "__main__":
    main()
