"""The independent finding classifier (ResNet-18) of the utility evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmia.evaluation.classifier import ClassifierConfig, independent_utility, train_classifier

CFG = ClassifierConfig(epochs=1, small_set_steps=40, batch_size=16, lr=3e-3, seeds=2, small_set_seeds=2)


def _images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A bright square in the top-left corner when finding 0 is present; finding 1 is noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.3
    y = torch.randint(0, 2, (n, 2), generator=g).float().numpy()
    x[torch.as_tensor(y[:, 0] > 0), :, 2:12, 2:12] += 0.7
    return x, y


@pytest.mark.slow
def test_a_finding_it_can_see_is_found_and_a_blank_copy_is_not():
    x_train, y_train = _images(256, 0)
    x, y = _images(64, 1)
    net = train_classifier(x_train, y_train, ClassifierConfig(epochs=3, batch_size=16, lr=3e-3), "cpu")
    with torch.no_grad():
        scores = net(x * 2 - 1).numpy()
    from gmia.metrics import per_finding_auroc

    assert per_finding_auroc(y, scores)[0] > 0.9
    g = torch.Generator().manual_seed(3)

    def blanked(images):  # the finding removed, as background: what an anonymizer that drops findings releases
        out = images.clone()
        out[:, :, 2:12, 2:12] = torch.rand(len(out), 1, 10, 10, generator=g) * 0.3
        return out

    blank = blanked(x)
    x_small, y_small = _images(96, 2)  # the anonymized training set: other images than the tested ones
    # its releases show a square where another record had one: the label is no longer in the image (in-distribution,
    # so a network trained on them sits near chance on the originals instead of answering at random)
    blank_small, _ = _images(96, 4)
    # the stage-1 arm given the originals themselves: same seeds, same images, so exactly the originals' reading
    out = independent_utility(x_train, y_train, blank, x, y, ["square", "noise"], "cpu", CFG,
                              anon_train=(blank_small, x_small, y_small), train_arms={"reconstructions": x_small.clone()}, x_rec=x.clone())
    assert out["per_finding"]["square"]["originals"] > 0.9 and out["per_finding"]["square"]["anonymized"] < 0.7
    assert out["ratio"] < 0.9 and len(out["ratio_per_seed"]) == CFG.seeds
    assert out["lowest_finding"] == "square" and out["lowest_finding_ratio"] < 0.7
    assert out["ratio_reconstructions"] == pytest.approx(1.0)  # "reconstructions" that are the sources themselves
    gap = out["train_on_anonymized"]
    assert gap["macro_auroc_trained_on_originals"] > gap["macro_auroc_trained_on_anonymized"] and gap["gap"] > 0.1
    assert len(gap["gap_per_seed"]) == CFG.small_set_seeds == len(set(gap["seeds"]))
    assert gap["gap"] == pytest.approx(np.mean(gap["gap_per_seed"]))
    assert gap["gap_reconstructions"] == pytest.approx(0.0, abs=1e-6)
    # the gap is the square's, the finding the releases no longer show
    per_finding = gap["gap_per_finding"]
    assert per_finding["square"] > 0.2 and per_finding["square"] > per_finding["noise"]
    assert gap["gap_per_finding_reconstructions"] == pytest.approx({"square": 0.0, "noise": 0.0}, abs=1e-6)
