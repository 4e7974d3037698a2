"""The independent finding classifier (ResNet-18) of the utility evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmia.evaluation.classifier import ClassifierConfig, independent_utility, train_classifier

CFG = ClassifierConfig(epochs=1, small_set_steps=40, batch_size=16, lr=3e-3)


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
    blank = x.clone()
    blank[:, :, 2:12, 2:12] = 0.15  # the finding removed: what an anonymizer that drops findings releases
    x_small, y_small = _images(96, 2)  # the anonymized training set: other images than the tested ones
    blank_small = x_small.clone()
    blank_small[:, :, 2:12, 2:12] = 0.15
    out = independent_utility(x_train, y_train, blank, x, y, ["square", "noise"], "cpu", CFG,
                              anon_train=(blank_small, x_small, y_small))
    assert out["per_finding"]["square"]["originals"] > 0.9 and out["per_finding"]["square"]["anonymized"] < 0.7
    assert out["ratio"] < 0.9
    gap = out["train_on_anonymized"]
    assert gap["macro_auroc_trained_on_originals"] > gap["macro_auroc_trained_on_anonymized"] and gap["gap"] > 0.1
