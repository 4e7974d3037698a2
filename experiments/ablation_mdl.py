"""Ablation: stage 2 with vs. without the MDL term (gmia.decoupling.MDLTerm), at the same identity margin.

    python experiments/ablation_mdl.py --data data/phantom-cxr64 --decoupler runs/decoupler-phantom-cxr64 \
        --limit 64 --out runs/ablation-mdl                     # needs aegan, identity, utility, attacker, mfm
    python experiments/ablation_mdl.py ... --checkpoints runs/tiny --limit 8 --max-steps 20   # a smoke run

Both variants run the real dataset runner (``anonymize_dataset``: batching, stopping, privacy gate, PNG files) on
the same first ``--limit`` records of ``--split``; the only difference is ``engine.objective.extra``. Measured on
the *released files* (reloaded from disk), against the originals of the same split:

* attacker (never seen by the optimizer, ``networks.load(preset, "attacker")``): verification AUC of anonymized
  vs. originals of the same patient's *other* studies, and vs. its own source; rank-1 retrieval (gallery: the
  originals of the split, own source left out);
* MFM re-identifier: a shrinkage-LDA identity probe fitted on raw MFM features of *training* patients, then the
  same AUC / rank-1 — the channel the MDL term is meant to close;
* utility: macro AUROC of E_ut's finding logits on the anonymized images (and on the originals, for reference);
* cost: generator steps and seconds per image (from the manifest), wall time of each run.

AUCs carry 95 % bootstrap intervals over pairs. Not done here: the adaptive attacker (retrained on anonymized
images) — it needs anonymized training patients per variant, passed to ``gmia evaluate --anon-train``. ``--out``
must be a new folder (the runner refuses to overwrite a run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score

from gmia import networks
from gmia.anonymization import anonymize_config, anonymize_dataset, load_engine
from gmia.data.datasets import PhantomFolder
from gmia.data.preprocess import load_image
from gmia.decoupling import MDLTerm, load_decoupler
from gmia.machine import set_threads
from gmia.metrics import bootstrap_ci, cosine_matrix, macro_auroc, rank_k


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="phantom-cxr64")
    p.add_argument("--data", required=True, help="phantom folder (train split feeds the MFM re-identifier)")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoints", default="checkpoints", help="<root>/<preset>/{aegan,identity,utility,attacker}")
    p.add_argument("--mfm-checkpoints", default=None, help="<root>/<preset>/mfm.* (default: --checkpoints)")
    p.add_argument("--decoupler", required=True, help="folder holding decoupler.safetensors + decoupler.json")
    p.add_argument("--out", default="runs/ablation-mdl")
    p.add_argument("--limit", type=int, default=64, help="records of --split anonymized per variant")
    p.add_argument("--privacy", default=None)
    p.add_argument("--margin", type=float, default=None)
    p.add_argument("--lambda-sem", type=float, default=0.5)
    p.add_argument("--lambda-mid", type=float, default=1.0)
    p.add_argument("--mid-margin", type=float, default=None, help="m' (default: the decoupler's calibrated one)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--reid-train", type=int, default=2000, help="training images for the MFM re-identifier")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here (default OUT/ablation.json)")
    return p.parse_args()


@torch.no_grad()
def embed(fn, images: torch.Tensor, batch: int = 128) -> np.ndarray:
    return torch.cat([fn(images[i:i + batch]).float().cpu() for i in range(0, len(images), batch)]).numpy()


def read_released(folder: Path) -> tuple[list[str], torch.Tensor, list[dict]]:
    """(source keys, images (N, C, H, W), manifest rows of those images) of a run's released files."""
    links = dict(line.rsplit(",", 1)[::-1] for line in (folder / "private" / "linkage.csv").read_text().split("\n")[1:]
                 if line)  # pseudonym → source
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    released = [r for r in rows if r["status"] == "released"]
    keys = [links[r["pseudonym"]] for r in released]
    images = torch.stack([load_image(folder / "images" / f"{r['pseudonym']}.png") for r in released])
    return keys, images, rows


def cross_pairs(emb_a, pat_a, src_a, emb_r, pat_r, key_r) -> dict:
    """Verification of anonymized (A) vs. originals (R): "other study" pairs exclude the own source; "own source"
    pairs are (a, its source) vs. (a, another patient's original)."""
    s = cosine_matrix(emb_a, emb_r)                                       # (Na, Nr)
    same = pat_a[:, None] == pat_r[None, :]
    own = src_a[:, None] == key_r[None, :]
    other = {"labels": same[~own].astype(int), "scores": s[~own]}
    mask = own | ~same
    own_pairs = {"labels": own[mask].astype(int), "scores": s[mask]}
    out = {}
    for name, pr in (("auc_other_study", other), ("auc_own_source", own_pairs)):
        if pr["labels"].min() == pr["labels"].max():
            out[name] = [float("nan")] * 3
            continue
        out[name] = list(bootstrap_ci(roc_auc_score, pr["labels"], pr["scores"], n=300))
    keep = ~own  # retrieval: the gallery is every original except the probe's own source
    hits = []
    for i in range(len(emb_a)):
        g = np.flatnonzero(keep[i])
        if same[i, g].any():
            hits.append(rank_k(emb_r[g], pat_r[g], emb_a[i:i + 1], pat_a[i:i + 1], k=1))
    out["rank1"] = float(np.mean(hits)) if hits else float("nan")
    return out


