"""What trains each kind of stage: the library function it calls, the config it hashes, the checkpoints it writes.

Every kind answers three questions for the pipeline:

* ``config(stage, ctx)``  the resolved settings (JSON), part of the stage's key: a card trained with the same
                          key is not trained again;
* ``outputs(stage, ctx)`` the checkpoints it writes, as (folder, name) in its work folder, before export;
* ``run(stage, ctx)``     train (resuming its own run folder), return a few numbers for the summary.

    network    E_id, E_ut, the MFM or the attacker (gmia.networks.training.train)
    decoupler  the MDL split of the MFM's features (gmia.decoupling.fit_decoupler)
    aegan      one leg of stage 1 (gmia.projection.train_aegan); every process of a torchrun job takes part
    prior      the latent prior of a stage-1 model (gmia.projection.prior.LatentPrior)
    split      the finding subspace of its latent space, for the re-drawn start (gmia.anonymization.redraw)
    pool       a pool of new phantom patients for a later leg (gmia.data.phantoms)
    report     stage-1 acceptance numbers on the test split, written into the aegan card
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import read_card
from ..config import get_preset, override
from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..machine import resolve_device
from ..runs import log
from .data import FitData, check_labels
from .recipe import Stage

__all__ = ["FitContext", "KINDS", "stage_dir", "aegan_dir"]

_MACHINE = ("device", "threads")  # settings that may change between a run and its resume


@dataclass
class FitContext:
    """What every stage reads: the preset, the output folder, the data, the machine, the other stages."""

    preset: str
    out: Path
    data: FitData | None          # None only while the settings are checked, before the data is opened
    stages: dict[str, Stage]
    device: str | None = None
    progress: bool = True
    lpips_weights: str | None = None
    rank: int = 0
    world_size: int = 1
    extra: dict = field(default_factory=dict)

    def work(self, name: str) -> Path:
        return self.out / "work" / name

    def resolved_device(self) -> str:
        return self.device or str(resolve_device(None))


def _known(stage: Stage, allowed: tuple[str, ...]) -> dict:
    """The stage's options, after checking that each is one its kind reads (a typo in --set is an error)."""
    bad = sorted(set(stage.options) - set(allowed))
    if bad:
        raise ConfigError(f"stage {stage.name!r} ({stage.kind}) has no setting(s) {bad}; valid: {list(allowed)}")
    return stage.options


def stage_dir(stage: Stage, ctx: FitContext) -> Path:
    """The folder a stage's checkpoint is written to before export."""
    if stage.kind == "aegan":
        return ctx.work(stage.name) / "checkpoint"
    if stage.kind in ("prior", "split", "report"):
        return aegan_dir(stage.options["of"], ctx)
    return ctx.work(stage.name)


def aegan_dir(name: str, ctx: FitContext) -> Path:
    """Where the final model of aegan stage ``name`` lives: the output folder when it is exported."""
    s = ctx.stages.get(name)
    if s is None or s.kind != "aegan":
        raise ConfigError(f"stage {name!r} is not an aegan stage of this recipe")
    return ctx.out if s.export else ctx.work(name) / "checkpoint"


# ---- network --------------------------------------------------------------------------------------------------
class Network:
    def train_config(self, stage: Stage, ctx: FitContext):
        from ..networks.training import get_train_config

        opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in stage.options.items() if k != "role"}
        return override(get_train_config(ctx.preset, stage.options["role"]), device=ctx.device or "auto", **opts)

    def config(self, stage, ctx):
        cfg = dataclasses.asdict(self.train_config(stage, ctx))
        return json.loads(json.dumps({k: v for k, v in cfg.items() if k not in _MACHINE}))

    def outputs(self, stage, ctx):
        return [(ctx.work(stage.name), stage.options["role"])]

    def run(self, stage, ctx):
        from ..networks.training import train

        role = stage.options["role"]
        check_labels(ctx.data, role)
        result = train(self.train_config(stage, ctx), ctx.data.network_data(), ctx.work(stage.name),
                       progress=ctx.progress)
        return {k: v for k, v in result.metrics.items()
                if k in ("verification_auc", "rank1", "macro_auroc", "dice", "id_probe_auc",
                         "finding_probe_macro_auroc")}


