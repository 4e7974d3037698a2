"""Fixtures for evaluation tests: toy-sized real networks (random weights) for phantom-cxr64, a toy phantom folder
with train and test patients, and a builder of fake anonymization run folders (so evaluation can be tested
without running stage 2)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from gmia.data.datasets import PhantomFolder
from gmia.data.phantoms.writer import write
from gmia.data.preprocess import save_image

from tests.conftest import save_tiny_checkpoints, toy_phantom_set

TRAIN_PATIENTS, TEST_PATIENTS, STUDIES = 4, 6, 3



@pytest.fixture(scope="session")
def eval_checkpoints(tmp_path_factory):
    """<root>/phantom-cxr64/{aegan,identity,utility,utility2,attacker,mfm}: seeded random toy networks (E_ut segments)."""
    return save_tiny_checkpoints(tmp_path_factory.mktemp("eval-ckpt"),
                                 ("aegan", "identity", "utility", "utility2", "attacker", "mfm"),
                                 overrides={"utility": dict(segment=True, decoder_width=8)})


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory):
    """A phantom folder: 4 train + 6 test patients x 3 studies of 64 px random blobs, with masks."""
    ps = toy_phantom_set(patients=TRAIN_PATIENTS + TEST_PATIENTS, studies=STUDIES, size=64, seed=11)
    ps.meta["split"] = np.array(["train"] * (TRAIN_PATIENTS * STUDIES) + ["test"] * (TEST_PATIENTS * STUDIES),
                                dtype=object)
    return write(ps, tmp_path_factory.mktemp("eval-data") / "toy")


def make_anon(real_dir, out, transform, split="test", withhold=1, seed=0):
    """A fake anonymization run folder of ``split``: images = transform(x, rng), the last ``withhold`` withheld."""
    ds = PhantomFolder(real_dir, split=split)
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True)
    (out / "private").mkdir()
    rows, links, labels = [], [], ["image,finding_a,finding_b"]
    for i in range(len(ds)):
        s = ds[i]
        pseudo = hashlib.sha256(f"{seed}:{s['key']}".encode()).hexdigest()[:20]
        if i >= len(ds) - withhold:
            rows.append({"pseudonym": pseudo, "status": "withheld", "cos_id_optimized": 0.4,
                         "reason": "not private after 6 steps: cos_id 0.4000 > m - slack = -0.0200"})
            continue
        save_image(transform(s["image"], rng).clamp(0, 1), out / "images" / f"{pseudo}.png")
        rows.append({"pseudonym": pseudo, "status": "released", "cos_id_saved": 0.1, "steps": 3})
        links.append(f"{s['key']},{pseudo}")
        labels.append(f"images/{pseudo}.png," + ",".join(f"{v:g}" for v in s["labels"].tolist()))
    rows.sort(key=lambda r: r["pseudonym"])
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "labels.csv").write_text("\n".join(labels) + "\n")
    (out / "run.json").write_text(json.dumps({"stage": "anonymize", "config": {"preset": "phantom-cxr64",
                                                                              "margin": 0.0, "privacy": "medium"}}))
    (out / "private" / "linkage.csv").write_text("source,pseudonym\n" + "\n".join(sorted(links)) + "\n")
    return out


@pytest.fixture(scope="session")
def anon_identity(tmp_path_factory, eval_data):
    """'Anonymized' = the originals themselves (the worst possible anonymizer)."""
    return make_anon(eval_data, tmp_path_factory.mktemp("anon") / "identity", lambda x, rng: x)


@pytest.fixture(scope="session")
def anon_noise(tmp_path_factory, eval_data):
    """'Anonymized' = independent uniform noise (nothing of the source survives)."""
    return make_anon(eval_data, tmp_path_factory.mktemp("anon") / "noise",
                     lambda x, rng: torch.from_numpy(rng.random(x.shape, dtype=np.float32)))


@pytest.fixture(scope="session")
def anon_train(tmp_path_factory, eval_data):
    """Anonymized training patients (slightly perturbed originals) for the adaptive attacker."""
    return make_anon(eval_data, tmp_path_factory.mktemp("anon") / "train",
                     lambda x, rng: x + 0.05 * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)),
                     split="train", withhold=0)


@pytest.fixture(scope="session")
def identity_eval(tmp_path_factory, eval_data, anon_identity, anon_train, eval_checkpoints):
    """(out_dir, metrics) of evaluating the identity 'anonymizer' with every section enabled."""
    from gmia.evaluation import AdaptiveConfig, EvalConfig, evaluate

    out = tmp_path_factory.mktemp("eval") / "identity"
    cfg = EvalConfig(bootstrap=20, adaptive=AdaptiveConfig(epochs=1, batch_size=16, seeds=1, resnet_epochs=1))
    return out, evaluate("phantom-cxr64", eval_data, anon_identity, out, checkpoints=eval_checkpoints,
                         anon_train=anon_train, cfg=cfg, device="cpu")
