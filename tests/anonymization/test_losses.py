import pytest
import torch

from gmia.anonymization.losses import identity_cosine, identity_hinge, utility_distance
from gmia.errors import InputError


def test_hinge_is_zero_below_the_margin_and_linear_above():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])       # cos 1, 0, -1
    assert torch.allclose(identity_cosine(e, r), torch.tensor([1.0, 0.0, -1.0]))
    assert torch.allclose(identity_hinge(e, r, 0.0), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(identity_hinge(e, r, -0.5), torch.tensor([1.5, 0.5, 0.0]))
    per_row = torch.tensor([0.5, -0.5, -2.0])                     # a margin per row
    assert torch.allclose(identity_hinge(e, r, per_row), torch.tensor([0.5, 0.5, 1.0]))


def test_utility_distance_forms():
    a, b = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    assert torch.allclose(utility_distance(a, b, "l2"), torch.tensor([5.0]))
    assert torch.allclose(utility_distance(a, b, "mse"), torch.tensor([12.5]))
    with pytest.raises(InputError, match="'l2', 'mse' or 'findings'"):
        utility_distance(a, b, "l1")
    with pytest.raises(InputError, match="shapes differ"):
        utility_distance(a, torch.zeros(1, 3))


def test_l2_gradient_is_finite_at_zero_distance():
    a = torch.zeros(2, 4, requires_grad=True)
    utility_distance(a, torch.zeros(2, 4), "l2").sum().backward()
    assert torch.isfinite(a.grad).all()


def test_objective_is_per_image_and_differentiable(tiny_checkpoints):
    from gmia.anonymization import anonymize_config, load_engine

    engine = load_engine(anonymize_config("phantom-cxr64", margin=-1.0, lambda_surrogate=0.0, lambda_ut2=0.0),
                         tiny_checkpoints)
    x_r = torch.rand(3, 1, 64, 64)
    refs = engine.objective.references(x_r)
    x_a = torch.rand(3, 1, 64, 64, requires_grad=True)
    total, parts = engine.objective.evaluate(x_a, refs, margin=-1.0)
    assert total.shape == parts["cos_id"].shape == parts["ut"].shape == (3,)
    # with m = -1 the hinge is cos + 1 and the total adds the L2 utility distance
    assert torch.allclose(total, parts["cos_id"] + 1 + parts["ut"], atol=1e-5)
    total[1].backward()
    assert x_a.grad[1].abs().sum() > 0 and x_a.grad[0].abs().sum() == 0 and x_a.grad[2].abs().sum() == 0
    same, parts_same = engine.objective.evaluate(x_r, refs, margin=-1.0)
    assert torch.allclose(parts_same["cos_id"], torch.ones(3), atol=1e-5)
    assert parts_same["ut"].max() < 1e-3


def test_soft_dice_distance_on_binary_maps():
    from gmia.anonymization.losses import soft_dice_distance

    a = torch.zeros(3, 1, 8, 8)
    a[0, :, :4] = 1          # a lesion
    a[1, :, 4:] = 1          # another lesion
    b = a.clone()
    b[1] = 0
    b[1, :, :4] = 1          # row 1: the lesion moved to the other half
    d = soft_dice_distance(a, b)
    assert d.shape == (3,)
    assert d[0] == 0 and d[2] == 0            # same lesion; no lesion on either side
    assert d[1] > 0.95                         # disjoint lesions


def test_lesion_term_needs_a_segmentation_head_and_is_zero_on_the_source():
    from gmia.anonymization.losses import LesionTerm
    from gmia.networks import UtilityNet

    from tests.conftest import TINY_CKPT

    kw = TINY_CKPT["utility"][1]
    with pytest.raises(InputError, match="segmentation head"):
        LesionTerm(UtilityNet(**kw).frozen())
    torch.manual_seed(0)
    term = LesionTerm(UtilityNet(**kw, segment=True).frozen())
    x_r = torch.rand(2, 1, 64, 64)
    ref = term.reference(x_r)
    assert ref.shape == (2, 1, 64, 64)
    same, other = term.loss(x_r, ref), term.loss(torch.rand(2, 1, 64, 64), ref)
    assert same.shape == (2,) and (same < other).all()


def test_masked_pixel_distance_counts_only_the_region():
    from gmia.anonymization.losses import masked_pixel_distance

    x_r = torch.zeros(3, 1, 8, 8)
    region = torch.zeros(3, 1, 8, 8)
    region[:, :, :4] = 1                       # the top half is where the findings are
    x_a = x_r.clone()
    x_a[0, :, 4:] = 1                          # row 0: changed outside the region only
    x_a[1, :, :4] = 0.5                        # row 1: changed inside it
    x_a[2] = 1                                 # row 2: changed everywhere, but its region is empty
    d = masked_pixel_distance(x_a, x_r, region * torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1, 1))
    assert d[0] < 1e-5 and d[2] < 1e-5
    assert d[1] == pytest.approx(0.5 * (32 / 33) ** 0.5, rel=1e-4)   # RMS 0.5 over 32 pixels, +1 in the count


