"""``gmia evaluate``: privacy, control, utility, fidelity and record-level privacy of an anonymized set.

    from gmia.evaluation import evaluate
    m = evaluate("phantom-cxr64", "data/phantom-cxr64", "outputs/anon", "outputs/eval")
    m["privacy"]["attacker"]["auc_own_source"], m["utility"]["macro_auroc"]

Writes OUT/metrics.json (sections below; NaN → null), OUT/examples.png (source | reconstruction | anonymized |
difference) and OUT/roc.png. What each section measures, and why:

- ``privacy.attacker``: the evaluation-only re-identifier (different architecture, loss and seed from E_id; the
  optimizer never saw it) — see ``privacy`` for the pairs. ``privacy.e_id``: the same numbers with E_id, labelled
  as the optimizer's own view (it was optimized against, so it is expected to look private).
  ``privacy.adaptive_attacker``: re-identifiers trained on the anonymized training patients (``--anon-train``),
  two families x several seeds (``adaptive``); the strongest run is reported, every run is listed. It answers the
  threat model's three questions: another study of a patient -> their released images (same patient), the very
  source image -> its release (own source), and one image of a patient -> is the patient in the release at all
  (``membership``: released patients against patients outside the release).
- ``control.attacker``: the attacker on stage-1 reconstructions of the same sources (the run's own projection:
  E(x), refined as the run was, rendered with its noise): it must still
  re-identify them, otherwise the privacy above comes from a blurry generator, not from the method.
  ``control.attacker_on_originals``: the attacker's own strength on the originals (other-study pairs).
- ``utility``, ``fidelity``, ``record_privacy``: see the modules of the same names.

Only released images with a linkage row are evaluated (withheld ones are counted in ``inputs``): the numbers
describe what is released. A network that is missing leaves its section as {"skipped": reason}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import data, networks
from ..checkpoints import read_card
from ..config import get_preset
from ..errors import CheckpointError, InputError
from ..projection.project import load_aegan
from ..fileio import atomic_write_json, jsonable
from ..machine import resolve_device
from ..runs import log
from . import plots
from .adaptive import AdaptiveConfig, train_adaptive_attacker
from .classifier import ClassifierConfig, independent_utility
from .segmenter import SegmenterConfig, independent_dice
from .fidelity import frechet_distance, image_fidelity, perceptual_metric
from .privacy import fast_auc, reid_metrics, unit, reid_pairs, record_privacy, roc_points
from .records import batched, load_anonymized, load_real, match, read_anonymized
from .utility import classifier_utility, lesion_dice, probe_two_fold, probe_utility, run_net

__all__ = ["EvalConfig", "evaluate", "load_networks"]


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation (what a rerun needs to reproduce the numbers)."""

    bootstrap: int = 500             # bootstrap resamples for 95% intervals (0: none)
    max_negatives: int = 20000       # different-patient pairs kept per AUC (seeded subsample)
    limit: int | None = None         # evaluate only the first N released images (by pseudonym)
    max_reference: int | None = 4000  # training originals used for DCR / hidden rate (seeded subsample)
    examples: int = 8                # rows of examples.png
    batch_size: int = 128
    seed: int = 0
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    independent_classifier: bool = True  # train the ResNet-18s of classifier.py and segmenter.py (minutes on a CPU)


def _folder(preset: str, root: Path, name: str) -> Path:
    """``<root>/<preset>`` or ``root`` itself when it holds ``name``.json (as gmia.networks.load does)."""
    folder = networks.checkpoint_dir(preset, root)
    return root if not (folder / f"{name}.json").is_file() and (root / f"{name}.json").is_file() else folder


