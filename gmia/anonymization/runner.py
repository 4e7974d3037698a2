"""The dataset runner of stage 2: stream records in, keep the optimizer's batch full, gate, write, journal.

    summary = anonymize_dataset(cfg, dataset, "outputs/anon", checkpoints="checkpoints")

Per record: read → project (w_0 = E(x)) → optimize in the shared batch (rows leave when done, new records take
their place) → decode with the record's own noise → write to staging → privacy gate on the reloaded file →
release to ``images/`` (or retry, or withhold) → one journal line. A record that cannot be read gets an error
row and the run goes on. Everything a record needs (seed, noise, pseudonym) derives from its key, so the result
is the same whatever the batch size, the order, the shard, or the number of times the run was killed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import networks
from ..checkpoints import read_card
from ..data.datasets import ImageDataset
from ..data.adapters.dicom_deid import DicomPolicy, DicomRelease
from ..data.reading import DICOM_SUFFIXES, source_bits
from ..errors import CheckpointError, ConfigError, GmiaError, InputError
from ..machine import resolve_device
from ..projection.project import load_aegan, project_codes
from ..runs import environment, log
from .amortized import anonymize_codes, fallback_config, nudge_codes, reads_lesion, utility_views
from .domain import DomainGuard
from .config import (PRESETS, RESULT_DEFAULTS, RESULT_FIELDS, AnonymizeConfig, bf16_autocast, config_dict,
                     target_margin, use_bf16)
from .gate import release, write_and_check
from .losses import FindingPlaceTerm, IdentityTerm, LesionTerm, Objective, UtilityTerm
from .optimizer import Finished, Item, LatentOptimizer, noise_seeds
from .outputs import RELEASE_MTIME, RunFolder

__all__ = ["anonymize_dataset", "record_seed", "Engine", "load_engine", "parse_shard", "public_error",
           "check_input", "resolve_output_format", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = ("png", "dicom")


def record_seed(key: str, seed: int = 0) -> int:
    """The per-record seed (noise): a hash of the run seed and the record key, independent of position."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' → (i, n) with 0 <= i < n; None → (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


@dataclass
class Engine:
    """The frozen networks of a run: stage-1 model, E_id, E_ut, and the objective built on them."""

    model: torch.nn.Module
    e_id: torch.nn.Module
    e_ut: torch.nn.Module
    objective: Objective
    checkpoints: dict[str, str]   # role → sha256 of its weights
    guard: DomainGuard | None = None  # the out-of-domain guard calibrated for these weights (domain.py)
    anonymizer: torch.nn.Module | None = None  # the amortized engine's network (amortized.py)
    prior: object | None = None   # the latent prior its surrogate codes are drawn from
    split: object | None = None   # the finding subspace of the re-drawn start (redraw.py)