def test_finding_place_term_keeps_the_pixels_where_e_ut_sees_findings():
    from gmia.anonymization.losses import FindingPlaceTerm
    from gmia.networks import UtilityNet

    from tests.conftest import TINY_CKPT

    kw = TINY_CKPT["utility"][1]
    torch.manual_seed(0)
    net = UtilityNet(**kw, finding_names=tuple(f"f{i}" for i in range(kw["num_findings"]))).frozen()
    x_r = torch.rand(2, 1, 64, 64)
    cam = net.finding_map(x_r, [0, 1])
    assert cam.shape == (2, 1, 64, 64) and cam.min() >= 0
    # at most the probability of the likeliest of the chosen findings, and reached at the map's peak
    p = torch.sigmoid(net.logits(x_r)[:, [0, 1]]).amax(1)
    assert torch.allclose(cam.flatten(1).amax(1), p, atol=1e-5)
    with pytest.raises(InputError, match="not findings of this utility network"):
        FindingPlaceTerm(net, 1.0, ("no_such_finding",))
    term = FindingPlaceTerm(net, 1.0, ("f0", "f1"))
    ref = term.reference(x_r)
    assert ref.shape == (2, 2, 64, 64)
    x_a = x_r.clone().requires_grad_(True)
    same = term.loss(x_a, ref)
    assert same.max() < 1e-4
    moved = x_r + 0.2 * torch.randn_like(x_r)
    assert (term.loss(moved, ref) > 0.05).all()
    # pixels where the map is zero do not count
    outside = x_r.clone()
    outside[cam == 0] += 0.5
    assert torch.allclose(term.loss(outside, ref), same, atol=1e-4)


def test_the_engine_adds_the_finding_place_term_when_asked(tiny_checkpoints):
    from gmia.anonymization import anonymize_config, load_engine

    engine = load_engine(anonymize_config("phantom-cxr64", margin=-1.0, lambda_surrogate=0.0, lambda_place=2.0,
                                          lambda_ut2=0.0),
                         tiny_checkpoints)
    x_r = torch.rand(2, 1, 64, 64)
    refs = engine.objective.references(x_r)
    total, parts = engine.objective.evaluate((x_r + 0.1).clamp(0, 1), refs, margin=-1.0)
    assert refs["place"].shape == (2, 2, 64, 64) and parts["place"].shape == (2,)
    assert torch.allclose(total, parts["cos_id"] + 1 + parts["ut"] + 2.0 * parts["place"], atol=1e-5)