# ---- decoupler ------------------------------------------------------------------------------------------------
class DecouplerKind:
    def fit_config(self, stage):
        from ..decoupling.coding_rate import CodingRateConfig
        from ..decoupling.fit import FitConfig

        opts = dict(stage.options)
        cr = CodingRateConfig(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in opts.pop("coding_rate", {}).items()})
        return FitConfig(coding_rate=cr, **opts)

    def config(self, stage, ctx):
        return json.loads(json.dumps(dataclasses.asdict(self.fit_config(stage))))

    def outputs(self, stage, ctx):
        return [(ctx.work(stage.name), "decoupler")]

    def run(self, stage, ctx):
        from .. import networks
        from ..decoupling.fit import extract_features, fit_decoupler

        device = ctx.resolved_device()
        cache = ctx.work(stage.name) / "features.npz"
        if not cache.is_file():  # the MFM's features of every split, in the layout fit_decoupler reads back
            mfm = networks.load(ctx.preset, "mfm", ctx.out, device=device)
            feats = {s: extract_features(mfm, ctx.data.images(s), 64, device) for s in ("train", "val", "test")}
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name("features.tmp.npz")
            np.savez(tmp, findings=np.asarray(ctx.data.findings),
                     **{f"{s}/{k}": v for s, d in feats.items() for k, v in d.items()})
            tmp.replace(cache)
        report = fit_decoupler(ctx.preset, ctx.data.spec.describe(), ctx.work(stage.name), mfm_checkpoints=ctx.out,
                               cfg=self.fit_config(stage), device=device, cache=cache, verbose=ctx.progress)
        held = report.get("held_out", {})
        return {"rank": report.get("fit", {}).get("rank"), "held_out_patients": held.get("patients")}


# ---- stage 1 --------------------------------------------------------------------------------------------------
class Aegan:
    _OWN = ("init", "data")  # recipe options that are not AeganConfig fields

    def aegan_config(self, stage: Stage, ctx: FitContext, init_path: str | None):
        from ..projection.config import aegan_config

        opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in stage.options.items() if k not in self._OWN}
        if opts.get("perceptual") == "auto":  # resolved here so that the key says which network it is
            from ..projection.losses import local_alexnet_weights

            opts["perceptual"] = "lpips" if (ctx.lpips_weights or local_alexnet_weights()) else "mfm"
            opts.setdefault("lpips_weights", ctx.lpips_weights)
        split = "train" if stage.options.get("data", "train") == "train" else None  # what the card says it saw
        return dataclasses.replace(aegan_config(ctx.preset, init_from=init_path, **opts), split=split)

    def config(self, stage, ctx):
        from ..projection.config import config_dict

        init = stage.options.get("init")
        d = config_dict(self.aegan_config(stage, ctx, f"stage:{init}" if init else None))
        d.pop("lpips_weights", None)  # a path; the weights' sha256 is what matters and the stage key has it
        return {**d, "data": stage.options.get("data", "train")}

    def outputs(self, stage, ctx):
        return [(ctx.work(stage.name) / "checkpoint", "aegan")]

    def dataset(self, stage, ctx):
        name = stage.options.get("data", "train")
        if name == "train":
            return ctx.data.images("train"), {"root": ctx.data.spec.describe(), "split": "train",
                                              "fingerprint_fit": ctx.data.fingerprint}
        from ..data import open as open_data

        pool = ctx.stages.get(name)
        if pool is None or pool.kind != "pool":
            raise ConfigError(f"stage {stage.name!r}: data {name!r} is neither 'train' nor a pool stage")
        p = get_preset(ctx.preset)
        root = ctx.work(name) / "images"
        return open_data(root, size=p.resolution, channels=p.channels), {"root": str(root), "split": None, "pool": name}

    def run(self, stage, ctx):
        from ..projection.losses import build_perceptual
        from ..projection.training import train_aegan

        init = stage.options.get("init")
        cfg = self.aegan_config(stage, ctx, str(aegan_dir(init, ctx)) if init else None)
        device = ctx.resolved_device()
        perceptual = None
        if cfg.lambda_perc and cfg.perceptual != "none":
            perceptual = build_perceptual(cfg.perceptual, ctx.preset, cfg.lpips_weights, device, checkpoints=ctx.out)
        ds, info = self.dataset(stage, ctx)
        result = train_aegan(cfg, ds, ctx.work(stage.name), resume=True, perceptual=perceptual, device=device,
                             progress=ctx.progress, data_info={**info, "processes": ctx.world_size})
        if result.interrupted:
            raise KeyboardInterrupt
        return {"kimg": round(result.kimg, 3), "train_grid_ssim": result.stats.get("grid/ssim")}