def load_networks(preset: str, checkpoints: str | Path, device) -> tuple[dict, dict]:
    """({role: network} for those present, {role: sha256 or "missing: reason"}); role "aegan" is stage 1."""
    nets, record = {}, {}
    root = Path(checkpoints)
    for role in ("attacker", "identity", "utility", "mfm", "aegan"):
        try:
            folder = _folder(preset, root, role)
            nets[role] = load_aegan(folder, device) if role == "aegan" else networks.load(preset, role, root, device)
            record[role] = read_card(folder, role)["sha256"]
        except CheckpointError as exc:
            record[role] = f"missing: {exc}"
    if "attacker" not in nets:
        raise CheckpointError(f"evaluation needs the independent attacker: {record['attacker'][9:]}")
    return nets, record


def _embed(net, x, cfg, device) -> np.ndarray:
    return run_net(net.embed, x, cfg.batch_size, device)


def _reference_embeddings(net, real, indices, cfg, device) -> np.ndarray:
    """Embeddings of real records streamed from the dataset (never all images in memory)."""
    parts = [_embed(net, load_real(real, chunk), cfg, device) for chunk in batched(indices, cfg.batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1))


def learning_rows(train_cohort, cohort) -> np.ndarray:
    """The rows of an anonymized training run that a network may learn from: those of patients not evaluated, in
    source order, not in the run's (pseudonym) order. Two runs of the same images then train on the same sequence
    of batches, so two settings differ by what their releases teach and not by the shuffle (one 400-image
    classifier arm had moved by 0.036 between two runs of the same originals)."""
    keep = np.flatnonzero(~np.isin(train_cohort.anon_patient, np.unique(cohort.anon_patient)))
    return keep[np.argsort(train_cohort.anon_source[keep], kind="stable")]


def _adaptive(nets, preset, checkpoints, real, anon_train_dir, cohort, x, cfg, device, gallery_args) -> dict:
    """Retrain the attacker on the anonymized training patients, then attack the evaluated images."""
    if anon_train_dir is None:
        return {"skipped": "no anonymized training-patient set given (--anon-train DIR): the adaptive attacker "
                           "needs anonymized images of patients other than the evaluated ones to learn from"}
    train_set = read_anonymized(anon_train_dir)
    train_cohort = match(real, train_set)
    keep = learning_rows(train_cohort, cohort)
    if len(np.unique(train_cohort.anon_patient[keep])) < 2:
        return {"skipped": f"{anon_train_dir}: fewer than 2 patients that are not also evaluated"}
    p = get_preset(preset)
    images = load_anonymized(train_set, keep, p.channels, p.resolution)
    patients = train_cohort.anon_patient[keep]
    if cfg.adaptive.include_originals:
        images = torch.cat([images, load_real(real, train_cohort.anon_source[keep])])
        patients = np.concatenate([patients, patients])
    folder = _folder(preset, Path(checkpoints), "attacker")
    kwargs, state = read_card(folder, "attacker")["kwargs"], nets["attacker"].state_dict()
    x_out = load_real(real, outsiders(cohort, len(cohort.gallery), cfg.seed))  # threat 3's negatives
    runs = []
    for architecture in cfg.adaptive.architectures:
        for run in range(cfg.adaptive.seeds):
            net, info = train_adaptive_attacker(kwargs, state, images, patients, cfg.adaptive, device, architecture,
                                                run)
            e_anon = _embed(net, x, cfg, device)
            e_gal = _embed(net, gallery_args["x_gallery"], cfg, device)
            m = reid_metrics(e_anon, cohort.anon_patient, cohort.anon_source, e_gal, gallery_args["patients"],
                             cohort.gallery, cfg.bootstrap, max_negatives=cfg.max_negatives, seed=cfg.seed)
            m["membership"] = release_membership(e_anon, e_gal, _embed(net, x_out, cfg, device) if len(x_out)
                                                 else np.zeros((0, 1)))
            runs.append((m, info))
    # The strongest run speaks for the attacker: the one that links own sources best (two-sided), a worst case
    # for the data holder. Every run's headline numbers stay in "runs".
    best, info = max(runs, key=lambda r: r[0]["auc_own_source_linkability"])
    out = dict(best)
    out["runs"] = [{"architecture": i["architecture"], "seed": i["seed"],
                    **{k: m[k] for k in ("auc_own_source", "auc_own_source_linkability",
                                         "auc_same_patient_other_study", "auc_same_patient_other_study_linkability")},
                    "auc_membership": m["membership"].get("auc")} for m, i in runs]
    out["strongest"] = {"architecture": info["architecture"], "seed": info["seed"],
                        "rule": "highest own-source linkability max(AUC, 1 - AUC) over families x seeds"}
    out["training"] = {**info, "anonymized_images": int(len(keep)), "dropped_overlapping_patients":
                       len(train_cohort.anon_patient) - len(keep), "config": asdict(cfg.adaptive)}
    return out


