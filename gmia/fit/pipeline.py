"""``fit``: train every network a preset needs, in dependency order, into one checkpoint folder.

    summary = fit("gmia-cxr256", DataSpec(dataset="mimic", data_root="/data/mimic-cxr-jpg"), "models/mimic")
    # then: gmia anonymize --preset gmia-cxr256 --checkpoints models/mimic ...

The output folder:

    <name>.safetensors + <name>.json   aegan, identity, utility, utility2, mfm, attacker, decoupler, latent-prior: what
                                       ``gmia anonymize --checkpoints OUT`` and ``gmia evaluate`` read. Each card's
                                       ``meta.fit`` holds the stage, its settings and its key
    fit.json                           the recipe, the data, every stage's status, seconds and key (rewritten
                                       after each stage)
    splits.json                        the patient splits, made once (names patients: not for sharing)
    work/<stage>/                      each stage's run folder (snapshots, logs, stats, grids of training images)
                                       and stage.json; work/cache/ the preprocessed images

A stage is skipped when its checkpoint's card carries its key: the sha256 of its resolved settings, the data
fingerprint and splits, and the digest of every checkpoint it reads (``weights_digest``). Change any of them and
that stage and those after it train again; change nothing and a rerun trains nothing. A killed stage resumes from
its run folder (the networks from their last epoch, stage 1 from its last snapshot). Weights imported with
``gmia import-weights`` (cards with ``meta.imported``) stand in for their stage.

Under ``torchrun`` every process runs this function: stage-1 legs (``distributed`` stages) train on all of them
(gradients averaged over processes; OUT and the data on a shared file system), every other stage on rank 0
while the others wait for its card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path


from .. import machine
from ..checkpoints import read_card, sha256_file
from ..config import get_preset
from ..errors import CheckpointError, ConfigError, GmiaError
from ..fileio import atomic_path, atomic_write_json
from ..runs import environment, log
from .data import DataSpec, prepare_data
from .recipe import Stage, recipe
from .stages import KINDS, FitContext, stage_dir

__all__ = ["fit", "dry_run", "stage_key", "weights_digest", "FitInterrupted"]

FIT_RECORD = "fit.json"


class FitInterrupted(GmiaError):
    """A stage was stopped (Ctrl-C); rerunning the same command resumes it."""


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def weights_digest(path: Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes), leaving out its free-form metadata
    (safetensors writes a metadata map of several entries in a random order: files written elsewhere may differ in
    it for the same weights). Stage keys use this digest; cards keep the file's sha256 for integrity."""
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _card_ok(folder: Path, name: str, field: str, key: str, check_file: bool = True) -> str | None:
    """The weights' digest (``weights_digest``) when ``folder/name`` has a card whose ``meta[field]["key"]`` is
    ``key`` (and the weights file still matches the card's sha256); else None."""
    path = folder / f"{name}.json"
    if not path.is_file():
        return None
    try:
        card = read_card(folder, name)
    except CheckpointError:
        return None
    if (card.get("meta", {}).get(field) or {}).get("key") != key:
        return None
    weights = folder / f"{name}.safetensors"
    if check_file and (not weights.is_file() or sha256_file(weights) != card["sha256"]):
        return None
    return weights_digest(weights) if weights.is_file() else card["sha256"]


def _imported(out: Path, stage: Stage) -> dict | None:
    """Outputs of ``stage`` already in OUT as imported weights (``gmia import-weights``)."""
    if stage.kind not in ("network", "decoupler"):
        return None
    name = stage.options.get("role", "decoupler")
    if not (out / f"{name}.json").is_file():
        return None
    try:
        card = read_card(out, name)
    except CheckpointError:
        return None
    return {name: weights_digest(out / f"{name}.safetensors")} if card.get("meta", {}).get("imported") else None