# ---- latent prior ---------------------------------------------------------------------------------------------
class Prior:
    def config(self, stage, ctx):
        o = _known(stage, ("of", "limit", "shrinkage"))
        return {"of": o["of"], "split": "train", "limit": o.get("limit"), "shrinkage": o.get("shrinkage", 0.1)}

    def outputs(self, stage, ctx):
        return [(stage_dir(stage, ctx), "latent-prior")]

    def run(self, stage, ctx):
        from ..projection.prior import LatentPrior
        from ..projection.project import load_aegan
        from ..runs import environment

        cfg = self.config(stage, ctx)
        folder = stage_dir(stage, ctx)
        model = load_aegan(folder, ctx.resolved_device())
        x = ctx.data.lazy("train", cfg["limit"])
        env = environment()
        meta = {"preset": ctx.preset, "fitted_to": {"aegan_sha256": read_card(folder, "aegan")["sha256"]},
                "data": {"root": ctx.data.spec.describe(), "split": "train", "images": len(x),
                         "fingerprint_fit": ctx.data.fingerprint},
                "shrinkage": cfg["shrinkage"], "command": " ".join(env["argv"]), "environment": env}
        LatentPrior.fit(model, x, cfg["shrinkage"]).save(folder, meta)
        return {"images": len(x)}


# ---- latent split ---------------------------------------------------------------------------------------------
class Split:
    def config(self, stage, ctx):
        o = _known(stage, ("of", "rank", "limit", "batch_size"))
        return {"of": o["of"], "split": "train", "rank": o.get("rank", 48), "limit": o.get("limit"),
                "batch_size": o.get("batch_size", 128)}

    def outputs(self, stage, ctx):
        return [(stage_dir(stage, ctx), "latent-split")]

    def run(self, stage, ctx):
        from ..anonymization.redraw import split_fitted_to, split_of
        from ..projection.prior import LatentPrior
        from ..projection.project import load_aegan
        from ..runs import environment

        cfg = self.config(stage, ctx)
        folder = stage_dir(stage, ctx)
        model = load_aegan(folder, ctx.resolved_device())
        view = ctx.data.images("train", cfg["limit"])
        masks = ctx.data.masks
        bs = cfg["batch_size"]
        batches = ((view.images(a, a + bs), None if masks is None else
                    torch.from_numpy(np.ascontiguousarray(masks[view.rows[a:a + bs]])))
                   for a in range(0, len(view), bs))
        fitted = split_of(model, LatentPrior.load(folder), batches, view.labels(), cfg["rank"])
        env = environment()
        meta = {"preset": ctx.preset, "fitted_to": split_fitted_to(folder),
                "data": {"root": ctx.data.spec.describe(), "split": "train", "images": len(view),
                         "findings": list(ctx.data.findings), "lesion_masks": masks is not None,
                         "fingerprint_fit": ctx.data.fingerprint},
                "command": " ".join(env["argv"]), "environment": env}
        fitted.save(folder, meta)
        return {"images": len(view), "rank": fitted.rank}


# ---- phantom pool ---------------------------------------------------------------------------------------------
class Pool:
    def config(self, stage, ctx):
        o = _known(stage, ("domain", "patients", "studies", "size", "seeds"))
        return {"domain": o["domain"], "patients": o["patients"], "studies": o["studies"], "size": o["size"],
                "seeds": list(o["seeds"])}

    def outputs(self, stage, ctx):
        return []

    def run(self, stage, ctx):
        from ..data import phantoms

        cfg = self.config(stage, ctx)
        work = ctx.work(stage.name)
        images = work / "images"
        images.mkdir(parents=True, exist_ok=True)
        for seed in cfg["seeds"]:  # one shard per seed; images/s<seed>/ as the shipped pool folder had them
            if (images / f"s{seed}").is_dir():
                continue
            shard = work / "shards" / f"s{seed}"
            shutil.rmtree(shard, ignore_errors=True)
            phantoms.write(phantoms.generate(cfg["domain"], cfg["patients"], cfg["studies"], cfg["size"], seed), shard)
            (shard / "images").rename(images / f"s{seed}")
            shutil.rmtree(shard)
            log(None, f"[fit] {stage.name}: shard seed {seed} ({cfg['patients']} patients x {cfg['studies']}) written")
        shutil.rmtree(work / "shards", ignore_errors=True)
        return {"images": sum(1 for _ in images.rglob("*.png"))}