def load_engine(cfg: AnonymizeConfig, checkpoints: str | Path = "checkpoints", device="cpu") -> Engine:
    """Load ``<checkpoints>/<preset>/{aegan,identity,utility}`` and build the stage-2 objective."""
    folder = networks.checkpoint_dir(cfg.preset, checkpoints)
    if not (folder / "aegan.json").is_file():
        raise CheckpointError(f"no stage-1 model for preset {cfg.preset!r}: expected aegan.safetensors and aegan.json "
                              f"(looked in {networks.looked_in(cfg.preset, checkpoints)}). Train every network of the "
                              f"preset on your data with `gmia fit --preset {cfg.preset} --input DIR --out CKPT` (or "
                              f"`make train`) and pass --checkpoints CKPT, or set GMIA_HOME")
    model = load_aegan(folder, device=device)
    e_id = networks.load(cfg.preset, "identity", checkpoints, device=device)
    e_ut = networks.load(cfg.preset, "utility", checkpoints, device=device)
    extra, roles, files, prior = [], ["aegan", "identity", "utility"], {}, None
    convnets = [model, e_id, e_ut]  # put in the channels-last layout below
    if cfg.lambda_mdl > 0:  # the third objective: MFM features split by the MDL decoupler
        from ..decoupling import MDLTerm, load_decoupler

        try:
            mfm, decoupler = networks.load(cfg.preset, "mfm", checkpoints, device=device), load_decoupler(folder)
        except CheckpointError as exc:  # the faces' preset turns the term on: say how to run without it
            raise CheckpointError(f"{exc} (the foundation-model term needs both; --lambda-mdl 0 runs without it)") \
                from exc
        convnets.append(mfm)
        extra.append(MDLTerm(mfm, decoupler, cfg.lambda_sem, cfg.lambda_mid, cfg.mdl_margin, weight=cfg.lambda_mdl))
        roles += ["mfm", "decoupler"]
    if cfg.lambda_lesion > 0:  # keep the lesion map (face presets: E_ut also segments)
        extra.append(LesionTerm(e_ut, cfg.lambda_lesion))
    if cfg.lambda_place > 0:  # keep the findings' own pixels, where E_ut sees them
        extra.append(FindingPlaceTerm(e_ut, cfg.lambda_place, cfg.place_findings))
    if cfg.lambda_ut2 > 0:  # utility as a second network family reads it too (networks/plain_utility.py)
        try:
            e_ut2 = networks.load(cfg.preset, "utility2", checkpoints, device=device)
        except CheckpointError as exc:  # the chest preset turns the term on: say how to run without it
            raise CheckpointError(f"{exc} (the second utility term needs it; --lambda-ut2 0 runs without it)") \
                from exc
        convnets.append(e_ut2)
        extra.append(UtilityTerm(e_ut2, cfg.lambda_ut2, name="ut2"))
        roles.append("utility2")
    if cfg.lambda_surrogate > 0:  # pull towards a generated nobody's identity (surrogate.py)
        from ..projection.prior import LatentPrior
        from .surrogate import SurrogateTerm

        prior = LatentPrior.load(folder)
        extra.append(SurrogateTerm(model, e_id, prior, cfg.surrogate_cos, cfg.lambda_surrogate,
                                   cfg.noise))
    utility = UtilityTerm(e_ut, cfg.lambda_ut, cfg.utility_form, cfg.utility_jitter) if cfg.lambda_ut > 0 else None
    objective = Objective(IdentityTerm(e_id, cfg.lambda_id), utility, extra)
    guard = DomainGuard.load(folder) if DomainGuard.exists(folder) else None
    if guard is not None:
        files["domain_guard"] = guard.sha256
    shas = {role: read_card(folder, role)["sha256"] for role in roles}
    split = None
    if cfg.redraw > 0:  # the start keeps only the source's findings (redraw.py)
        from ..projection.prior import LatentPrior
        from .redraw import LatentSplit

        prior = prior or LatentPrior.load(folder)
        split = LatentSplit.load(folder)
        files["latent_split"] = split.sha256
    anonymizer = None
    if cfg.engine == "amortized":
        from ..projection.prior import LatentPrior
        from .amortized import ANONYMIZER, load_anonymizer

        prior = prior or LatentPrior.load(folder)
        anonymizer = load_anonymizer(folder, shas, device, redraw=cfg.redraw,
                                     start={"latent_prior_sha256": prior.sha256,
                                            "latent_split_sha256": None if split is None else split.sha256})
        trained = PRESETS[cfg.preset].margin if cfg.preset in PRESETS else None
        if trained is not None and cfg.margin != trained:
            log(None, f"note: the amortized network learned one operating point, about the preset's margin m = "
                      f"{trained:g} (amortized.py); at m = {cfg.margin:g} the gate sends the files it refuses to "
                      "the per-image optimizer, and a higher m gets images changed more than it needs: "
                      "--engine optimize follows the margin exactly")
        shas[ANONYMIZER] = read_card(folder, ANONYMIZER)["sha256"]
    if prior is not None:
        files["latent_prior"] = prior.sha256  # checked against its card when loaded
    # channels-last convolutions: the same maths in another memory layout, which oneDNN runs faster. On this
    # project's CPU (one thread, batch 32) E, G and E_ut ran 30% faster in fp32 and 20% in bf16, an optimizer step
    # (forward and backward) 7%; outputs moved by ~1e-6 (docs/scale.md, "Two engines")
    for net in convnets:
        net.to(memory_format=torch.channels_last)
    return Engine(model, e_id, e_ut, objective, {**shas, **files}, guard, anonymizer, prior, split)