class _Pipeline:
    def __init__(self, ctx: FitContext, stages: tuple[Stage, ...], header: dict):
        self.ctx, self.stages, self.header = ctx, stages, header
        self.shas: dict[str, dict] = {}      # stage → {output name: weights digest} (or pool key)
        self.records: list[dict] = []

    # ---- keys and state
    def inputs(self, stage: Stage) -> dict:
        missing = [n for n in stage.needs if n not in self.shas]
        if missing:
            raise ConfigError(f"stage {stage.name!r} needs {missing}, which is not done and not in this run "
                              "(--only): run it first")
        return {n: self.shas[n] for n in stage.needs}

    def key(self, stage: Stage) -> str:
        d = self.ctx.data
        record = {"preset": self.ctx.preset, "stage": stage.name, "kind": stage.kind,
                  "config": KINDS[stage.kind].config(stage, self.ctx),
                  "data": {"fingerprint": d.fingerprint, "splits": {s: _sha(v) for s, v in d.split_patients.items()},
                           "unreadable": int(d.bad.sum())},
                  "inputs": self.inputs(stage)}
        return _sha(json.dumps(record, sort_keys=True))

    def done(self, stage: Stage, key: str) -> dict | None:
        """{output: sha256} when the stage's results carry ``key``."""
        ctx = self.ctx
        if stage.kind == "pool":
            rec = ctx.work(stage.name) / "pool.json"
            ok = rec.is_file() and json.loads(rec.read_text()).get("key") == key
            return {"pool": key} if ok else None
        if stage.kind == "report":
            folder = stage_dir(stage, ctx)
            return {} if _card_ok(folder, "aegan", "fit_report", key, check_file=False) else None
        found = {}
        for folder, name in KINDS[stage.kind].outputs(stage, ctx):
            sha = _card_ok(ctx.out if stage.export else folder, name, "fit", key)
            if sha is None:
                return None
            found[name] = sha
        return found

    # ---- one stage
    def _stamp(self, stage: Stage, key: str, config: dict, seconds: float) -> dict:
        """Write ``meta.fit`` into the stage's cards, export them; returns {name: sha256}."""
        ctx = self.ctx
        fit_meta = {"stage": stage.name, "kind": stage.kind, "key": key, "recipe": self.header["recipe"],
                    "config": config, "inputs": self.inputs(stage), "seconds": round(seconds, 1),
                    "data": ctx.data.summary(), "processes": ctx.world_size}
        if stage.kind == "pool":
            atomic_write_json(ctx.work(stage.name) / "pool.json", {"key": key, **fit_meta})
            return {"pool": key}
        if stage.kind == "report":
            folder = stage_dir(stage, ctx)
            _update_meta(folder, "aegan", "fit_report", fit_meta)
            return {}
        shas = {}
        for folder, name in KINDS[stage.kind].outputs(stage, ctx):
            shas[name] = weights_digest(folder / f"{name}.safetensors")
            _update_meta(folder, name, "fit", {**fit_meta, "weights_digest": shas[name]})
            if stage.export and folder != ctx.out:
                _export(folder, name, ctx.out)
        return shas

    def _wait_done(self, stage: Stage, key: str, record: Path) -> dict:
        """Another rank's view: wait until rank 0 has recorded the stage done, then read its outputs."""
        while True:
            rec = json.loads(record.read_text()) if record.is_file() else {}
            if rec.get("key") == key and rec.get("status") == "done":
                found = self.done(stage, key)
                if found is not None:
                    return found
            time.sleep(1)

    def run_stage(self, i: int, stage: Stage) -> dict:
        ctx = self.ctx
        main = ctx.rank == 0
        t0 = time.time()
        say = log if main else (lambda *a, **k: None)
        head = f"[fit {i + 1}/{len(self.stages)}] {stage.name} ({stage.kind})"
        imported = _imported(ctx.out, stage)
        if imported is not None:
            say(None, f"{head}: imported weights in {ctx.out}; not trained")
            return {"stage": stage.name, "status": "imported", "outputs": imported, "seconds": 0.0}
        key = self.key(stage)
        found = self.done(stage, key)
        if found is not None:
            say(None, f"{head}: up to date ({key[:12]}); skipped")
            return {"stage": stage.name, "status": "skipped", "key": key, "outputs": found, "seconds": 0.0}
        work = ctx.work(stage.name)
        record = work / "stage.json"
        if not main and not stage.distributed:  # rank 0 trains it; wait for its card
            found = self._wait_done(stage, key, record)
            return {"stage": stage.name, "status": "trained (rank 0)", "key": key, "outputs": found, "seconds": 0.0}
        if main:
            if record.is_file() and json.loads(record.read_text()).get("key") != key:
                say(None, f"{head}: settings, data or inputs changed since {work} was started; starting it again")
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_json(record, {"key": key, "status": "running", "started": time.time()})
        else:  # a distributed stage: start together once rank 0 has cleaned and stamped its folder
            while not (record.is_file() and json.loads(record.read_text()).get("key") == key):
                time.sleep(1)
        config = KINDS[stage.kind].config(stage, ctx)
        say(None, f"{head}: training ({stage.note or stage.kind}) -> {work}")
        numbers = KINDS[stage.kind].run(stage, ctx)
        seconds = time.time() - t0
        if not main:
            found = self._wait_done(stage, key, record)
            return {"stage": stage.name, "status": "trained", "key": key, "outputs": found, "seconds": seconds}
        shas = self._stamp(stage, key, config, seconds)
        atomic_write_json(record, {"key": key, "status": "done", "seconds": round(seconds, 1), "numbers": numbers})
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()
                          if v is not None)
        say(None, f"{head}: done in {seconds:.0f} s" + (f": {shown}" if shown else ""))
        return {"stage": stage.name, "status": "trained", "key": key, "outputs": shas, "seconds": round(seconds, 1),
                "numbers": numbers}

    def run(self) -> dict:
        ctx = self.ctx
        t0 = time.time()
        for i, stage in enumerate(self.stages):
            try:
                rec = self.run_stage(i, stage)
            except KeyboardInterrupt:
                self._write({"stage": stage.name, "status": "interrupted"}, t0)
                raise FitInterrupted(f"stage {stage.name!r} was interrupted; rerun the same command to resume it "
                                     f"(its run folder is {ctx.work(stage.name)})") from None
            self.shas[stage.name] = rec["outputs"]
            self.records.append(rec)
            self._write(None, t0)
        summary = self._write(None, t0)
        if ctx.rank == 0:
            log(None, format_summary(summary))
        return summary

    def _write(self, extra: dict | None, t0: float) -> dict:
        summary = {**self.header, "seconds": round(time.time() - t0, 1),
                   "stages": self.records + ([extra] if extra else [])}
        if self.ctx.rank == 0:
            atomic_write_json(self.ctx.out / FIT_RECORD, summary)
        return summary