def utility_floor(real, cohort, masks, gal_masks, args) -> dict:
    """The linkage that utility itself costs: an attacker who sees only what a useful release must keep of each
    image (its finding labels and, where the utility network segments lesions, where its lesion is) and compares it
    with each original's. Where this floor is above a privacy bar, no anonymizer that keeps the findings can meet
    the bar."""
    if not real.findings:
        return {"skipped": "the real dataset has no finding labels"}
    labels = np.nan_to_num(real.labels().astype(np.float64), nan=0.5) - 0.5

    def kept(indices, m):
        parts = [labels[indices]]
        if m is not None:  # the lesion's place, coarsely (8 x 8), weighted like one finding
            pooled = torch.nn.functional.adaptive_avg_pool2d(m.float(), 8).flatten(1).numpy()
            parts.append(pooled / max(1e-6, float(np.sqrt((pooled ** 2).sum(1)).max())))
        return np.concatenate(parts, 1) + 1e-3   # a constant offset: an all-negative image is not a zero vector

    out = reid_metrics(kept(cohort.anon_source, masks), cohort.anon_patient, cohort.anon_source,
                       kept(cohort.gallery, gal_masks), cohort.real_patient[cohort.gallery], cohort.gallery, **args)
    out["view"] = ("findings" + (" and lesion masks" if masks is not None else "") + " of each image, nothing else: "
                   "what a release that keeps the diagnosis cannot hide")
    return out


def outsiders(cohort, limit: int, seed: int) -> np.ndarray:
    """Records of patients outside the release and outside the training pool (at most ``limit``, seeded): the
    negatives of the membership threat."""
    pool = np.flatnonzero(~np.isin(cohort.real_patient, cohort.anon_patient))
    pool = pool[~np.isin(pool, cohort.reference)]
    if len(pool) > limit:
        pool = np.sort(np.random.default_rng(seed).choice(pool, limit, replace=False))
    return pool


def release_membership(e_anon, e_gal, e_out) -> dict:
    """Threat 3: is this patient in the release at all? The attacker holds one original of a patient and scores
    the best match among the released images (max cosine). Positives: originals of evaluated patients; negatives:
    originals of patients outside the release. AUC with a patient-cluster bootstrap is left to the pairs above;
    here one query per image, so the plain AUC."""
    if len(e_out) == 0:
        return {"skipped": "no patients outside the release to compare with"}
    released = unit(e_anon)
    score_in = (unit(e_gal) @ released.T).max(axis=1)
    score_out = (unit(e_out) @ released.T).max(axis=1)
    auc = fast_auc(np.r_[np.ones(len(score_in)), np.zeros(len(score_out))], np.r_[score_in, score_out])
    return {"auc": auc, "linkability": max(auc, 1 - auc), "members": int(len(score_in)),
            "outsiders": int(len(score_out)), "score": "max cosine of a patient's original to the released images"}


