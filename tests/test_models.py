"""evaluators.models: timm presets built with a candidate activation."""
from __future__ import annotations

import pytest
import torch

import spaces
from evaluators import build_model, list_models
from evaluators.models import get_preset

CRRELU = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])


def _acts(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


def test_registry_lists_the_presets_and_filters_by_glob():
    assert list_models() == ["deit-tiny", "resnet-tiny", "vit-nano", "vit-tiny"]
    assert list_models("vit-*") == ["vit-nano", "vit-tiny"]


def test_unknown_model_is_a_value_error_listing_valid_names():
    with pytest.raises(ValueError, match="unknown model 'vit-huge'; valid models: deit-tiny, resnet-tiny, vit-nano"):
        build_model("vit-huge", CRRELU.module_class())


def test_each_vit_mlp_has_its_own_activation_with_its_own_coefficient():
    cls = CRRELU.module_class()
    model = build_model("vit-nano", cls, in_chans=1, num_classes=10, img_size=28)
    acts = _acts(model, cls)
    assert len(acts) == 4  # depth 4: one per MLP
    assert len({id(a.eps) for a in acts}) == 4
    assert all(a.eps.item() == pytest.approx(0.01) for a in acts)
    model(torch.randn(3, 1, 28, 28)).sum().backward()
    assert all(a.eps.grad is not None and a.eps.grad.abs().item() > 0 for a in acts)


def test_vit_nano_takes_32_pixel_three_channel_inputs_too():
    model = build_model("vit-nano", CRRELU.module_class(), in_chans=3, num_classes=100, img_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_vit_tiny_has_the_paper_dimensions_on_32_pixel_inputs():
    cls = CRRELU.module_class()
    model = build_model("vit-tiny", cls, in_chans=1, num_classes=10)
    assert get_preset("vit-tiny").img_size == 32
    assert model.embed_dim == 192 and len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 3
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.num_patches == 64
    assert len(_acts(model, cls)) == 12
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_deit_tiny_uses_stochastic_depth_and_label_smoothing_recipe():
    model = build_model("deit-tiny", CRRELU.module_class(), in_chans=3, num_classes=10)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model.cls_token is not None
    assert get_preset("deit-tiny").recipe == {"label_smoothing": 0.1}


def test_resnet_tiny_uses_the_candidate_in_every_block():
    cls = CRRELU.module_class()
    model = build_model("resnet-tiny", cls, in_chans=1, num_classes=10, img_size=28)
    acts = _acts(model, cls)
    assert len(acts) == 11  # 2 in the deep stem, 1 after it, 2 per BasicBlock x 4
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(a.eps.grad is not None for a in acts)
