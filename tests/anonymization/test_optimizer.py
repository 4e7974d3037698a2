import dataclasses

import pytest
import torch

from gmia.anonymization import Item, LatentOptimizer, anonymize_config, load_engine
from gmia.errors import CheckpointError


@pytest.fixture(scope="module")
def engine(tiny_checkpoints):
    return load_engine(anonymize_config("phantom-cxr64", margin=-1.0, lambda_surrogate=0.0), tiny_checkpoints)


def _cfg(**kw):
    base = dict(margin=-1.0, privacy=None, patience=10_000, utility_ratio=0.0, max_steps=50, lr=0.05, precision="fp32")
    return dataclasses.replace(anonymize_config("phantom-cxr64"), **{**base, **kw})


def _items(n, offset=0):
    return [Item(key=f"k{offset + i}", seed=100 + offset + i) for i in range(n)]


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 64, 64, generator=g), torch.randn(n, 32, generator=g)


def test_per_row_adam_matches_torch_adam(engine):
    cfg = _cfg()
    x, w0 = _data(1)
    opt = LatentOptimizer(engine.model, engine.objective, cfg)
    opt.add(_items(1), w0, x)
    for _ in range(4):
        opt.step()
    # the same 4 steps with torch.optim.Adam on one image
    w = w0.clone().requires_grad_(True)
    adam = torch.optim.Adam([w], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    refs = engine.objective.references(x)
    for _ in range(4):
        adam.zero_grad()
        total, _ = engine.objective.evaluate(engine.model.render(w, [100]), refs, margin=cfg.margin - cfg.hinge_slack)
        total.sum().backward()
        adam.step()
    assert torch.allclose(opt._rows["w"], w.detach(), atol=1e-5)


def test_rows_are_independent_of_batch_and_compaction(engine):
    """Three images together, one of which leaves early, follow the same path as each alone."""
    cfg = _cfg()
    x, w0 = _data(3, seed=1)
    opt = LatentOptimizer(engine.model, engine.objective, cfg)
    opt.add(_items(3), w0, x)
    opt._rows["budget"][1] = 2                     # row 1 runs out of steps after 2
    done_rows = []
    for _ in range(5):
        result = opt.step()
        done_rows += opt.pop_done(result.done)
    assert [f.item.key for f in done_rows] == ["k1"] and opt.active == 2 and done_rows[0].steps == 2
    for j, steps in ((0, 5), (1, 2), (2, 5)):
        solo = LatentOptimizer(engine.model, engine.objective, cfg)
        solo.add(_items(1, offset=j), w0[j:j + 1], x[j:j + 1])
        for _ in range(steps):
            solo.step()
        got = done_rows[0] if j == 1 else None
        if got is None:
            row = [f.key for f in opt.items].index(f"k{j}")
            assert torch.allclose(opt._rows["w"][row], solo._rows["w"][0], atol=1e-4)
        else:
            assert torch.allclose(got.w, solo._rows["best_w"][0], atol=1e-4)


def test_reaching_the_hinge_stops_a_row_with_patience_zero(engine):
    cfg = _cfg(margin=1.0, patience=0, hinge_slack=0.0)   # cos <= 1 always: private at the first step
    x, w0 = _data(2, seed=2)
    opt = LatentOptimizer(engine.model, engine.objective, cfg)
    opt.add(_items(2), w0, x)
    result = opt.step()
    assert result.done.all()
    finished = opt.pop_done(result.done)
    assert [f.steps for f in finished] == [1, 1] and all(f.private for f in finished) and opt.active == 0
    assert all(torch.equal(f.w, w) for f, w in zip(finished, w0))  # the best code is the first one evaluated


def test_impossible_margin_ends_at_the_budget_not_private(engine):
    cfg = _cfg(margin=-1.0, max_steps=3)
    x, w0 = _data(1, seed=3)
    opt = LatentOptimizer(engine.model, engine.objective, cfg)
    opt.add(_items(1), w0, x)
    finished = []
    for _ in range(3):
        finished += opt.pop_done(opt.step().done)
    assert len(finished) == 1 and not finished[0].private and finished[0].steps == 3
    assert finished[0].cos_id <= finished[0].cos_start   # the fallback code is the least similar one seen


def test_optimization_lowers_the_identity_cosine(engine):
    cfg = _cfg(lr=0.1, max_steps=15)
    x, w0 = _data(2, seed=4)
    opt = LatentOptimizer(engine.model, engine.objective, dataclasses.replace(cfg, lambda_ut=0.0))
    opt.objective.utility, saved = None, opt.objective.utility
    try:
        opt.add(_items(2), w0, x)
        finished = []
        while opt.active:
            finished += opt.pop_done(opt.step().done)
    finally:
        opt.objective.utility = saved
    assert all(f.cos_id < f.cos_start - 1e-3 for f in finished)


def test_mdl_term_is_wired_in_when_its_weight_is_set(tiny_checkpoints, tmp_path):
    """lambda_mdl > 0 loads <preset>/mfm + decoupler and adds the MDL term to the objective."""
    import shutil

    from gmia.checkpoints import save_module
    from gmia.decoupling import Decoupler, save_decoupler
    from gmia.networks import MFMNet

    root = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints, root)
    cfg = anonymize_config("phantom-cxr64", lambda_mdl=1.0, lambda_surrogate=0.0, lambda_ut2=0.0)
    kw = dict(in_channels=1, resolution=32, widths=(8, 16, 16), latent_channels=4, decoder=True, projection_dim=8)
    mfm = MFMNet(**kw)
    save_module(mfm, kw, root / "phantom-cxr64", "mfm", meta={"preset": "phantom-cxr64"})
    with pytest.raises(CheckpointError, match=r"no decoupler in .*--lambda-mdl 0 runs without it"):
        load_engine(cfg, root)  # an MFM without its decoupler: named, and how to go on without the term
    d = mfm.eval().features(torch.rand(1, 1, 64, 64)).shape[1]
    dec = Decoupler(d, 2, margin=0.1, semantic_scale=1.0)
    with torch.no_grad():
        dec.filters.copy_(torch.randn(d, 2))
        dec.patterns.copy_(torch.randn(d, 2))
    save_decoupler(dec, root / "phantom-cxr64")
    eng = load_engine(cfg, root)
    assert [t.name for t in eng.objective.extra] == ["mdl"] and {"mfm", "decoupler"} <= set(eng.checkpoints)
    x = torch.rand(2, 1, 64, 64)
    refs = eng.objective.references(x)
    total, parts = eng.objective.evaluate(torch.rand(2, 1, 64, 64), refs, margin=cfg.margin)
    assert total.shape == parts["mdl"].shape == (2,) and torch.all(parts["mdl"] > 0)


def test_bf16_precision_runs_and_tracks_fp32(engine):
    x, w0 = _data(2, seed=5)
    out = {}
    for precision in ("fp32", "bf16"):
        opt = LatentOptimizer(engine.model, engine.objective, _cfg(precision=precision))
        opt.add(_items(2), w0, x)
        out[precision] = opt.step()
    assert out["bf16"].loss.dtype == torch.float32
    assert torch.allclose(out["bf16"].cos_id, out["fp32"].cos_id, atol=0.05)