def _utility(nets, real, cohort, x_anon, x_src, masks, anon_train_dir, preset, cfg, device, x_rec=None) -> dict:
    if "utility" not in nets:
        return {"skipped": "no utility network for this preset"}
    e_ut = nets["utility"]
    findings = list(real.findings)
    y = real.labels()[cohort.anon_source]
    if not findings:
        return {"skipped": "the real dataset has no finding labels"}
    out = classifier_utility(run_net(e_ut.logits, x_anon, cfg.batch_size, device),
                             run_net(e_ut.logits, x_src, cfg.batch_size, device), y, findings,
                             cohort.anon_patient, cfg.bootstrap, cfg.seed)
    feat_net, feat_name = (nets["mfm"], "mfm (label-free, not used by the optimizer)") if "mfm" in nets else \
        (e_ut, "utility (E_ut features: the optimizer matched them, so this probe is not independent)")
    feats = lambda x: run_net(feat_net.features, x, cfg.batch_size, device)  # noqa: E731
    f_anon, f_src = feats(x_anon), feats(x_src)
    if anon_train_dir is not None:
        p = get_preset(preset)
        tr = read_anonymized(anon_train_dir)
        tc = match(real, tr)
        keep = np.flatnonzero(~np.isin(tc.anon_patient, np.unique(cohort.anon_patient)))
        probe = probe_utility(feats(load_anonymized(tr, keep, p.channels, p.resolution)),
                              feats(load_real(real, tc.anon_source[keep])), real.labels()[tc.anon_source[keep]],
                              f_src, y, findings)
        probe["protocol"] = "anon-train: train on the anonymized training patients, test on the evaluated originals"
    else:
        probe = probe_two_fold(f_anon, f_src, y, cohort.anon_patient, findings, cfg.seed)
        probe["protocol"] = ("patient-2fold: train on one half of the evaluated patients' anonymized images, test on "
                             "the other half's originals, swap, average")
    probe.update(classifier="logistic regression per finding (gmia.metrics.probe_findings)", features=feat_name)
    out["train_on_anonymized"] = probe
    out["independent_classifier"] = _independent(real, cohort, x_anon, x_src, y, findings, anon_train_dir, preset, cfg,
                                                 device, nets.get("aegan"), x_rec)
    if masks is not None and getattr(e_ut, "has_segmentation", False):
        out["lesion_dice"] = {"view": "E_ut's own segmentation head (the lesion term optimized against it: not an "
                                      "independent reading)",
                              **lesion_dice(run_net(e_ut.segment, x_anon, cfg.batch_size, device),
                                            run_net(e_ut.segment, x_src, cfg.batch_size, device), masks.numpy())}
        out["independent_segmenter"] = _independent_segmenter(real, cohort, x_anon, x_src, masks, cfg, device)
    else:
        out["lesion_dice"] = {"skipped": "no lesion masks in the real dataset or no segmentation head in E_ut"}
    return out


def training_originals(cohort, cfg: EvalConfig) -> np.ndarray:
    """The real training originals the reference networks learn from (at most cfg.max_reference, seeded)."""
    reference = cohort.reference
    if cfg.max_reference is not None and len(reference) > cfg.max_reference:
        reference = np.sort(np.random.default_rng(cfg.seed).choice(reference, cfg.max_reference, replace=False))
    return reference


def _independent_segmenter(real, cohort, x_anon, x_src, masks, cfg, device) -> dict:
    """The U-Net of ``segmenter.py``, trained on the real training originals' lesion masks."""
    if not cfg.independent_classifier:
        return {"skipped": "turned off (EvalConfig.independent_classifier)"}
    x_train, m_train = load_real(real, training_originals(cohort, cfg), with_masks=True)
    return independent_dice(x_train, m_train, x_anon, x_src, masks.numpy(), device, cfg.segmenter)