def public_error(exc: Exception) -> str:
    """What a public manifest row says about an input that failed: the error's kind and its path-free
    ``reason``, never its message (which names the file, and file names carry patient ids). The full
    message goes to private/errors.jsonl."""
    reason = getattr(exc, "reason", None)
    if not reason:
        reason = "the input could not be read" if isinstance(exc, (GmiaError, OSError)) else \
            "the input could not be processed"
    return f"{type(exc).__name__}: {reason} (details in private/errors.jsonl)"


def check_input(x: torch.Tensor, geometry, expected: tuple[int, int, int], path, preset: str) -> None:
    """Refuse what cannot be anonymized meaningfully: the wrong shape for the networks, a source so small that
    the preset's resolution would be mostly invented (more than 4× upsampling), or a blank image."""
    if tuple(x.shape) != expected:
        raise InputError(f"{path}: image is {tuple(x.shape)} after preprocessing, the {preset} networks need "
                         f"{expected}; open the dataset with the preset's Preprocess",
                         reason="wrong image shape after preprocessing")
    smallest = expected[-1] // 4
    if min(geometry.height, geometry.width) < smallest:
        raise InputError(f"{path}: image is only {geometry.height}×{geometry.width} px; the {preset} preset needs at "
                         f"least {smallest} px a side (it works at {expected[-1]} px). Use the original file.",
                         reason=f"image too small (under {smallest} px a side)")
    if float(x.max() - x.min()) < 1.0 / 255:
        raise InputError(f"{path}: the image is blank (one grey level); nothing to anonymize. Check the export.",
                         reason="blank image (a single grey level)")


# Records are scheduled in blocks of BLOCK_BATCHES batches. A batch refills only from its block, so a record's
# batch-mates depend on the record list alone. That matters because the CPU and GPU kernels round a row
# differently in another batch, and the optimizer's sign-like Adam steps (beta1 = 0) grow those last bits
# into visibly different images; with the same batch-mates a row's pixels are the same in one process,
# on any number of Ray actors, and in a resumed run.
BLOCK_BATCHES = 4


def schedule(records: list[tuple[int, str, str]], batch_size: int, done=frozenset()) -> list[list[tuple]]:
    """``records`` (index, key, pseudonym) of the whole run in blocks of BLOCK_BATCHES x ``batch_size``
    consecutive records, each record as (index, key, pseudonym, replay). A block whose records are all in
    ``done`` (pseudonyms) is dropped; in a block that was partly done when a run was killed, the done records
    come back with replay True: they are anonymized again, beside the same batch-mates as the first time, so
    that the others get the same pixels as in an uninterrupted run, and nothing of theirs is written again."""
    size = BLOCK_BATCHES * batch_size
    blocks = [[(*r, r[2] in done) for r in records[b:b + size]] for b in range(0, len(records), size)]
    return [b for b in blocks if not all(r[3] for r in b)]


def fresh(blocks: list[list[tuple]]) -> int:
    """The records of ``blocks`` (``schedule``) that are not replays: the ones this run will journal."""
    return sum(not r[3] for b in blocks for r in b)