def _sha(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _update_meta(folder: Path, name: str, field: str, value: dict) -> None:
    path = Path(folder) / f"{name}.json"
    card = json.loads(path.read_text())
    card.setdefault("meta", {})[field] = value
    atomic_write_json(path, card)


def _export(folder: Path, name: str, out: Path) -> None:
    """Copy ``name``'s weights, then its card, into ``out`` (each by rename: never half a file)."""
    for suffix in (".safetensors", ".json"):
        src, dst = folder / f"{name}{suffix}", out / f"{name}{suffix}"
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def stage_key(stage: Stage, ctx: FitContext, inputs: dict) -> str:
    """The key of ``stage`` given its inputs' hashes (what a card must carry for the stage to be skipped)."""
    p = _Pipeline(ctx, (stage,), {})
    p.shas.update(inputs)
    return p.key(stage)


def format_summary(summary: dict) -> str:
    lines = [f"fit {summary['preset']}{' (' + summary['variant'] + ')' if summary.get('variant') else ''}: "
             f"{summary['seconds']:.0f} s -> {summary['out']}"]
    for r in summary["stages"]:
        numbers = r.get("numbers") or {}
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()
                          if v is not None)
        lines.append(f"  {r['stage']:<12s} {r['status']:<12s} {r.get('seconds', 0):>8.1f} s  {shown}")
    return "\n".join(lines)