def _independent(real, cohort, x_anon, x_src, y, findings, anon_train_dir, preset, cfg, device, aegan=None,
                 x_rec=None) -> dict:
    """The ResNet-18 of ``classifier.py``, trained on the real training originals (cfg.max_reference of them);
    with a stage-1 model (``aegan``, ``x_rec``), on its reconstructions as well: the limit stage 1 sets."""
    if not cfg.independent_classifier:
        return {"skipped": "turned off (EvalConfig.independent_classifier)"}
    reference = training_originals(cohort, cfg)
    if len(reference) < 2 * cfg.classifier.batch_size:
        return {"skipped": f"only {len(reference)} training originals (the classifier needs "
                           f"{2 * cfg.classifier.batch_size})"}
    anon_train, arms = None, {}
    if anon_train_dir is not None:
        p = get_preset(preset)
        tr = read_anonymized(anon_train_dir)
        tc = match(real, tr)
        keep = learning_rows(tc, cohort)
        if len(keep) >= cfg.classifier.batch_size:
            sources = tc.anon_source[keep]
            anon_train = (load_anonymized(tr, keep, p.channels, p.resolution), load_real(real, sources),
                          real.labels()[sources])
            if aegan is not None:
                keys = [real.keys()[i] for i in sources]
                arms["reconstructions"] = stage1_reconstructions(aegan, anon_train[1], keys, tr.run.get("config", {}),
                                                                 cfg.batch_size, device)
    return independent_utility(load_real(real, reference), real.labels()[reference], x_anon, x_src, y, findings,
                               device, cfg.classifier, anon_train,
                               cache_key=(str(real.root), tuple(int(i) for i in reference), str(device)),
                               train_arms=arms, x_rec=x_rec)


def _fidelity(nets, x_anon, x_src, x_rec, cfg, device) -> dict:
    mfm = nets.get("mfm")
    perceptual = perceptual_metric(mfm)
    if perceptual is not None:
        perceptual = perceptual.to(device)
    run = lambda a, b: image_fidelity(a.to(device), b.to(device), perceptual, cfg.batch_size)  # noqa: E731
    out = {"perceptual": perceptual.name if perceptual is not None else "none (no LPIPS weights, no MFM)",
           "anonymized_vs_source": run(x_anon, x_src)}
    out["reconstruction_vs_source"] = run(x_rec, x_src) if x_rec is not None else {"skipped": "no stage-1 model"}
    space, net = ("mfm", mfm) if mfm is not None else ("utility", nets.get("utility"))
    if net is None:
        out["frechet"] = {"skipped": "no MFM and no utility network for a feature space"}
        return out
    f = lambda x: run_net(net.features, x, cfg.batch_size, device)  # noqa: E731
    f_src = f(x_src)
    fd = {"feature_space": f"{space} features ({'self-supervised domain encoder' if space == 'mfm' else 'E_ut, fallback'})",
          "anonymized_vs_originals": frechet_distance(f(x_anon), f_src), "n_images": int(len(x_src))}
    if x_rec is not None:
        fd["reconstructions_vs_originals"] = frechet_distance(f(x_rec), f_src)
    out["frechet"] = fd
    return out


def stage1_reconstructions(model, x: torch.Tensor, keys: list[str], run_config: dict, batch_size: int,
                           device) -> torch.Tensor:
    """The images stage 2 started from: the run's projection (E(x), refined for its ``refine_steps``) rendered
    with its noise (per-image seeds from the record keys), so the control matches what was optimized."""
    from ..anonymization import noise_seeds, record_seed
    from ..projection.project import project_codes

    refine, noise = int(run_config.get("refine_steps", 0)), run_config.get("noise", "const")
    out = []
    for s in range(0, len(x), batch_size):
        seeds = [record_seed(k, int(run_config.get("seed", 0))) for k in keys[s:s + batch_size]]
        xs = x[s:s + batch_size].to(device)
        w = project_codes(model, xs, refine, noise_seeds=seeds if noise == "per-image" else None)
        with torch.no_grad():
            out.append(model.render(w, noise_seeds(seeds, noise)).cpu())
    return torch.cat(out) if out else x[:0]


