import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from gmia.data.phantoms import write
from gmia.projection import AEGAN, project_dataset, project_images
from gmia.projection.cli import aegan, project

TINY = dict(img_resolution=16, img_channels=1, w_dim=32, channel_base=256, channel_max=16)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return AEGAN(**TINY).eval().requires_grad_(False)


def test_refinement_lowers_the_loss_and_is_per_image(model, perceptual):
    x = torch.rand(4, 1, 16, 16)
    out = project_images(model, x, refine_steps=15, perceptual=perceptual)
    assert out["w"].shape == (4, 32) and out["x_hat"].shape == x.shape
    assert (out["loss"] <= out["loss_encoder"]).all() and out["loss"].mean() < 0.9 * out["loss_encoder"].mean()
    assert set(out["metrics"]) == {"psnr", "ssim", "tiny"}
    one = project_images(model, x[2:3], refine_steps=15, perceptual=perceptual)
    assert torch.allclose(one["w"][0], out["w"][2], atol=1e-5)  # batching does not change an image's result


def test_w_plus_refinement_of_a_w_model_with_the_ssim_term(model, tiny_data, tmp_path):
    x = torch.rand(3, 1, 16, 16)
    out = project_images(model, x, refine_steps=15, lambda_perc=0.0, lambda_ssim=1.0, refine_space="w+")
    assert out["w_encoder"].shape == (3, 32) and out["w"].shape == (3, model.num_ws, 32)
    assert (out["loss"] <= out["loss_encoder"]).all() and (out["loss"] < out["loss_encoder"]).any()
    layers_differ = (out["w"] - out["w"][:, :1]).abs().amax(dim=(1, 2)) > 0
    assert layers_differ.all()  # each layer got its own code
    with pytest.raises(ValueError, match="refine_space"):
        project_images(model, x, refine_steps=1, refine_space="z")
    project_dataset(model, tiny_data, tmp_path, refine_steps=2, lambda_ssim=1.0, refine_space="w+", progress=False)
    settings = json.loads((tmp_path / "metrics.json").read_text())["settings"]
    assert settings["latent"] == "w+" and settings["lambda_ssim"] == 1.0
    with safe_open(str(tmp_path / "latents.safetensors"), framework="pt") as f:
        assert f.metadata()["latent"] == "w+" and f.get_tensor("w").shape == (len(tiny_data), model.num_ws, 32)


def test_encoder_fidelity_is_the_mean_over_every_image_in_any_batching(model, tiny_data):
    from gmia.projection.project import encoder_fidelity

    x = torch.stack([tiny_data[i]["image"] for i in range(len(tiny_data))])
    per_image = project_images(model, x)["metrics_encoder"]
    for batch_size in (2, len(tiny_data)):
        got = encoder_fidelity(model, tiny_data, batch_size)
        assert got["ssim"] == pytest.approx(float(per_image["ssim"].mean()), abs=1e-5)
        assert got["psnr"] == pytest.approx(float(per_image["psnr"].mean()), abs=1e-4)


def test_project_dataset_writes_latents_reconstructions_metrics(model, tiny_data, tmp_path):
    mean = project_dataset(model, tiny_data, tmp_path, refine_steps=3, batch_size=5, progress=False)
    with safe_open(str(tmp_path / "latents.safetensors"), framework="pt") as f:
        keys = json.loads(f.metadata()["keys"])
        assert f.get_tensor("w").shape == (len(tiny_data), 32) and keys == tiny_data.keys()
    assert all((tmp_path / "reconstructions" / k).with_suffix(".png").is_file() for k in keys)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["per_image"]) == len(tiny_data)
    assert {"psnr", "ssim", "psnr_encoder", "ssim_encoder"} <= set(metrics["mean"]) and mean == metrics["mean"]


def test_cli_train_then_project(tiny_set, tmp_path):
    data = write(tiny_set, tmp_path / "data")
    runner = CliRunner()
    res = runner.invoke(aegan, ["--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                                "--kimg", "0.004", "--dry-run"])
    assert res.exit_code == 0 and json.loads(res.output)["config"]["kimg"] == 0.004
    res = runner.invoke(aegan, ["--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                                "--kimg", "0.004", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "done: 0.004 kimg" in res.output
    res = runner.invoke(project, ["--input", str(data), "--split", "test", "--out", str(tmp_path / "proj"),
                                  "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--refine-steps", "2",
                                  "--perceptual", "none", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "projected 3 images" in res.output
    assert json.loads((tmp_path / "proj" / "metrics.json").read_text())["n"] == 3
