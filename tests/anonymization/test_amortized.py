"""The amortized engine: `gmia train anonymizer`, then `gmia anonymize --engine amortized` (toy networks)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from gmia.anonymization import gate
from gmia.anonymization.amortized import Anonymizer, anonymize_codes, fitted_to, load_anonymizer
from gmia.anonymization.config import anonymize_config
from gmia.anonymization.runner import anonymize_dataset
from gmia.anonymization.train_amortized import AmortizedConfig, train_anonymizer
from gmia.checkpoints import read_card
from gmia.data.datasets import PhantomFolder
from gmia.errors import CheckpointError

from tests.conftest import save_tiny_checkpoints

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.fixture(scope="module")
def trained(tiny_checkpoints, phantom_dir, tmp_path_factory):
    """A copy of the toy checkpoint folder with an anonymizer trained for one short epoch."""
    root = tmp_path_factory.mktemp("amortized")
    shutil.copytree(tiny_checkpoints / "phantom-cxr64", root / "phantom-cxr64")
    cfg = AmortizedConfig(epochs=2, batch_size=4, surrogates=8, hidden=32, seed=3)
    train_anonymizer("phantom-cxr64", phantom_dir, root, cfg, device="cpu", progress=False)
    return root


def _cfg(**kw):
    return anonymize_config("phantom-cxr64", margin=1.0, engine="amortized", max_steps=6, patience=0, **kw)


def test_training_writes_a_card_tied_to_the_weights_it_learned_from(trained):
    card = read_card(trained / "phantom-cxr64", "anonymizer")
    assert card["class"] == "gmia.anonymization.Anonymizer"
    fitted = card["meta"]["fitted_to"]
    assert fitted == {r: read_card(trained / "phantom-cxr64", r)["sha256"] for r in ("aegan", "identity", "utility")}
    assert [row["epoch"] for row in card["meta"]["history"]] == [1, 2]
    net = load_anonymizer(trained / "phantom-cxr64", fitted)
    w, w_t, e = torch.randn(3, net.w_dim), torch.randn(3, net.w_dim), torch.randn(3, net.id_dim)
    s, u = torch.randn(3, net.w_dim), torch.randn(3, net.ut_dim)  # a start code, E_ut features
    assert net.id_dim == 32 and net.ut_dim == card["kwargs"]["ut_dim"] > 0
    assert net(w, w_t, -0.3, e, s, u).shape == (3, net.w_dim)
    assert not torch.allclose(net(w, w_t, -0.3, e, s, u), net(w, w_t, 0.3, e, s, u))  # the margin is an input
    assert not torch.allclose(net(w, w_t, -0.3, e, s, u), net(w, w_t, -0.3, -e, s, u))  # ... the source's identity
    assert not torch.allclose(net(w, w_t, -0.3, e, s, u), net(w, w_t, -0.3, e, s, -u))  # ... and its findings
    with pytest.raises(ValueError, match="e_id"):
        net(w, w_t, -0.3, start=s, e_ut=u)
    with pytest.raises(ValueError, match="e_ut"):
        net(w, w_t, -0.3, e, s)
    stored = load_safetensors((trained / "phantom-cxr64" / "anonymizer.safetensors").read_bytes())
    stored = {v.dtype for v in stored.values()}
    assert stored == {torch.float16} and next(net.parameters()).dtype == torch.float32  # shipped half, run in float


def test_a_fresh_anonymizer_outputs_its_start():
    net = Anonymizer(w_dim=8, hidden=16)
    w, w_t = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.allclose(net(w, w_t, 0.0), w_t)  # no re-drawn start: the surrogate
    net = Anonymizer(w_dim=8, hidden=16, redraw=1.0)
    start = torch.randn(2, 8)
    assert torch.allclose(net(w, w_t, 0.0, start=start), start)
    with pytest.raises(ValueError, match="start"):
        net(w, w_t, 0.0)
    with pytest.raises(ValueError, match="source"):
        Anonymizer(w_dim=8, hidden=16, source="start")  # there is no start to read without a re-draw


def test_a_network_that_reads_the_lesion_map_needs_it_and_uses_it():
    from gmia.anonymization.amortized import utility_views
    from gmia.networks import UtilityNet

    net = Anonymizer(w_dim=8, hidden=16, id_dim=4, lesion_grid=2)
    torch.nn.init.normal_(net.out.weight)  # a trained correction
    w, w_t, e = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 4)
    here, there = torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    here[..., :8, :8], there[..., 8:, 8:] = 1.0, 1.0  # the same lesion, another quadrant
    assert not torch.allclose(net(w, w_t, 0.0, e, lesion=here), net(w, w_t, 0.0, e, lesion=there))
    with pytest.raises(ValueError, match="lesion"):
        net(w, w_t, 0.0, e)
    e_ut = UtilityNet(in_channels=3, resolution=32, num_findings=2, growth=4, blocks=(2, 2), init_features=8,
                      feature_dim=16, segment=True).eval()
    x = torch.rand(3, 3, 32, 32)
    feats, maps = utility_views(e_ut, x, True)  # one pass of E_ut for both
    assert torch.allclose(feats, e_ut.features(x), atol=1e-6) and torch.allclose(maps, e_ut.segment(x), atol=1e-6)
    assert utility_views(e_ut, x, False)[1] is None


def test_the_network_starts_where_the_optimizer_does(trained, tiny_checkpoints):
    """Trained for the preset's re-drawn start, the network corrects the code the split re-draws."""
    from gmia.anonymization.redraw import LatentSplit
    from gmia.projection.prior import LatentPrior

    folder = trained / "phantom-cxr64"
    net = load_anonymizer(folder, read_card(folder, "anonymizer")["meta"]["fitted_to"])
    assert net.redraw == 1.0 == anonymize_config("phantom-cxr64").redraw
    split, prior = LatentSplit.load(folder), LatentPrior.load(folder)
    w, w_t, e = torch.randn(3, net.w_dim), torch.randn(3, net.w_dim), torch.randn(3, net.id_dim)
    u = torch.randn(3, net.ut_dim)
    start = split.redraw(w, w_t, prior, 1.0)
    with torch.no_grad():
        w_a = anonymize_codes(net, w, w_t, 0.0, e, split, prior, u)
        # --correction: the share of the learned correction applied, linearly; 0 is the start
        part = anonymize_codes(net, w, w_t, 0.0, e, split, prior, u, correction=0.25)
        assert torch.allclose(part - start, 0.25 * (w_a - start), atol=1e-5)
        assert torch.allclose(anonymize_codes(net, w, w_t, 0.0, e, split, prior, u, correction=0.0), start)
        net.out.weight.zero_(), net.out.bias.zero_()
        assert torch.allclose(anonymize_codes(net, w, w_t, 0.0, e, split, prior, u), start)  # correction 0: the start
    assert not torch.allclose(w_a, start)  # ... which training moved
    # it reads the start, not the source's code: what the re-draw took out of w cannot come back through it
    assert net.source == "start"
    assert torch.allclose(net(w, w_t, 0.0, e, start, u), net(torch.randn_like(w), w_t, 0.0, e, start, u))
    with pytest.raises(CheckpointError, match="latent-split"):
        anonymize_codes(net, w, w_t, 0.0, e, e_ut=u)