def evaluate(preset: str, real_dir: str | Path, anon_dir: str | Path, out_dir: str | Path, *,
             checkpoints: str | Path = "checkpoints", anon_train: str | Path | None = None,
             cfg: EvalConfig = EvalConfig(), device: str | torch.device | None = None,
             labels: str | Path | None = None, image_column: str | None = None, patient_column: str | None = None,
             findings: list[str] | None = None) -> dict:
    """Evaluate the anonymized run ``anon_dir`` against the real dataset ``real_dir``; write ``out_dir``.

    ``labels`` (and its columns) describe a real folder of your own, as given to ``gmia anonymize --labels``.
    Returns the metrics dict that is written to ``out_dir/metrics.json``.
    """
    # ---- set up: data, linkage, networks
    device = resolve_device(device)
    p = get_preset(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real = data.open(real_dir, size=p.resolution, channels=p.channels, labels=labels, image_column=image_column,
                     patient_column=patient_column, findings=findings)
    anon = read_anonymized(anon_dir)
    if cfg.limit is not None:
        anon.pseudonyms, anon.sources = anon.pseudonyms[:cfg.limit], anon.sources[:cfg.limit]
    cohort = match(real, anon)
    if len(np.unique(cohort.anon_patient)) < 2:
        raise InputError(f"{anon_dir}: the evaluated images come from fewer than 2 patients; verification needs "
                         "different-patient pairs (evaluate more images)")
    nets, shas = load_networks(preset, checkpoints, device)
    log(None, f"evaluate: {len(anon.pseudonyms)} released images of {len(np.unique(cohort.anon_patient))} patients, "
              f"gallery {len(cohort.gallery)} originals, {len(cohort.reference)} training originals")

    # ---- images
    x_anon = load_anonymized(anon, range(len(anon.pseudonyms)), p.channels, p.resolution)
    if real.has_masks:
        x_src, masks = load_real(real, cohort.anon_source, with_masks=True)
    else:
        x_src, masks = load_real(real, cohort.anon_source), None
    if real.has_masks:
        x_gal, gal_masks = load_real(real, cohort.gallery, with_masks=True)
    else:
        x_gal, gal_masks = load_real(real, cohort.gallery), None
    x_rec = None
    if "aegan" in nets:
        x_rec = stage1_reconstructions(nets["aegan"], x_src, [real.keys()[i] for i in cohort.anon_source],
                                       anon.run.get("config", {}), cfg.batch_size, device)
    gal_patient = cohort.real_patient[cohort.gallery]

    # ---- privacy and control
    atk = nets["attacker"]
    e_anon, e_src, e_gal = (_embed(atk, x, cfg, device) for x in (x_anon, x_src, x_gal))
    args = dict(bootstrap=cfg.bootstrap, max_negatives=cfg.max_negatives, seed=cfg.seed)
    privacy = {"attacker": reid_metrics(e_anon, cohort.anon_patient, cohort.anon_source, e_gal, gal_patient,
                                        cohort.gallery, **args)}
    if "identity" in nets:
        e_id = nets["identity"]
        privacy["e_id"] = {"view": "the optimizer's own identity network E_id (optimized against: not an "
                                   "independent attack)",
                           **reid_metrics(_embed(e_id, x_anon, cfg, device), cohort.anon_patient, cohort.anon_source,
                                          _embed(e_id, x_gal, cfg, device), gal_patient, cohort.gallery, **args)}
    else:
        privacy["e_id"] = {"skipped": shas["identity"]}
    # the lesion's place is part of what utility keeps only where E_ut segments it (the face presets)
    segments = getattr(nets.get("utility"), "has_segmentation", False)
    privacy["floor"] = utility_floor(real, cohort, masks if segments else None, gal_masks if segments else None, args)
    privacy["adaptive_attacker"] = _adaptive(nets, preset, checkpoints, real, anon_train, cohort, x_anon, cfg,
                                             device, {"x_gallery": x_gal, "patients": gal_patient})
    control = {"attacker_on_originals": reid_metrics(e_src, cohort.anon_patient, cohort.anon_source, e_gal,
                                                     gal_patient, cohort.gallery, own_source=False, **args)}
    e_rec = _embed(atk, x_rec, cfg, device) if x_rec is not None else None
    control["attacker"] = (reid_metrics(e_rec, cohort.anon_patient, cohort.anon_source, e_gal, gal_patient,
                                        cohort.gallery, **args) if e_rec is not None else
                           {"skipped": shas["aegan"]})

    # ---- record-level privacy (attacker space)
    reference = training_originals(cohort, cfg)
    e_train = _reference_embeddings(atk, real, reference, cfg, device)
    is_source = cohort.anon_source[:, None] == cohort.gallery[None, :]
    record = record_privacy(e_anon, e_src, cohort.anon_patient, e_train if len(reference) else np.zeros((0, e_anon.shape[1])),
                            e_gal, gal_patient, is_source)

    # ---- utility, fidelity
    utility = _utility(nets, real, cohort, x_anon, x_src, masks, anon_train, preset, cfg, device, x_rec)
    fidelity = _fidelity(nets, x_anon, x_src, x_rec, cfg, device)

    # ---- record, figures
    metrics = {
        "inputs": {"preset": preset, "real": str(real_dir), "anon": str(anon_dir),
                   "anon_train": None if anon_train is None else str(anon_train), "checkpoints": str(checkpoints),
                   "evaluated_images": len(anon.pseudonyms), "evaluated_patients": int(len(np.unique(cohort.anon_patient))),
                   "gallery_originals": int(len(cohort.gallery)), "source_splits": cohort.splits,
                   "manifest": anon.status_counts(), "released_without_linkage": anon.unlinked,
                   "note": "metrics cover released images only; withheld and failed records are counted in 'manifest'"},
        "config": asdict(cfg), "networks": shas,
        "privacy": privacy, "control": control, "utility": utility, "fidelity": fidelity, "record_privacy": record,
    }
    metrics = jsonable(metrics)
    atomic_write_json(out_dir / "metrics.json", metrics)
    _figures(out_dir, cfg, x_src, x_rec, x_anon, anon, cohort, e_anon, e_src, e_rec, e_gal, gal_patient)
    a = privacy["attacker"]
    log(None, f"attacker AUC own source {a['auc_own_source']:.3f}, other study {a['auc_same_patient_other_study']:.3f}, "
              f"rank-1 {a['rank1']:.3f} -> {out_dir / 'metrics.json'}")
    return metrics


def _figures(out_dir, cfg, x_src, x_rec, x_anon, anon, cohort, e_anon, e_src, e_rec, e_gal, gal_patient) -> None:
    """examples.png (first ``cfg.examples`` images by pseudonym) and roc.png (attacker, three probe sets)."""
    k = min(cfg.examples, len(x_src))
    if k:
        plots.example_grid(x_src[:k], None if x_rec is None else x_rec[:k], x_anon[:k], out_dir / "examples.png",
                           captions=[p[:8] for p in anon.pseudonyms[:k]])
    curves = {}
    for label, emb, key in (("anonymized, own source", e_anon, "own"), ("anonymized, other study", e_anon, "other"),
                            ("reconstruction, other study", e_rec, "other"), ("original, other study", e_src, "other")):
        if emb is None:
            continue
        pairs = reid_pairs(emb, cohort.anon_patient, cohort.anon_source, e_gal, gal_patient, cohort.gallery,
                           cfg.max_negatives, cfg.seed)
        if len(pairs[key]["score"]) and len(pairs["negative"]["score"]):
            fpr, tpr = roc_points(pairs, key)
            curves[label] = (fpr, tpr, float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr)))
    if curves:
        plots.roc_plot(curves, out_dir / "roc.png", "independent attacker: verification against originals")