def main() -> None:
    args = parse()
    set_threads(args.threads)
    out = Path(args.out)
    mfm_root = args.mfm_checkpoints or args.checkpoints
    changes = {k: v for k, v in dict(max_steps=args.max_steps, batch_size=args.batch_size).items() if v is not None}
    # the base variant is the preset without the term (the faces' preset has it on), the other adds it
    cfg = anonymize_config(args.preset, privacy=args.privacy, margin=args.margin, lambda_mdl=0.0, **changes)
    ds = PhantomFolder(args.data, split=args.split)
    mfm = networks.load(args.preset, "mfm", mfm_root, device=args.device)
    dec = load_decoupler(args.decoupler, device=args.device)
    attacker = networks.load(args.preset, "attacker", args.checkpoints, device=args.device)

    # originals: every study of the patients among the first --limit records (the verification gallery)
    subset_patients = set(ds.patients()[:args.limit])
    idx = [i for i, p in enumerate(ds.patients()) if p in subset_patients]
    orig = ds.select(idx)
    x_r = torch.stack([orig[i]["image"] for i in range(len(orig))])
    pat_r, key_r = np.asarray(orig.patients()), np.asarray(orig.keys())
    labels_by_key = dict(zip(orig.keys(), orig.labels()))

    # the MFM re-identifier: shrinkage LDA on raw MFM features of training patients
    train = PhantomFolder(args.data, split="train")
    pick = np.random.default_rng(0).permutation(len(train))[:args.reid_train]
    tr = train.select(np.sort(pick))
    f_tr = embed(mfm.features, torch.stack([tr[i]["image"] for i in range(len(tr))]).to(args.device))
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto",
                                     n_components=min(256, len(set(tr.patients())) - 1, f_tr.shape[1]))
    lda.fit(f_tr, np.asarray(tr.patients()))
    reid = lambda x: lda.transform(embed(mfm.features, x.to(args.device)))  # noqa: E731

    results = {"config": {k: v for k, v in vars(args).items()}, "margin": cfg.margin, "term": None, "variants": {}}
    e_ut = None
    for variant in ("base", "mdl"):
        engine = load_engine(cfg, args.checkpoints, device=args.device)
        e_ut = engine.e_ut
        if variant == "mdl":
            term = MDLTerm(mfm, dec, lambda_sem=args.lambda_sem, lambda_mid=args.lambda_mid, margin=args.mid_margin)
            engine.objective.extra.append(term)
            results["term"] = repr(term)
        t0 = time.time()
        anonymize_dataset(cfg, ds, out / variant, engine=engine, limit=args.limit, write_linkage=True,
                          device=args.device, progress=False)
        wall = time.time() - t0
        keys, x_a, rows = read_released(out / variant)
        res = {"released": len(keys), "records": len(rows), "wall_seconds": round(wall, 1),
               "steps_per_image": float(np.mean([r["steps"] for r in rows])),
               "seconds_per_image": float(np.mean([r["seconds"] for r in rows]))}
        if keys:
            pos = {k: i for i, k in enumerate(key_r)}
            pat_a, src_a = pat_r[[pos[k] for k in keys]], np.asarray(keys)
            res["attacker"] = cross_pairs(embed(attacker.embed, x_a.to(args.device)), pat_a, src_a,
                                          embed(attacker.embed, x_r.to(args.device)), pat_r, key_r)
            res["mfm_reid"] = cross_pairs(reid(x_a), pat_a, src_a, reid(x_r), pat_r, key_r)
            y = np.stack([labels_by_key[k] for k in keys])
            res["utility_auroc"] = macro_auroc(y, embed(e_ut.logits, x_a.to(args.device)))
        results["variants"][variant] = res
    y_all = np.stack([labels_by_key[k] for k in key_r])
    results["utility_auroc_originals"] = macro_auroc(y_all, embed(e_ut.logits, x_r.to(args.device)))
    print_table(results)
    path = Path(args.json) if args.json else out / "ablation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {path}")


def print_table(results: dict) -> None:
    fmt = lambda ci: f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"  # noqa: E731
    print(f"margin m = {results['margin']}; term: {results['term']}")
    print(f"{'variant':>8} {'released':>9} {'atk AUC other':>24} {'atk AUC own':>24} {'atk r1':>7} "
          f"{'MFM AUC other':>24} {'MFM r1':>7} {'util AUROC':>10} {'steps':>7} {'s/img':>7}")
    for name, r in results["variants"].items():
        if "attacker" not in r:
            print(f"{name:>8} {r['released']:>9} (nothing released)")
            continue
        a, m = r["attacker"], r["mfm_reid"]
        print(f"{name:>8} {r['released']:>5}/{r['records']:<3} {fmt(a['auc_other_study']):>24} "
              f"{fmt(a['auc_own_source']):>24} {a['rank1']:>7.3f} {fmt(m['auc_other_study']):>24} {m['rank1']:>7.3f} "
              f"{r['utility_auroc']:>10.3f} {r['steps_per_image']:>7.1f} {r['seconds_per_image']:>7.3f}")
    print(f"utility AUROC of the originals: {results['utility_auroc_originals']:.3f}")


if __name__ == "__main__":
    main()