def test_a_run_from_another_start_is_refused(tmp_path, trained, phantom_dir):
    with pytest.raises(CheckpointError, match="--redraw 1"):
        anonymize_dataset(_cfg(redraw=0.0), PhantomFolder(phantom_dir), tmp_path / "out", checkpoints=trained,
                          progress=False)


def test_one_pass_per_image_then_the_gate(tmp_path, trained, phantom_dir):
    out = tmp_path / "anon"
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), out, checkpoints=trained, progress=False, limit=5)
    rows = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert summary["released"] == 5 and {r["steps"] for r in rows} == {0} and {r["attempts"] for r in rows} == {1}
    assert all(r["cos_id_saved"] <= 1.0 for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["engine"] == "amortized" and "anonymizer" in run["checkpoints"]


def _refusing_gate(monkeypatch, times: int) -> None:
    """The privacy gate refuses each file its first ``times`` times, then judges it on its merits."""
    real = gate.write_and_check
    refused: dict[str, int] = {}

    def refuse(model, e_id, w, seeds, refs, paths, *args, **kwargs):
        results = real(model, e_id, w, seeds, refs, paths, *args, **kwargs)
        for r in results:
            if refused.get(r.staged.name, 0) < times:
                refused[r.staged.name] = refused.get(r.staged.name, 0) + 1
                r.passed = False
        return results

    monkeypatch.setattr("gmia.anonymization.runner.write_and_check", refuse)


def test_the_engine_runs_in_bf16_where_it_can_and_checks_in_fp32(tmp_path, trained, phantom_dir):
    assert anonymize_config("phantom-cxr64", engine="amortized").precision == "auto-bf16"
    assert anonymize_config("phantom-cxr64", engine="amortized", precision="fp32").precision == "fp32"
    assert anonymize_config("face256").precision == "auto"  # the optimizer: fp32 on a CPU
    assert all(anonymize_config(p).precision == "auto-bf16" for p in ("phantom-cxr64", "phantom-face64"))  # ... but
    # the phantoms' in bf16 where the CPU has it
    assert anonymize_config("phantom-cxr64", engine="amortized").lambda_ut2 == 0.0  # its network learned without
    out = tmp_path / "anon"
    summary = anonymize_dataset(_cfg(precision="bf16"), PhantomFolder(phantom_dir), out, checkpoints=trained,
                                progress=False, limit=4, write_linkage=True)
    assert summary["released"] == 4
    # the gate's cosine is E_id's fp32 view of the file as saved against the source's
    from gmia.anonymization.losses import identity_cosine
    from gmia.anonymization.runner import load_engine
    from gmia.data.preprocess import load_image

    engine = load_engine(_cfg(), trained)
    ds = PhantomFolder(phantom_dir)
    sources = {ds.keys()[i]: ds[i]["image"] for i in range(len(ds))}
    link = dict(line.split(",") for line in (out / "private" / "linkage.csv").read_text().splitlines()[1:])
    rows = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        source = next(k for k, p in link.items() if p == row["pseudonym"])
        with torch.no_grad():
            cos = identity_cosine(engine.e_id.embed(load_image(out / row["image"], channels=1)[None]),
                                  engine.e_id.embed(sources[source][None]))
        assert abs(float(cos) - row["cos_id_saved"]) < 1e-4


@pytest.mark.parametrize("refusals", [1, 2])
def test_a_refused_file_is_nudged_then_optimized(tmp_path, trained, phantom_dir, monkeypatch, refusals):
    """Refused once: one nudge and the gate again. Refused twice: the optimizer, from the nudged code."""
    _refusing_gate(monkeypatch, times=refusals)
    out = tmp_path / "anon"
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), out, checkpoints=trained, progress=False, limit=3)
    rows = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert summary["released"] == 3
    if refusals == 1:
        assert all(r["attempts"] == 1 and r["steps"] == 1 for r in rows)  # the nudge, no optimizer
    else:
        assert all(r["attempts"] == 2 and r["steps"] >= 2 for r in rows)  # the optimizer ran on the second attempt
        assert all(r["utility"] is not None for r in rows)  # ... with every reference feature


