"""Importing the published method's E_id (insightface IResNet) and E_ut (torchvision-named DenseNet with its head)
state dicts: the imported network computes what the original computes. The originals are small reference
modules written here from the published descriptions, with those projects' parameter names."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmia import networks
from gmia.errors import CheckpointError
from gmia.networks.published import import_weights


class _IBlock(nn.Module):  # insightface IBasicBlock: BN-conv-BN-PReLU-conv(stride)-BN + downsample
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2, self.prelu = nn.BatchNorm2d(cout), nn.PReLU(cout)
        self.conv2, self.bn3 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x)))))) + self.downsample(x)


class _IResNet(nn.Module):  # insightface layout: conv1/bn1/prelu, layer1..N, bn2, fc, features; raw [0, 1] in
    def __init__(self, widths=(8, 16), res=32, emb=16):
        super().__init__()
        self.conv1, self.bn1, self.prelu = nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8)
        cin = 8
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(_IBlock(cin, w, 2)))
            cin = w
        self.n = len(widths)
        self.bn2 = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin * (res // 2 ** self.n) ** 2, emb)
        self.features = nn.BatchNorm1d(emb)

    def forward(self, x):
        h = self.prelu(self.bn1(self.conv1(x)))
        for i in range(self.n):
            h = getattr(self, f"layer{i + 1}")(h)
        return self.features(self.fc(self.bn2(h).flatten(1)))


class _DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size=2):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv2(F.elu(self.norm2(self.conv1(F.elu(self.norm1(x))))))], 1)


class _Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.elu(self.norm(x))), 2)


class _DenseUtility(nn.Module):  # torchvision DenseNet names, ELU, the published 1024 -> 512 -> BN -> C head
    def __init__(self, growth=4, blocks=(2, 2), init=8, feat=12, classes=3):
        super().__init__()
        layers, c = OrderedDict(conv0=nn.Conv2d(3, init, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(init)), init
        for b, n in enumerate(blocks):
            layers[f"denseblock{b + 1}"] = nn.Sequential(OrderedDict(
                (f"denselayer{k + 1}", _DenseLayer(c + k * growth, growth)) for k in range(n)))
            c += n * growth
            if b < len(blocks) - 1:
                layers[f"transition{b + 1}"] = _Transition(c, c // 2)
                c //= 2
        layers["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(layers)
        self.fc0, self.bn0, self.fc1 = nn.Linear(c, feat), nn.BatchNorm1d(feat), nn.Linear(feat, classes)

    def utility(self, x):
        x = (x.expand(-1, 3, -1, -1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
            torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        f = self.features.norm0(self.features.conv0(x))
        f = F.max_pool2d(F.elu(f), 3, 2, 1)
        for name, m in list(self.features.named_children())[2:]:
            f = m(f)
        return F.elu(self.fc0(F.relu(f).mean((2, 3))))


def _randomize(net):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, b in net.named_buffers():
            if "running_mean" in name:
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif "running_var" in name:
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def test_insightface_iresnet_imports_as_the_same_function(tmp_path):
    ref = _randomize(_IResNet())
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "r50.pth")
    card = import_weights("identity", tmp_path / "r50.pth", tmp_path / "ckpt")
    net = networks.load("gmia-cxr256", "identity", tmp_path / "ckpt")
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.embed(x), F.normalize(ref(x), dim=1), atol=1e-5)
    assert '"imported"' in card.read_text() and "insightface" in card.read_text()


def test_published_densenet_imports_as_the_same_function(tmp_path):
    ref = _randomize(_DenseUtility())
    torch.save(ref.state_dict(), tmp_path / "ut.pth")
    import_weights("utility", tmp_path / "ut.pth", tmp_path / "ckpt", finding_names=("a", "b", "c"))
    net = networks.load("gmia-cxr256", "utility", tmp_path / "ckpt")
    x = torch.rand(3, 1, 256, 256)
    with torch.no_grad():
        feats = ref.utility(x)
        assert torch.allclose(net.features(x), feats, atol=1e-5)
        assert torch.allclose(net.logits(x), ref.fc1(ref.bn0(feats)), atol=1e-5)
    assert net.finding_names == ("a", "b", "c")


def test_errors_name_the_key_and_refuse_pickled_code(tmp_path):
    state = _IResNet().state_dict()
    broken = {k: v for k, v in state.items() if k != "layer1.0.bn2.weight"}
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth: not an insightface IResNet.*missing stages\.0\.0\.bn2\."):
        import_weights("identity", tmp_path / "missing.pth", tmp_path / "c1")
    torch.save({**state, "layer1.0.prelu.weight": torch.zeros(3)}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"1 mis-shaped; stages\.0\.0\.prelu\.weight: file \(3,\)"):
        import_weights("identity", tmp_path / "shape.pth", tmp_path / "c2")
    torch.save(_IResNet(), tmp_path / "module.pth")  # a pickled module: its classes would have to be imported
    with pytest.raises(CheckpointError, match="cannot be read as weights only"):
        import_weights("identity", tmp_path / "module.pth", tmp_path / "c3")
    torch.save(_DenseUtility().state_dict(), tmp_path / "ut.pth")
    with pytest.raises(CheckpointError, match="3 outputs but 2 finding names"):
        import_weights("utility", tmp_path / "ut.pth", tmp_path / "c4", finding_names=("a", "b"))
