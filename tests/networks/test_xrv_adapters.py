"""torchxrayvision adapters, with tiny randomly initialised stand-ins saved to local files (no network)."""

import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

from gmia import networks
from gmia.errors import CheckpointError
from gmia.networks import xrv as adapters

DENSE = dict(growth_rate=4, block_config=(1, 1), num_init_features=8, num_classes=18, resolution=64)
AE = dict(layers=(1, 1, 1, 1), resolution=64)


@pytest.fixture(scope="module")
def xrv():
    return adapters._xrv()


@pytest.fixture(scope="module")
def dense_standin(xrv):
    torch.manual_seed(0)
    return xrv.models.DenseNet(growth_rate=4, block_config=(1, 1), num_init_features=8, num_classes=18).eval()


@pytest.mark.parametrize("fmt", ["release_pickle", "state_dict", "safetensors"])
def test_densenet_utility_from_local_file(dense_standin, tmp_path, fmt):
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "release_pickle":  # torchxrayvision release files pickle the whole module
        torch.save(dense_standin, path)
    elif fmt == "state_dict":
        torch.save(dense_standin.state_dict(), path)
    else:
        save_file(dense_standin.state_dict(), str(path))
    net = adapters.XRVUtility.from_file(path, **DENSE)
    assert net.is_frozen and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 1, 80, 80, requires_grad=True)
    f = net.features(x)
    assert f.shape == (2, net.feature_dim) and net.logits(x).shape == (2, 18)
    f.sum().backward()
    assert x.grad.abs().sum() > 0
    # same numbers as torchxrayvision's own forward on its [-1024, 1024] scale
    ref = dense_standin.features2(torch.nn.functional.interpolate(x.detach(), size=(64, 64), mode="bilinear",
                                                                  antialias=True) * 2048 - 1024)
    assert torch.allclose(f, ref, atol=1e-4)


def test_autoencoder_mfm_from_local_file(xrv, tmp_path):
    ae = xrv.autoencoders._ResNetAE(xrv.autoencoders.Bottleneck, xrv.autoencoders.DeconvBottleneck, [1, 1, 1, 1], 1)
    torch.save(ae.state_dict(), tmp_path / "ae.pt")  # the 101-elastic release is a plain state dict
    mfm = adapters.XRVAutoencoder.from_file(tmp_path / "ae.pt", **AE)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)  # RGB in: converted to grey inside
    f = mfm.features(x)
    assert f.ndim == 2 and f.shape[0] == 2
    f.sum().backward()
    assert x.grad.abs().sum() > 0


def test_missing_file_is_a_clear_error_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found at .*missing\.pt.*allow_download=True"):
        adapters.XRVUtility.from_file(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="wget https://"):
        adapters.XRVAutoencoder.from_file(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be opened safely"):
        adapters.XRVUtility.from_file(path, **DENSE)
    assert "never run" not in capsys.readouterr().out


def test_wrong_architecture_is_reported(dense_standin, tmp_path):
    torch.save(dense_standin.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        adapters.XRVUtility.from_file(tmp_path / "w.pt", **{**DENSE, "growth_rate": 8})


def test_import_then_load_by_preset(dense_standin, tmp_path):
    torch.save(dense_standin, tmp_path / "w.pt")
    adapters.import_xrv("utility", tmp_path / "w.pt", tmp_path / "ck" / "gmia-cxr256", **DENSE)
    net = networks.load("gmia-cxr256", "utility", root=tmp_path / "ck")
    assert isinstance(net, adapters.XRVUtility) and net.is_frozen
    x = torch.rand(1, 1, 256, 256)
    assert torch.allclose(net.features(x), adapters.XRVUtility.from_file(tmp_path / "w.pt", **DENSE).features(x))


def test_importing_torchxrayvision_leaves_warning_filters_alone(xrv):
    before = list(warnings.filters)
    adapters._xrv()
    assert list(warnings.filters) == before