def test_the_nudge_moves_only_the_rows_above_the_target(tiny_checkpoints, phantom_dir):
    from gmia.anonymization.amortized import nudge_codes
    from gmia.anonymization.losses import identity_cosine
    from gmia.anonymization.runner import load_engine

    engine = load_engine(anonymize_config("phantom-cxr64"), tiny_checkpoints)
    ds = PhantomFolder(phantom_dir)
    x = torch.stack([ds[i]["image"] for i in range(4)])
    with torch.no_grad():
        ref, w = engine.e_id.embed(x), engine.model.encode(x)
        cos = identity_cosine(engine.e_id.embed(engine.model.render(w, [1, 2, 3, 4])), ref)
    target = float(cos.sort().values[1])  # two rows above it, one at it, one below
    moved = nudge_codes(engine.model, engine.e_id, w, ref, [1, 2, 3, 4], target)
    with torch.no_grad():
        after = identity_cosine(engine.e_id.embed(engine.model.render(moved, [1, 2, 3, 4])), ref)
    above = cos > target
    assert torch.equal(moved[~above], w[~above])  # at or below the target: untouched
    assert (after[above] < cos[above]).all()  # above it: the cosine went down ...
    assert ((after[above] - target).abs() < (cos[above] - target)).all()  # ... towards the target


def test_an_anonymizer_trained_for_other_weights_is_refused(tmp_path, trained, phantom_dir):
    stale = tmp_path / "ckpt"
    shutil.copytree(trained, stale)
    save_tiny_checkpoints(stale, roles=("identity",), seed=9)  # E_id retrained since
    with pytest.raises(CheckpointError, match="trained for other identity weights"):
        anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), tmp_path / "out", checkpoints=stale, progress=False)
    with pytest.raises(CheckpointError, match="gmia train anonymizer"):
        anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), tmp_path / "out2",
                          checkpoints=save_tiny_checkpoints(tmp_path / "bare"), progress=False)


@pytest.mark.parametrize("key, file", [("latent_split_sha256", "latent split"), ("latent_prior_sha256", "latent prior")])
def test_an_anonymizer_trained_from_another_split_or_prior_is_refused(tmp_path, trained, phantom_dir, key, file):
    card = read_card(trained / "phantom-cxr64", "anonymizer")
    assert card["meta"][key] is not None  # training records both: the network corrects the start they make
    moved = tmp_path / "ckpt"
    shutil.copytree(trained, moved)
    card["meta"][key] = "0" * 64  # as if the split or prior had been refitted since
    (moved / "phantom-cxr64" / "anonymizer.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=f"trained with another {file}.*gmia train anonymizer"):
        anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), tmp_path / "out", checkpoints=moved, progress=False)