def test_a_jittered_utility_term_reads_each_step_under_its_own_shift():
    from gmia.anonymization.losses import UtilityTerm, jitter_shifts

    shifts = jitter_shifts(1)
    assert len(shifts) == 9 and shifts[0].tolist() == [0, 0] and len({tuple(s.tolist()) for s in shifts}) == 9

    class Rows:  # a "network" whose features are the image's rows: a shift moves them
        def features(self, x):
            return x.mean(dim=(1, 3))

    term = UtilityTerm(Rows(), jitter=1)
    x_r = torch.rand(2, 1, 16, 16)
    ref = term.reference(x_r)
    assert ref.shape == (2, 9, 16)
    # the source matches itself under every shift, and its unshifted reading is view 0 (no steps: one pass)
    for step in range(9):
        assert term.loss(x_r, ref, steps=torch.tensor([step, step + 9])).max() < 1e-3
    assert torch.allclose(ref[:, 0], Rows().features(x_r))
    # view (0, 1) reads the image one row down, the border row repeated
    rows = Rows().features(x_r)
    down = next(i for i, s in enumerate(shifts.tolist()) if s == [0, 1])
    assert torch.allclose(ref[:, down, 1:], rows[:, :-1], atol=1e-5) and torch.allclose(ref[:, down, 0], rows[:, 0])
    # each row reads its own step's view of x_A against the same view of its source
    x_a = torch.rand(2, 1, 16, 16)
    got = term.loss(x_a, ref, steps=torch.tensor([0, down]))
    a_rows = Rows().features(x_a)
    want = torch.stack([(a_rows[0] - rows[0]).norm(),
                        (torch.cat([a_rows[1, :1], a_rows[1, :-1]]) - torch.cat([rows[1, :1], rows[1, :-1]])).norm()])
    assert torch.allclose(got, want, atol=1e-4)


def test_the_engine_jitters_e_ut_by_the_rows_steps_when_asked(tiny_checkpoints):
    from gmia.anonymization import anonymize_config, load_engine

    engine = load_engine(anonymize_config("phantom-cxr64", margin=-1.0, lambda_surrogate=0.0, utility_jitter=1),
                         tiny_checkpoints)
    x_r = torch.rand(2, 1, 64, 64)
    refs = engine.objective.references(x_r)
    assert refs["ut"].shape[:2] == (2, 9)  # the source under each of the nine shifts
    x_a = (x_r + 0.2 * torch.rand_like(x_r)).clamp(0, 1)
    by_step = [engine.objective.evaluate(x_a, refs, margin=-1.0, steps=torch.tensor([s, s]))[1]["ut"]
               for s in (0, 4, 9)]
    assert torch.allclose(by_step[0], by_step[2]) and not torch.allclose(by_step[0], by_step[1])


def test_the_second_utility_network_is_a_term_of_its_own_when_asked(tmp_path):
    from gmia.anonymization import anonymize_config, load_engine
    from gmia.errors import CheckpointError
    from tests.conftest import save_tiny_checkpoints

    root = save_tiny_checkpoints(tmp_path, roles=("aegan", "identity", "utility"))
    cfg = anonymize_config("phantom-cxr64", margin=-1.0, lambda_surrogate=0.0, lambda_ut2=0.5)
    assert all(anonymize_config(p).lambda_ut2 > 0 for p in ("phantom-cxr64", "phantom-face64"))
    assert anonymize_config("phantom-face64", speed="fast").lambda_ut2 == 0
    with pytest.raises(CheckpointError, match=r"utility2\.safetensors.*gmia train utility2"):
        load_engine(cfg, root)
    save_tiny_checkpoints(root, roles=("utility2",))
    engine = load_engine(cfg, root)
    second = [t for t in engine.objective.extra if t.name == "ut2"]
    assert len(second) == 1 and second[0].weight == 0.5 and second[0].net is not engine.e_ut
    assert "utility2" in engine.checkpoints and "ut2" not in [t.name for t in load_engine(
        anonymize_config("phantom-cxr64", margin=-1.0, lambda_surrogate=0.0, lambda_ut2=0.0), root).objective.extra]
    x_r = torch.rand(3, 1, 64, 64)
    refs = engine.objective.references(x_r)
    total, parts = engine.objective.evaluate(x_r, refs, margin=-1.0)
    assert parts["ut2"].shape == (3,) and parts["ut2"].max() < 1e-4      # the source is at distance 0 from itself
    x_a = (x_r + 0.3 * torch.rand_like(x_r)).clamp(0, 1)
    total_a, parts_a = engine.objective.evaluate(x_a, refs, margin=-1.0)
    assert (parts_a["ut2"] > 1e-3).all()
    assert torch.allclose(total_a - 0.5 * parts_a["ut2"],
                          engine.objective.identity.weight * parts_a["hinge"] + parts_a["ut"], atol=1e-5)