# ---- stage-1 report -------------------------------------------------------------------------------------------
class Report:
    def config(self, stage, ctx):
        o = _known(stage, ("of", "limit", "refine_steps", "refine_lr", "refine_space", "lambda_ssim", "batch_size"))
        return {"of": o["of"], "limit": o.get("limit"), "refine_steps": o.get("refine_steps", 0),
                "refine_lr": o.get("refine_lr", 0.03), "refine_space": o.get("refine_space"),
                "lambda_ssim": o.get("lambda_ssim", 0.0), "batch_size": o.get("batch_size", 50)}

    def outputs(self, stage, ctx):
        return []

    def run(self, stage, ctx):
        from .. import networks
        from ..metrics import macro_auroc, rank_k
        from ..projection.project import encoder_fidelity, load_aegan, project_images

        cfg = self.config(stage, ctx)
        device = ctx.resolved_device()
        folder = stage_dir(stage, ctx)
        model = load_aegan(folder, device)
        test = ctx.data.images("test")
        bs = cfg["batch_size"]
        whole = encoder_fidelity(model, _Moved(test, device), bs)  # encoder only, every test image
        view = ctx.data.images("test", cfg["limit"])
        x = view.images(0, len(view))
        recon, ssim, psnr = ({"encoder": [], "refined": []} for _ in range(3))
        for i in range(0, len(x), bs):
            res = project_images(model, x[i:i + bs].to(device), cfg["refine_steps"], cfg["refine_lr"],
                                 lambda_ssim=cfg["lambda_ssim"], refine_space=cfg["refine_space"])
            for name, suffix in (("encoder", "_encoder"), ("refined", "")):
                recon[name].append(res[f"x_hat{suffix}"].clamp(0, 1).detach().cpu())
                ssim[name].append(res[f"metrics{suffix}"]["ssim"].cpu())
                psnr[name].append(res[f"metrics{suffix}"]["psnr"].cpu())
        recon = {k: torch.cat(v) for k, v in recon.items()}
        attacker = networks.load(ctx.preset, "attacker", ctx.out, device=device)
        utility = networks.load(ctx.preset, "utility", ctx.out, device=device)
        patients = np.asarray(view.patients())
        first = np.zeros(len(patients), bool)
        first[np.unique(patients, return_index=True)[1]] = True

        def batched(fn, images):
            with torch.no_grad():
                return torch.cat([fn(images[i:i + bs].to(device)).float().cpu() for i in range(0, len(images), bs)])

        def rank1(images):
            if first.all():
                return None
            gallery = batched(attacker.embed, x[torch.from_numpy(first)]).numpy()
            probes = batched(attacker.embed, images[torch.from_numpy(~first)]).numpy()
            return rank_k(gallery, patients[first], probes, patients[~first], k=1)

        # E_ut's outputs matched to the data's findings by name (an imported E_ut may have other or more outputs)
        names = list(getattr(utility, "finding_names", ()) or ())
        if names == list(view.findings):
            cols, keep = list(range(len(names))), list(range(len(names)))
        else:
            keep = [j for j, f in enumerate(view.findings) if f in names]
            cols = [names.index(view.findings[j]) for j in keep]
        labels = view.labels()[:, keep]
        auroc = lambda images: macro_auroc(labels, batched(utility.logits, images)[:, cols].numpy())  # noqa: E731
        table = {"test_images": len(x), "test_patients": len(set(patients)), "refine_steps": cfg["refine_steps"],
                 "refine_space": cfg["refine_space"] or model.latent, "refine_lambda_ssim": cfg["lambda_ssim"],
                 "refine_lr": cfg["refine_lr"], "attacker_rank1_originals": rank1(x)}
        orig = auroc(x) if labels.size else None
        table["utility_macro_auroc_originals"] = orig
        for name in ("encoder", "refined"):
            a = auroc(recon[name]) if labels.size else None
            table.update({f"ssim_{name}": float(torch.cat(ssim[name]).mean()),
                          f"psnr_{name}": float(torch.cat(psnr[name]).mean()),
                          f"attacker_rank1_{name}": rank1(recon[name]),
                          f"utility_macro_auroc_{name}": a,
                          f"utility_auroc_kept_{name}": (a / orig) if a is not None and orig else None})
        table.update({"all_test_images": len(test), "ssim_encoder_all": whole["ssim"],
                      "psnr_encoder_all": whole["psnr"]})
        table = {k: (round(v, 4) if isinstance(v, float) and np.isfinite(v) else
                     None if isinstance(v, float) else v) for k, v in table.items()}
        for path in {folder, ctx.work(stage.options["of"]) / "checkpoint"}:
            if (path / "aegan.json").is_file():
                card = json.loads((path / "aegan.json").read_text())
                metrics = card.setdefault("meta", {}).setdefault("metrics", {})
                metrics["test_split"] = table
                atomic_write_json(path / "aegan.json", card)
        return {k: table[k] for k in ("ssim_encoder", "ssim_refined", "attacker_rank1_refined",
                                      "utility_auroc_kept_refined")}


class _Moved:
    """A dataset view whose images come out on ``device`` (encoder_fidelity stacks them as they are)."""

    def __init__(self, view, device):
        self.view, self.device = view, device

    def __len__(self):
        return len(self.view)

    def __getitem__(self, i):
        s = self.view[i]
        return {**s, "image": s["image"].to(self.device)}


KINDS = {"network": Network(), "decoupler": DecouplerKind(), "aegan": Aegan(), "prior": Prior(), "split": Split(),
         "pool": Pool(), "report": Report()}
