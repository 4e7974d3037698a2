"""Surrogate identities: the latent prior they are drawn from, the term, and a run that uses it."""

import dataclasses
import json

import pytest
import torch

from gmia.anonymization import anonymize_config, anonymize_dataset, load_engine
from gmia.anonymization.surrogate import SurrogateTerm
from gmia.data.datasets import PhantomFolder
from gmia.errors import CheckpointError
from gmia.projection.prior import LatentPrior
from gmia.projection.project import load_aegan


def test_prior_fits_the_codes_and_samples_reproducibly(tiny_checkpoints, tmp_path):
    model = load_aegan(tiny_checkpoints / "phantom-cxr64")
    x = torch.rand(50, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    prior = LatentPrior.fit(model, x, shrinkage=0.0)
    with torch.no_grad():
        w = model.encode(x).double()
    assert prior.shape == tuple(w.shape[1:]) and prior.images == 50
    assert torch.allclose(prior.mu, w.mean(0), atol=1e-6)
    assert torch.allclose(prior.a @ prior.a.T, torch.cov(w.T), atol=1e-5)   # A Aᵀ = Σ
    # one code per seed, the same whatever else is in the batch
    assert torch.equal(prior.sample([7, 8])[1], prior.sample([3, 8])[1])
    assert not torch.equal(prior.sample([7])[0], prior.sample([8])[0])
    prior.save(tmp_path)
    back = LatentPrior.load(tmp_path)
    assert back.shape == prior.shape and torch.allclose(back.sample([5]), prior.sample([5]), atol=1e-5)


def test_missing_prior_names_the_file_and_the_command(tmp_path):
    with pytest.raises(CheckpointError, match="latent-prior.safetensors.*gmia fit-prior --data DIR --checkpoint"):
        LatentPrior.load(tmp_path)


def test_surrogate_term_targets_a_generated_identity_and_its_gradient_pulls_towards_it(tiny_checkpoints):
    engine = load_engine(anonymize_config("phantom-cxr64", lambda_surrogate=1.0, surrogate_cos=1.0),
                         tiny_checkpoints)
    term = next(t for t in engine.objective.extra if t.name == "sur")
    assert isinstance(term, SurrogateTerm)
    x_r = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    refs = engine.objective.references(x_r, [11, 12, 13])
    # the target depends on the seed only, not on the source image or the batch
    assert torch.allclose(refs["sur"][1], engine.objective.references(torch.rand(1, 1, 64, 64), [12])["sur"][0],
                          atol=1e-5)
    # the loss is 0 at the target itself and positive for the source
    targets = term.targets([11, 12, 13])
    assert term.loss(targets, refs["sur"]).max() < 1e-4
    assert (term.loss(x_r, refs["sur"]) > 0).all()
    # its gradient with respect to the latent codes moves the decoded image towards the target identity
    seeds = [11, 12, 13]
    w = engine.model.encode(x_r).detach().requires_grad_(True)
    before = term.loss(engine.model.render(w, seeds), refs["sur"])
    (grad,) = torch.autograd.grad(before.sum(), w)
    with torch.no_grad():
        step = w - 0.01 * grad / grad.norm(dim=1, keepdim=True)
        after = term.loss(engine.model.render(step, seeds), refs["sur"])
    assert (after < before.detach()).all()


def test_run_with_surrogate_is_batch_independent_and_recorded(tmp_path, tiny_checkpoints, phantom_dir):
    base = dataclasses.replace(anonymize_config("phantom-cxr64"), margin=1.0, privacy=None, hinge_slack=0.0,
                               patience=2, max_steps=4, lr=0.05, refine_steps=0, lambda_surrogate=1.0)
    outs = []
    for batch in (2, 5):
        out = tmp_path / f"b{batch}"
        summary = anonymize_dataset(dataclasses.replace(base, batch_size=batch), PhantomFolder(phantom_dir), out,
                                    checkpoints=tiny_checkpoints, progress=False, limit=5, write_linkage=True)
        assert summary["released"] == 5
        link = dict(line.split(",")[::-1] for line in (out / "private" / "linkage.csv").read_text().splitlines()[1:])
        rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        outs.append(sorted(rows, key=lambda r: link[r["pseudonym"]]))  # pseudonyms are keyed per run: by source
    assert [r["cos_id_optimized"] for r in outs[0]] == pytest.approx([r["cos_id_optimized"] for r in outs[1]],
                                                                     abs=1e-4)
    run = json.loads((tmp_path / "b2" / "run.json").read_text())
    assert run["config"]["lambda_surrogate"] == 1.0 and "latent_prior" in run["checkpoints"]


def test_surrogate_without_prior_fails_before_any_work(tiny_checkpoints, tmp_path):
    import shutil

    shutil.copytree(tiny_checkpoints / "phantom-cxr64", tmp_path / "phantom-cxr64")
    (tmp_path / "phantom-cxr64" / "latent-prior.safetensors").unlink()
    with pytest.raises(CheckpointError, match="latent prior.*gmia fit-prior"):
        load_engine(anonymize_config("phantom-cxr64", lambda_surrogate=1.0), tmp_path)
    load_engine(anonymize_config("phantom-cxr64", lambda_surrogate=0.0, redraw=0.0), tmp_path)  # not needed when off


def test_fit_prior_command_writes_a_loadable_prior(tmp_path, tiny_checkpoints, phantom_dir):
    import shutil

    from click.testing import CliRunner

    from gmia.cli import cli

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints / "phantom-cxr64", folder)
    result = CliRunner().invoke(cli, ["fit-prior", "--data", str(phantom_dir), "--checkpoint", str(folder)])
    assert result.exit_code == 0, result.output
    prior = LatentPrior.load(folder)
    assert prior.images == 9 and prior.shape == (load_aegan(folder).w_dim,)   # the toy train split: 3 x 3 images


def test_a_row_that_is_not_private_after_goal_steps_drops_the_surrogate(tiny_checkpoints):
    """The hinge comes first: with an unreachable margin and goal_steps = 0 the codes move exactly as without the
    surrogate term; with a large goal_steps the surrogate changes the trajectory."""
    from gmia.anonymization import Item, LatentOptimizer

    x_r = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    items = [Item(key=f"k{i}", seed=100 + i) for i in range(2)]

    def codes(**kw):
        cfg = dataclasses.replace(anonymize_config("phantom-cxr64"), margin=-1.0, privacy=None, hinge_slack=0.0,
                                  lr=0.05, refine_steps=0, **kw)
        engine = load_engine(cfg, tiny_checkpoints)
        opt = LatentOptimizer(engine.model, engine.objective, cfg)
        opt.add(items, engine.model.encode(x_r).detach(), x_r)
        for _ in range(3):
            opt.step()
        return opt._rows["w"].clone()

    plain = codes(lambda_surrogate=0.0)
    assert torch.allclose(codes(lambda_surrogate=1.0, surrogate_cos=1.0, goal_steps=0), plain, atol=1e-6)
    assert not torch.allclose(codes(lambda_surrogate=1.0, surrogate_cos=1.0, goal_steps=100), plain, atol=1e-4)