class _Run:
    """One call of ``anonymize_dataset`` (or one Ray task): the loop over blocks of records, and its bookkeeping."""

    def __init__(self, cfg, engine, dataset, folder, blocks: list[list[tuple[int, str, str]]], device, progress,
                 dicom: DicomRelease | None = None, allow_out_of_domain: bool = False):
        self.cfg, self.engine, self.dataset, self.folder = cfg, engine, dataset, folder
        self.allow_out_of_domain = allow_out_of_domain
        self.out_of_domain = 0  # inputs the guard flagged (withheld, or released anyway when allowed)
        self.dicom = dicom  # None: PNG output
        self.blocks, self.device = blocks, device
        # the amortized engine's optimizer only takes the files its network could not make private
        self.opt = LatentOptimizer(engine.model, engine.objective,
                                   cfg if engine.anonymizer is None else fallback_config(cfg))
        self.counts = {"released": 0, "withheld": 0, "error": 0}
        self.bar = tqdm(total=fresh(blocks), unit="img", desc="anonymize", disable=not progress,
                        dynamic_ncols=True)
        self.expected = (engine.model.img_channels, engine.model.img_resolution, engine.model.img_resolution)
        # the amortized engine's passes in bf16 where the hardware has it (config.AMORTIZED_PRECISION); E_id's
        # identity checks stay fp32
        self.bf16 = engine.anonymizer is not None and use_bf16(cfg.precision, device)

    # ---- input ---------------------------------------------------------------------------------------------
    def _fill(self, source: Iterator) -> None:
        """Top the batch up to batch_size with newly read, in-domain and projected records."""
        exhausted = False
        while self.opt.active < self.cfg.batch_size and not exhausted:
            items, images, exhausted = self._read(source)
            if not items:
                continue
            x = torch.stack(images).to(self.device)
            with bf16_autocast(self.device, self.bf16):
                codes = self.engine.model.encode(x).float()  # what the guard renders, and where stage 2 starts
                # E_ut's view of the inputs: the guard's features score and the amortized network's input, once
                feats = lesion = None
                if self.engine.guard is not None or self.engine.anonymizer is not None:
                    feats, lesion = (None if v is None else v.float() for v in
                                     utility_views(self.engine.e_ut, x, reads_lesion(self.engine.anonymizer)))
                keep = self._guard(items, x, codes, feats)
            items, x, codes = [it for it, k in zip(items, keep.tolist()) if k], x[keep], codes[keep]
            if items and self.engine.anonymizer is not None:
                self._amortized(items, x, codes, feats[keep], None if lesion is None else lesion[keep])
            elif items:
                seeds = [it.seed for it in items] if self.cfg.noise == "per-image" else None
                w0 = project_codes(self.engine.model, x, self.cfg.refine_steps, noise_seeds=seeds, start=codes)
                if self.engine.split is not None:  # identity, pose, exposure from the record's surrogate
                    from .surrogate import surrogate_codes

                    w_t = surrogate_codes(self.engine.prior, [it.seed for it in items], self.device)
                    w0 = self.engine.split.redraw(w0, w_t, self.engine.prior, self.cfg.redraw)
                # refined (if at all) under each image's own noise, as it will be rendered
                self.opt.add(items, w0, x)

    @torch.no_grad()
    def _amortized(self, items: list[Item], x: torch.Tensor, codes: torch.Tensor, feats: torch.Tensor,
                   lesion: torch.Tensor | None) -> None:
        """The amortized engine: one pass of the anonymizer network per record (``feats``, ``lesion``: E_ut's
        features and lesion map of x), straight to the gate (which sends a refused file to the per-image optimizer,
        ``_finish``)."""
        from .surrogate import surrogate_codes

        t0 = time.perf_counter()
        ref_id = self.engine.e_id.embed(x)
        w_t = surrogate_codes(self.engine.prior, [it.seed for it in items], self.device)
        w_a = anonymize_codes(self.engine.anonymizer, codes, w_t, self.cfg.margin, ref_id, self.engine.split,
                              self.engine.prior, feats, lesion, self.cfg.correction)
        share = (time.perf_counter() - t0) / len(items)
        rows = []
        for i, item in enumerate(items):
            item.payload["source"] = x[i]  # the optimizer's reference features, if the gate refuses the file
            rows.append(Finished(item, w_a[i], True, math.nan, math.nan, math.nan, math.nan, 0, share,
                                 refs={"id": ref_id[i:i + 1]}))
        self._finish(rows)

    def _read(self, source: Iterator) -> tuple[list[Item], list[torch.Tensor], bool]:
        """Records read from ``source`` until the batch would be full: (items, their images, source exhausted).
        A record that cannot be read becomes an error row here."""
        items, images = [], []
        while self.opt.active + len(items) < self.cfg.batch_size:
            nxt = next(source, None)
            if nxt is None:
                return items, images, True
            index, key, pseudonym, replay = nxt
            try:
                sample = self.dataset[index]
                x = sample["image"]
                check_input(x, sample["geometry"], self.expected, self.dataset.path_of(index), self.cfg.preset)
            except (GmiaError, OSError, ValueError, RuntimeError) as exc:
                self._error(index, key, pseudonym, exc, replay)
                continue
            try:
                header, bits = self._output(index, key, sample)
            except GmiaError as exc:
                self._error(index, key, pseudonym, exc, replay)
                continue
            payload = {"pseudonym": pseudonym, "labels": [float(v) for v in sample["labels"]], "bits": bits,
                       "header": header, "replay": replay}
            items.append(Item(key=key, seed=record_seed(key, self.cfg.seed), payload=payload))
            images.append(x)
        return items, images, False

    def _guard(self, items: list[Item], x: torch.Tensor, codes: torch.Tensor,
               feats: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) bool, the rows to optimize: the inputs the model cannot represent (``domain.py``) are withheld
        here, or, with --allow-out-of-domain, marked and kept. Every row carries its domain scores."""
        guard = self.engine.guard
        if guard is None:
            return torch.ones(len(items), dtype=torch.bool, device=x.device)
        scores = guard.scores(self.engine.model, self.engine.e_ut, x, codes, feats)
        ok = guard.accepts(scores)
        for i, item in enumerate(items):
            item.payload["domain"] = {k: round(float(v[i]), 5) for k, v in scores.items()}
            if not ok[i]:
                self.out_of_domain += 1
                if self.allow_out_of_domain:
                    item.payload["out_of_domain"] = guard.describe(scores, i)
                else:
                    unstarted = Finished(item, None, False, math.nan, math.nan, math.nan, math.nan, 0, 0.0)
                    self._record(item.key, self._row(unstarted, "withheld", None, "out_of_domain"),
                                 item.payload["replay"])
        return (ok | self.allow_out_of_domain).to(x.device)

    def _output(self, index: int, key: str, sample: dict) -> tuple[object, int]:
        """(DICOM header or None, bits per sample) of the file a record will be released as."""
        path = self.dataset.path_of(index)
        if self.dicom is None:
            return None, self.cfg.output_bits or source_bits(path)
        header, bits = self.dicom.prepare(path, key, sample["patient"])
        return header, self.cfg.output_bits or bits

    # ---- output --------------------------------------------------------------------------------------------
    def _error(self, index: int, key: str, pseudonym: str, exc: Exception, replay: bool) -> None:
        row = {"pseudonym": pseudonym, "status": "error", "error": public_error(exc)}
        self._record(key, row, replay, error=f"{self.dataset.path_of(index)}: {type(exc).__name__}: {exc}")

    def _record(self, key: str, row: dict, replay: bool, error: str | None = None) -> None:
        """Journal a finished record (``error``: the private reason of an error row) and count it; a replayed
        one (``schedule``) is in the journal already."""
        if replay:
            return
        self.folder.record(row, source_key=key, error=error)
        self._count(row["status"])

    def _count(self, status: str) -> None:
        self.counts[status] += 1
        self.bar.update(1)
        self.bar.set_postfix(released=self.counts["released"], withheld=self.counts["withheld"],
                             errors=self.counts["error"], refresh=False)

    def _row(self, f: Finished, status: str, cos_saved: float | None, reason: str | None) -> dict:
        p = f.item.payload
        r4 = lambda v: None if v is None or math.isnan(v) else round(float(v), 5)  # noqa: E731
        return {"pseudonym": p["pseudonym"], "status": status, "cos_id_reconstruction": r4(f.cos_start),
                "cos_id_optimized": r4(f.cos_id), "cos_id_saved": r4(cos_saved), "utility_reconstruction":
                r4(f.utility_start), "utility": r4(f.utility), "steps": f.steps, "seconds": round(f.seconds, 4),
                "attempts": f.attempt + 1 if f.w is not None else 0, "bits": p["bits"], "reason": reason,
                **({"domain": p["domain"]} if "domain" in p else {}),
                **({"out_of_domain_allowed": p["out_of_domain"]} if "out_of_domain" in p else {}), "labels": p["labels"]}

    def _finish(self, finished: list[Finished]) -> None:
        """Gate the rows that reached the margin; withhold the others; requeue gate failures with more slack."""
        cfg = self.cfg
        for f in finished:
            if not f.private:
                reason = (f"not private after {f.steps} steps: cos_id {f.cos_id:.4f} > "
                          f"m - slack = {target_margin(cfg, f.attempt):.4f}")
                self._record(f.item.key, self._row(f, "withheld", None, reason), f.item.payload["replay"])
        ready = [f for f in finished if f.private]
        if not ready:
            return
        w = torch.stack([f.w for f in ready])
        refs = torch.cat([f.refs["id"] for f in ready])
        suffix = ".png" if self.dicom is None else self.dicom.suffix
        staged = [self.folder.staging_path(f.item.payload["pseudonym"], suffix) for f in ready]
        writers = None if self.dicom is None else [
            functools.partial(self.dicom.write, header=f.item.payload["header"], bits=f.item.payload["bits"])
            for f in ready]
        results = write_and_check(self.engine.model, self.engine.e_id, w, [f.item.seed for f in ready], refs,
                                  staged, [f.item.payload["bits"] for f in ready], cfg.margin, cfg.noise, writers,
                                  bf16=self.bf16)
        refused = []  # network codes the gate refused: one nudge (amortized.nudge_codes), then the gate again
        for f, g in zip(ready, results):
            p = f.item.payload
            if g.passed and p["replay"]:  # its released file is in place already
                g.staged.unlink(missing_ok=True)
                continue
            if g.passed:
                final = self.folder.image_path(p["pseudonym"], suffix)
                release(g.staged, final, RELEASE_MTIME)
                self._record(f.item.key, {**self._row(f, "released", g.cos_saved, None),
                                          "image": f"images/{final.name}"}, p["replay"])
                continue
            g.staged.unlink(missing_ok=True)
            if "source" in p and not p.get("nudged"):
                refused.append(f)
                continue
            if "source" in p and len(f.refs) < len(self.engine.objective.terms):
                # an amortized row: the optimizer needs every reference feature, computed on first refusal
                f.refs = self.engine.objective.references(p["source"][None], [f.item.seed])
            if self.opt.retry(f):  # back into the batch, asking for more headroom
                continue
            reason = f"saved image above the margin after {f.attempt} retries: cos_id {g.cos_saved:.4f} > m = {cfg.margin:.4f}"
            self._record(f.item.key, self._row(f, "withheld", g.cos_saved, reason), p["replay"])
        if refused:
            self._finish(self._nudged(refused))

    def _nudged(self, rows: list[Finished]) -> list[Finished]:
        """Amortized rows whose file the gate refused, each moved by one first-order step to the cosine a retry
        asks for (``nudge_codes``); one step more on their count. A row the gate refuses again goes to the
        optimizer."""
        t0 = time.perf_counter()
        seeds = noise_seeds([f.item.seed for f in rows], self.cfg.noise)
        with bf16_autocast(self.device, self.bf16):
            w = nudge_codes(self.engine.model, self.engine.e_id, torch.stack([f.w for f in rows]),
                            torch.cat([f.refs["id"] for f in rows]), seeds, target_margin(self.cfg, 1))
        share = (time.perf_counter() - t0) / len(rows)
        for f in rows:
            f.item.payload["nudged"] = True
        return [dataclasses.replace(f, w=w[i], steps=f.steps + 1, seconds=f.seconds + share)
                for i, f in enumerate(rows)]

    # ---- loop ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        steps = 0
        for block in self.blocks:
            source = iter(block)  # (index, key, pseudonym) of the block's records still to do
            while True:
                self._fill(source)
                if self.opt.active == 0:
                    break
                result = self.opt.step()
                steps += 1
                finished = self.opt.pop_done(result.done)
                if finished:
                    self._finish(finished)
        self.bar.close()
        self.batch_steps = steps


def _inside_output(dataset: ImageDataset, out: Path) -> set[int]:
    """Indices of the records whose file lies inside the output folder: an output folder inside the input
    folder must never feed its released images back in as new inputs (they would join the release)."""
    root = getattr(dataset, "root", None)
    out = out.resolve()
    if root is None or not (out == Path(root).resolve() or out.is_relative_to(Path(root).resolve())):
        return set()
    return {j for j in range(len(dataset)) if dataset.path_of(j).resolve().is_relative_to(out)}


def resolve_output_format(requested: str | None, dataset: ImageDataset, dicom: DicomPolicy | None = None) -> str:
    """The released files' format: ``requested``, else the input's (a folder of DICOM files → "dicom", anything
    else → "png"). DICOM header options with PNG output are an error, not silently ignored."""
    if requested is not None and requested not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {requested!r}; valid: {', '.join(OUTPUT_FORMATS)}")
    from ..data.adapters.dicom import DicomFolder

    is_dicom = isinstance(dataset, DicomFolder) or (
        len(dataset) > 0 and all(Path(k).suffix.lower() in DICOM_SUFFIXES for k in dataset.keys()))
    fmt = requested or ("dicom" if is_dicom else "png")
    if fmt != "dicom" and dicom is not None:
        raise ConfigError("--dicom-dates, --dicom-max-shift and --dicom-keep-sex-age set the released DICOM headers; "
                          f"this run writes {fmt.upper()} (add --output-format dicom, or leave them out)")
    return fmt


def anonymize_dataset(cfg: AnonymizeConfig, dataset: ImageDataset, out: str | Path, *,
                      checkpoints: str | Path = "checkpoints", device: str | torch.device | None = None,
                      resume: bool = False, shard: tuple[int, int] = (0, 1), limit: int | None = None,
                      write_linkage: bool = False, progress: bool = True, engine: Engine | None = None,
                      output_format: str | None = None, dicom: DicomPolicy | None = None,
                      allow_out_of_domain: bool = False, ray_address: str | None = None,
                      ray_actors: int = 2, ray_threads: int | None = None, calibration: dict | None = None) -> dict:
    """Anonymize ``dataset`` into ``out`` (see ``outputs`` for the layout); returns the run summary.

    limit: the first ``limit`` records of this shard (in dataset order). resume: finish a killed run.
    output_format: "png" or "dicom" (None: the input's, see ``resolve_output_format``); ``dicom`` sets the
    released headers' date and patient-characteristics options (DICOM output only). allow_out_of_domain: release
    inputs the domain guard flags instead of withholding them (marked in the manifest, counted at the end).
    ray_address: run the records on a Ray cluster ("local": one started here, "auto": the cluster this machine
    belongs to, or ray://host:port) with ``ray_actors`` copies of the networks, ``ray_threads`` CPU threads each
    (default: this machine's cores shared out for "local", 1 on a cluster) (``on_ray.py``). calibration: the
    setting ``--target-auc`` chose (``gmia.evaluation.calibrate.pick_setting``), recorded in run.json.
    """
    device = resolve_device(device)
    engine = engine or load_engine(cfg, checkpoints, device)
    env = environment()
    record = {"stage": "anonymize", "config": config_dict(cfg), "checkpoints": engine.checkpoints,
              "versions": {k: env.get(k) for k in ("gmia", "torch", "python", "git_sha")}, "hardware": env.get("device"),
              "seed": cfg.seed, "input": {"dataset": type(dataset).__name__, "records": len(dataset),
                                          "findings": list(dataset.findings)}}
    if calibration is not None:  # the privacy asked in attacker terms and what the table expects of this setting
        record["calibration"] = calibration
    result_config = {k: v for k, v in config_dict(cfg).items() if k in RESULT_FIELDS}
    guard = engine.guard
    if guard is not None and allow_out_of_domain:
        log(None, "warning: --allow-out-of-domain: inputs the model cannot represent are released, marked "
                  "out_of_domain_allowed in manifest.jsonl")
    record["domain_guard"] = result_config["domain_guard"] = None if guard is None else {
        "sha256": guard.sha256, "thresholds": guard.thresholds, "allow_out_of_domain": bool(allow_out_of_domain)}
    fmt = resolve_output_format(output_format, dataset, dicom)
    if fmt == "dicom":  # a resumed run must write the same kind of files with the same header rules
        policy = dicom or DicomPolicy()
        record["output"] = result_config["output"] = {"format": fmt, "dicom": dataclasses.asdict(policy)}
    folder = RunFolder(out, record, result_config, resume, shard, RESULT_DEFAULTS)
    try:
        getattr(dataset, "use_patient_key", lambda key: None)(folder.subkey("patient"))  # keyed PatientIDs
        release_dicom = DicomRelease(folder.subkey("dicom"), policy) if fmt == "dicom" else None
        i, n = shard
        keys = dataset.keys()
        inside = _inside_output(dataset, folder.root)
        if inside:
            log(None, f"skipped {len(inside)} input file(s) inside the output folder {folder.root} (a run never reads "
                      "its own outputs)")
        records = [(j, keys[j], folder.pseudonym(keys[j])) for j in range(i, len(dataset), n) if j not in inside]
        blocks = schedule(records[:limit], cfg.batch_size, folder.done)
        t0 = time.time()
        if ray_address is None:
            run = _Run(cfg, engine, dataset, folder, blocks, device, progress, release_dicom, allow_out_of_domain)
            run.run()
            counts, extra, out_of_domain = run.counts, {"batch_steps": run.batch_steps}, run.out_of_domain
        else:
            from .on_ray import run_on_ray

            counts, out_of_domain = run_on_ray(
                cfg, dataset, folder, blocks, address=ray_address, actors=ray_actors, checkpoints=checkpoints,
                device=None if device.type == "cpu" else str(device), dicom=release_dicom,
                threads=ray_threads, progress=progress,
                allow_out_of_domain=allow_out_of_domain)
            extra = {"ray": {"address": ray_address, "actors": ray_actors}}
        seconds = time.time() - t0
        processed = sum(counts.values())
        summary = folder.finalize(list(dataset.findings), {
            "this_call": {**counts, "seconds": round(seconds, 2),
                          "images_per_second": round(processed / seconds, 4) if seconds > 0 else None,
                          **extra}}, linkage_keys=keys if write_linkage else None)
    finally:
        folder.close()
    log(None, f"anonymized {processed} records in {seconds:.1f}s ({processed / max(seconds, 1e-9):.2f} img/s): "
              f"{counts['released']} released, {counts['withheld']} withheld, {counts['error']} errors; "
              f"in total {summary['released']} released, {summary['withheld']} withheld, {summary['error']} errors "
              f"of {summary['records']} -> {folder.root}")
    if guard is None:
        log(None, "warning: no domain guard beside these weights (domain-guard.json): inputs were not checked for "
                  "being images the model can represent; calibrate one with `gmia fit-domain --preset "
                  f"{cfg.preset} --data TRAINING_IMAGES --checkpoints CKPT`")
    if out_of_domain:
        log(None, f"{out_of_domain} input(s) are out of the model's domain (reason out_of_domain in manifest.jsonl)"
                  + ("; RELEASED anyway (--allow-out-of-domain)" if allow_out_of_domain else ": withheld"))
    if counts["error"]:  # which files: only in the private error log (their names are not public)
        log(None, f"{counts['error']} input(s) could not be read; which files and why: "
                  f"{folder.private / 'errors.jsonl'}")
    return summary