def dry_run(preset: str, spec: DataSpec | None, out, *, variant: str | None = None,
            overrides: dict | None = None, only: list[str] | None = None) -> str:
    """The resolved stage list (and the data's splits, when ``spec`` is given) as text; writes nothing."""
    stages = recipe(preset, variant, overrides, only)
    ctx = FitContext(preset=preset, out=Path(out), data=None, stages={s.name: s for s in recipe(preset, variant)})
    for s in stages:  # every stage's settings resolve
        KINDS[s.kind].config(s, ctx)
    lines = [f"gmia fit --preset {preset}{' --variant ' + variant if variant else ''} -> {out}"]
    if spec is not None:
        data = prepare_data(preset, spec, out, build_cache=False, progress=False)
        lines.append(f"data {spec.describe()}: {len(data.keys)} images, findings {list(data.findings)}; splits "
                     f"({data.split_method}): " + ", ".join(f"{s} {len(v)} patients" for s, v in
                                                           data.split_patients.items()))
    for i, s in enumerate(stages):
        flags = [f for f, on in (("export", s.export), ("torchrun", s.distributed)) if on]
        lines.append(f"{i + 1:>2d}. {s.name:<12s} {s.kind:<9s} needs [{', '.join(s.needs)}]"
                     f"{' (' + ', '.join(flags) + ')' if flags else ''}  {s.note}")
        lines.append(f"      {json.dumps(s.options, sort_keys=True)}")
    return "\n".join(lines)


def fit(preset: str, spec: DataSpec, out, *, variant: str | None = None, overrides: dict | None = None,
        only: list[str] | None = None, device: str | None = None, threads: int | None = None,
        workers: int | None = None, lpips_weights: str | None = None, progress: bool = True) -> dict:
    """Train every stage of ``preset``'s recipe on the data of ``spec`` into the checkpoint folder ``out``.

    variant: "tiny" for toy widths and steps (tests); overrides: {stage glob: {field: value}}; only: stage names
    or globs to run (the stages they need must be done already). Returns the summary written to ``out/fit.json``.
    """
    get_preset(preset)
    stages = recipe(preset, variant, overrides)
    names = [s.name for s in stages]
    selected = set(s.name for s in recipe(preset, variant, overrides, only)) if only else set(names)
    rank, world = _rank()
    out = Path(out)
    with machine.threads(threads):
        ctx = FitContext(preset=preset, out=out, data=None, stages={s.name: s for s in stages}, device=device,
                         progress=progress and rank == 0, lpips_weights=lpips_weights, rank=rank, world_size=world)
        for s in stages:  # every stage's settings resolve (a typo in --set fails here, before any work)
            KINDS[s.kind].config(s, ctx)
        ctx.data = data = prepare_data(preset, spec, out, rank=rank, workers=workers, progress=ctx.progress)
        env = environment()
        header = {"preset": preset, "variant": variant, "overrides": overrides or {}, "only": only, "out": str(out),
                  "recipe": {"preset": preset, "variant": variant, "overrides": overrides or {}},
                  "data": data.summary(), "processes": world,
                  "environment": {k: env[k] for k in ("gmia", "torch", "python", "git_sha", "device", "argv")}}
        pipeline = _Pipeline(ctx, tuple(stages), header)
        # stages left out by --only count as done when their cards carry their keys
        for s in stages:
            if s.name in selected:
                continue
            try:
                found = _imported(out, s) or pipeline.done(s, pipeline.key(s))
            except ConfigError:
                found = None
            if found is not None:
                pipeline.shas[s.name] = found
        pipeline.stages = tuple(s for s in stages if s.name in selected)
        return pipeline.run()
