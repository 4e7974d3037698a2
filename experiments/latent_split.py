"""Which directions of W carry identity, study and findings, and what an attacker learns from each.

    python experiments/latent_split.py --preset phantom-cxr64 --data data/phantom-cxr64 --threads 2

Encodes the training and test splits, whitens W with the shipped latent prior, and fits two linear subspaces
on training patients only: the *identity* subspace (directions where patients differ more than their own
studies do: LDA on patient labels) and the *finding* subspace (``gmia.anonymization.redraw.finding_basis``:
reduced-rank ridge regression of the finding labels and, for ``keep-mask``, the pooled lesion masks). Then
decodes each test and training image under latent edits (no optimization), or runs the real stage 2
(``pipe-*``: ``gmia anonymize`` with the flags of ``PIPELINES``), and scores each with

* the adaptive attacker (the shipped attacker fine-tuned on 400 edited training images and their originals,
  as in ``gmia evaluate``): own-source and same-patient AUC on the test patients;
* an independent ResNet-18 finding classifier trained on the training originals: macro AUROC on the edited
  test images against the originals.

Variants: ``recon`` G(E(x)); ``swap-id-K`` the K identity directions replaced by a surrogate's; ``keep-find``
everything from a surrogate except one direction per finding; ``keep-mask-R`` except R finding-and-place
directions; ``surrogate`` the surrogate alone; ``pipe-NAME`` stage 2. Prints one row per variant and writes
OUT/latent_split-<preset>.json. The classifier is cached in OUT (trained once per preset).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from gmia.anonymization.redraw import finding_basis
from gmia.anonymization.surrogate import surrogate_codes
from gmia.data.datasets import PhantomFolder
from gmia.evaluation.adaptive import AdaptiveConfig, train_adaptive_attacker
from gmia.evaluation.classifier import ClassifierConfig, _logits, train_classifier
from gmia.evaluation.evaluate import load_networks
from gmia.evaluation.privacy import reid_metrics
from gmia.evaluation.records import load_real
from gmia.checkpoints import read_card
from gmia.machine import set_threads
from gmia.metrics import macro_auroc
from gmia.projection.prior import LatentPrior


def _encode(model, x, batch=256):
    with torch.no_grad():
        return torch.cat([model.encode(x[s:s + batch]) for s in range(0, len(x), batch)]).double()


def _decode(model, w, seeds, batch=128):
    with torch.no_grad():
        return torch.cat([model.render(w[s:s + batch].float(), noise_seeds=seeds[s:s + batch])
                          for s in range(0, len(w), batch)])


def identity_basis(z: torch.Tensor, patients: np.ndarray, k: int) -> torch.Tensor:
    """The top-k LDA directions (orthonormalized, (D, k)) of whitened codes z grouped by patient."""
    _, inv = np.unique(patients, return_inverse=True)
    inv = torch.as_tensor(inv)
    means = torch.zeros(int(inv.max()) + 1, z.shape[1], dtype=z.dtype).index_add_(0, inv, z)
    means /= torch.bincount(inv).unsqueeze(1).to(z.dtype)
    within = z - means[inv]
    sw = within.T @ within / len(z) + 1e-3 * torch.eye(z.shape[1], dtype=z.dtype)
    centred = means - means.mean(0)
    sb = centred.T @ centred / len(means)
    vals, vecs = torch.linalg.eigh(sw)
    sw_isqrt = vecs @ torch.diag(vals.rsqrt()) @ vecs.T
    v2, u2 = torch.linalg.eigh(sw_isqrt @ sb @ sw_isqrt)
    dirs = sw_isqrt @ u2[:, -k:]                    # generalized eigenvectors, largest ratios
    q, _ = torch.linalg.qr(dirs)
    return q


PIPELINES = {    # gmia anonymize flags over the preset (whose default is now redraw 1)
    "source-start": {"redraw": 0.0},
    "redraw": {"redraw": 1.0},
    "redraw-findings": {"redraw": 1.0, "utility_form": "findings"},
    "redraw-half": {"redraw": 0.5},
}


def _pipeline(args, flags: dict, n_test: int, n_train: int):
    """Anonymize the first test and training images with the preset's stage 2 and ``flags``; read them back in
    dataset order."""
    from gmia.anonymization import anonymize_config, anonymize_dataset
    from gmia.evaluation.records import load_anonymized, read_anonymized

    out = []
    name = "-".join(f"{k}{v}" for k, v in flags.items())
    for split, n in (("test", n_test), ("train", n_train)):
        ds = PhantomFolder(args.data, split=split)
        run = Path(args.out) / args.preset / name / split
        anonymize_dataset(anonymize_config(args.preset, **flags), ds, run, limit=n, write_linkage=True,
                          resume=run.exists(), progress=False)
        anon = read_anonymized(run)
        order = {k: i for i, k in enumerate(anon.sources)}
        missing = [k for k in ds.keys()[:n] if k not in order]
        if missing:
            raise SystemExit(f"{run}: {len(missing)} images withheld; this experiment needs all of them")
        out.append(load_anonymized(anon, [order[k] for k in ds.keys()[:n]], ds.channels, 64))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="phantom-cxr64")
    ap.add_argument("--data", default="data/phantom-cxr64")
    ap.add_argument("--variants", default="recon,swap-id-16,swap-id-64,keep-find")
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="outputs/latent-split")
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    nets, _ = load_networks(args.preset, "checkpoints", "cpu")
    model = nets["aegan"]
    prior = LatentPrior.load(Path("checkpoints") / args.preset)
    a_inv = torch.linalg.pinv(prior.a)
    whiten = lambda w: (w - prior.mu) @ a_inv.T        # noqa: E731
    colour = lambda z: prior.mu + z @ prior.a.T         # noqa: E731

    train, test = PhantomFolder(args.data, split="train"), PhantomFolder(args.data, split="test")
    (x_tr, m_tr), x_te = load_real(train, range(len(train)), with_masks=True), load_real(test, range(args.test))
    y_tr, y_te = train.labels(), test.labels()[:args.test]
    p_tr, p_te = np.asarray(train.patients()), np.asarray(test.patients())[:args.test]
    z_tr, z_te = whiten(_encode(model, x_tr)), whiten(_encode(model, x_te))
    print(f"encoded {len(x_tr)} + {len(x_te)} in {time.time() - t0:.0f} s", flush=True)

    adapt_idx = np.arange(args.train)                   # the attacker's material: the first training patients
    keys_tr, keys_te = train.keys(), test.keys()[:args.test]
    seeds_tr = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], 'little') for k in keys_tr]
    seeds_te = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], 'little') for k in keys_te]
    zt_tr = whiten(surrogate_codes(prior, seeds_tr).flatten(1).double())
    zt_te = whiten(surrogate_codes(prior, seeds_te).flatten(1).double())

    cache = Path(args.out) / f"classifier-{args.preset}.pt"
    clf = train_classifier(x_tr[:64], y_tr[:64], ClassifierConfig(), "cpu", steps=1)
    if cache.is_file():
        clf.load_state_dict(torch.load(cache))
    else:
        clf = train_classifier(x_tr, y_tr, ClassifierConfig(), "cpu")
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(clf.state_dict(), cache)
    auroc_orig = macro_auroc(y_te, _logits(clf, x_te, "cpu"))
    print(f"classifier trained ({time.time() - t0:.0f} s): AUROC on originals {auroc_orig:.3f}", flush=True)
    atk_kwargs = read_card(Path("checkpoints") / args.preset, "attacker")["kwargs"]
    e_ut = nets["utility"]
    rows = []
    for name in args.variants.split(","):
        def edit(z, zt):
            if name == "recon":
                return z
            if name.startswith("swap-id-"):
                q = identity_basis(z_tr, p_tr, int(name.rsplit("-", 1)[1]))
                return z + (zt - z) @ q @ q.T
            if name.startswith("keep-mask-"):   # the shipped split's recipe (gmia fit-split), rank R
                q = finding_basis(z_tr, y_tr, m_tr, int(name.rsplit("-", 1)[1]))
                return zt + (z - zt) @ q @ q.T
            if name.startswith("keep-find"):    # finding labels only: one direction per finding
                q = finding_basis(z_tr, y_tr, None, y_tr.shape[1])
                return zt + (z - zt) @ q @ q.T
            if name == "surrogate":
                return zt
            raise SystemExit(f"unknown variant {name}")
        if name.startswith("pipe-"):   # the real stage 2: gmia anonymize with these flags
            xa_te, xa_tr = _pipeline(args, PIPELINES[name[5:]], args.test, args.train)
        else:
            xa_te = _decode(model, colour(edit(z_te, zt_te)), seeds_te)
            xa_tr = _decode(model, colour(edit(z_tr[adapt_idx], zt_tr[adapt_idx])),
                            [seeds_tr[i] for i in adapt_idx])
        images = torch.cat([xa_tr, x_tr[adapt_idx]])
        patients = np.concatenate([p_tr[adapt_idx], p_tr[adapt_idx]])
        net, _ = train_adaptive_attacker(atk_kwargs, nets["attacker"].state_dict(), images, patients,
                                         AdaptiveConfig(), "cpu")
        emb = lambda x: torch.cat([net.embed(x[s:s + 256]) for s in range(0, len(x), 256)]).numpy()  # noqa: E731
        with torch.no_grad():
            ea, eg = emb(xa_te), emb(x_te)
            ut = macro_auroc(y_te, e_ut.logits(xa_te).numpy())
        m = reid_metrics(ea, p_te, np.arange(len(x_te)), eg, p_te, np.arange(len(x_te)), bootstrap=200)
        row = {"variant": name, "adaptive_own": m["auc_own_source"], "adaptive_own_ci": m["auc_own_source_ci95"],
               "adaptive_other": m["auc_same_patient_other_study"],
               "resnet_auroc": macro_auroc(y_te, _logits(clf, xa_te, "cpu")), "resnet_auroc_orig": auroc_orig,
               "e_ut_auroc": ut, "seconds": time.time() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"latent_split-{args.preset}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