def test_the_linker_can_match_to_another_study_of_the_patient(tiny_checkpoints, phantom_dir, tmp_path):
    from gmia.anonymization.train_amortized import _other_studies

    assert _other_studies(["a", "b", "a", None, "a"]) == [[2, 4], [1], [0, 4], [3], [0, 2]]
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints / "phantom-cxr64", root / "phantom-cxr64")
    cfg = AmortizedConfig(epochs=1, batch_size=4, surrogates=8, hidden=16, seed=3, link_to="both", limit=8)
    meta = read_card(train_anonymizer("phantom-cxr64", phantom_dir, root, cfg, device="cpu", progress=False).parent,
                     "anonymizer")["meta"]
    assert meta["config"]["link_to"] == "both"
    assert {"link_acc", "link_acc_patient"} <= set(meta["history"][0])
    with pytest.raises(Exception, match="link_to"):
        train_anonymizer("phantom-cxr64", phantom_dir, root, dataclasses.replace(cfg, link_to="study"), device="cpu",
                         progress=False)


def test_a_network_that_does_not_read_the_identity(tiny_checkpoints, phantom_dir, tmp_path):
    """--no-read-identity: the output cannot depend on E_id(x), the one input every study of a patient shares;
    the runner feeds it all the same and the gate still decides every file."""
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints / "phantom-cxr64", root / "phantom-cxr64")
    cfg = AmortizedConfig(epochs=1, batch_size=4, surrogates=8, hidden=16, seed=3, read_identity=False, limit=8)
    folder = train_anonymizer("phantom-cxr64", phantom_dir, root, cfg, device="cpu", progress=False).parent
    net = load_anonymizer(folder, read_card(folder, "anonymizer")["meta"]["fitted_to"])
    assert net.id_dim == 0 and net.ut_dim > 0
    w, w_t, u = torch.randn(2, net.w_dim), torch.randn(2, net.w_dim), torch.randn(2, net.ut_dim)
    with torch.no_grad():
        assert torch.equal(net(w, w_t, 0.0, torch.randn(2, 8), w, u), net(w, w_t, 0.0, None, w, u))
    summary = anonymize_dataset(_cfg(), PhantomFolder(phantom_dir), tmp_path / "out", checkpoints=root,
                                progress=False, limit=4)
    assert summary["released"] == 4  # margin 1: every file passes the gate


def test_the_weights_kept_trade_a_little_privacy_for_utility():
    from gmia.anonymization.train_amortized import _kept_epoch

    history = [{"epoch": 1, "val_private": 0.99, "val_ut_ratio": 1.6}, {"epoch": 2, "val_private": 0.98,
               "val_ut_ratio": 1.2}, {"epoch": 3, "val_private": 0.90, "val_ut_ratio": 1.0}]
    assert _kept_epoch(history, 0.02) == 2  # epoch 3 is better still, but leaves too many files to the gate
    assert _kept_epoch(history, 0.0) == 1
    assert _kept_epoch([{"epoch": 1}, {"epoch": 2}], 0.02) == 2  # no held-out check: the last epoch


@pytest.mark.parametrize("preset", ["phantom-cxr64", "phantom-face64"])
def test_the_shipped_networks_fit_the_shipped_weights(preset):
    """`--engine amortized` works out of the box: each phantom preset ships a network trained against its weights,
    from its re-drawn start, reading the start and E_ut's features; the chest network also reads E_id(x), the face
    network does not (docs/scale.md, "The correction")."""
    folder = SHIPPED / preset
    net = load_anonymizer(folder, fitted_to(folder), redraw=anonymize_config(preset).redraw)
    assert net.source == "start" and (net.id_dim > 0) == (preset == "phantom-cxr64") and net.ut_dim > 0
    assert (net.lesion_grid > 0) == (preset == "phantom-face64")  # the map where E_ut segments
    meta = read_card(folder, "anonymizer")["meta"]
    assert meta["config"]["band"] is not None  # trained with the floor
    kept = meta["history"][meta["kept_epoch"] - 1]
    # what the docs report of it: without E_id(x), half the face files are left to the nudge
    assert kept["val_private"] >= (0.7 if net.id_dim else 0.5) and kept["val_ut_ratio"] < 1.0
