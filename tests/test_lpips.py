"""LPIPS (splatforge.metrics.LPIPS, AlexNet v0.1) with random weights of the right shapes,
checked against a straightforward layer-by-layer torch.nn.functional implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ALEX = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}


def _random_state(seed: int = 0, long_lin_keys: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for idx, (cout, cin, k) in ALEX.items():
        sd[f"features.{idx}.weight"] = (torch.randn(cout, cin, k, k, generator=g)
                                         / (cin * k * k) ** 0.5)
        sd[f"features.{idx}.bias"] = 0.1 * torch.randn(cout, generator=g)
    for i, (cout, _, _) in enumerate(ALEX.values()):
        key = f"lin{i}.model.1.weight" if long_lin_keys else f"lin{i}.weight"
        sd[key] = torch.rand(1, cout, 1, 1, generator=g) / cout
    return sd


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("lpips") / "alex.pth"
    torch.save(_random_state(), p)
    return p


@pytest.fixture(scope="module")
def model(weights):
    from splatforge.metrics import LPIPS

    return LPIPS.from_file(weights)


def _reference(sd: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS of [B, 3, H, W] images in [0, 1], written out layer by layer in float64."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    w = {k: v.double() for k, v in sd.items()}

    def taps(img):
        h = ((img.double() * 2 - 1) - shift) / scale
        h = F.relu(F.conv2d(h, w["features.0.weight"], w["features.0.bias"], stride=4, padding=2))
        t1 = h
        h = F.max_pool2d(h, 3, 2)
        h = F.relu(F.conv2d(h, w["features.3.weight"], w["features.3.bias"], padding=2))
        t2 = h
        h = F.max_pool2d(h, 3, 2)
        h = F.relu(F.conv2d(h, w["features.6.weight"], w["features.6.bias"], padding=1))
        t3 = h
        h = F.relu(F.conv2d(h, w["features.8.weight"], w["features.8.bias"], padding=1))
        t4 = h
        h = F.relu(F.conv2d(h, w["features.10.weight"], w["features.10.bias"], padding=1))
        t5 = h
        return [t1, t2, t3, t4, t5]

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for i, (a, b) in enumerate(zip(taps(x), taps(y))):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        d = ((na - nb) ** 2 * w[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)).sum(1)
        total += d.mean(dim=(1, 2))
    return total


def test_identical_images_score_zero(model):
    x = torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(1))
    assert float(model(x, x)) == 0.0
    assert model(x, x).shape == ()


def test_positive_and_symmetric(model):
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 36, 44, generator=g), torch.rand(2, 3, 36, 44, generator=g)
    d = model(x, y)
    assert d.shape == (2,) and bool((d > 0).all())
    torch.testing.assert_close(d, model(y, x), rtol=1e-6, atol=1e-7)
    # channel-last [H, W, 3] gives the same as [1, 3, H, W]
    with torch.no_grad():
        hw3 = model(x[0].permute(1, 2, 0), y[0].permute(1, 2, 0))
    assert float(hw3) == pytest.approx(float(d[0]), rel=1e-6)


def test_matches_layer_by_layer_reference(model):
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 33, 35, generator=g), torch.rand(2, 3, 33, 35, generator=g)
    ref = _reference(_random_state(), x, y)
    got = model(x, y).double()
    assert float(ref.min()) > 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_short_lin_keys_accepted(tmp_path, model):
    from splatforge.metrics import LPIPS

    p = tmp_path / "short.pth"
    torch.save(_random_state(long_lin_keys=False), p)
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    assert float(LPIPS.from_file(p)(x, y)) == pytest.approx(float(model(x, y)), rel=1e-6)


def test_bad_weights_files(tmp_path):
    from splatforge.errors import InputError
    from splatforge.metrics import LPIPS

    with pytest.raises(InputError, match="not found"):
        LPIPS.from_file(tmp_path / "nope.pth")
    sd = _random_state()
    del sd["lin3.model.1.weight"], sd["features.6.bias"]
    p = tmp_path / "partial.pth"
    torch.save(sd, p)
    with pytest.raises(InputError, match="lin3.weight") as e:
        LPIPS.from_file(p)
    assert "partial.pth" in str(e.value) and "features.6.bias" in str(e.value)
    sd = _random_state()
    sd["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(sd, p)
    with pytest.raises(InputError, match="features.0.weight"):
        LPIPS.from_file(p)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"x")
    with pytest.raises(InputError, match="junk.pth"):
        LPIPS.from_file(junk)


def test_too_small_image(model):
    x = torch.rand(20, 40, 3)
    with pytest.raises(ValueError, match="at least"):
        model(x, x)
