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


def _params(module):
    return sum(p.numel() for p in module.parameters())


def test_registry_lists_the_presets_and_filters_by_glob():
    assert list_models() == ["deit-tiny", "gpt-nano", "gpt-small", "resnet-tiny", "vit-nano", "vit-tiny"]
    assert list_models("vit-*") == ["vit-nano", "vit-tiny"]
    assert [get_preset(m).kind for m in list_models("gpt-*")] == ["text", "text"]
    assert {get_preset(m).kind for m in list_models() if not m.startswith("gpt-")} == {"image"}


def test_unknown_model_is_a_value_error_listing_valid_names():
    with pytest.raises(ValueError, match="unknown model 'vit-huge'; valid models: deit-tiny, gpt-nano, gpt-small, "
                                         "resnet-tiny, vit-nano"):
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


# ---- gated MLPs (mlp="glu") --------------------------------------------------------

@pytest.mark.parametrize("name, hidden, glu_hidden", [("vit-nano", 128, 85), ("vit-tiny", 768, 512)])
def test_vit_glu_gates_with_the_candidate_at_two_thirds_width_and_matches_the_plain_parameter_count(
        name, hidden, glu_hidden):
    cls = CRRELU.module_class()
    plain = build_model(name, cls, in_chans=1, num_classes=10)
    glu = build_model(name, cls, in_chans=1, num_classes=10, mlp="glu")
    p_mlp, g_mlp = plain.blocks[0].mlp, glu.blocks[0].mlp
    assert p_mlp.fc1.out_features == hidden
    assert g_mlp.fc1_g.out_features == g_mlp.fc1_x.out_features == g_mlp.fc2.in_features == glu_hidden
    assert isinstance(g_mlp.act, cls) and len(_acts(glu, cls)) == len(glu.blocks)
    # 3 d h' = 2 d h weights; the bias vectors are what is left, less than one hidden unit (3d + 2) per MLP
    d = glu.embed_dim
    assert abs(_params(g_mlp) - _params(p_mlp)) < 3 * d + 2
    assert abs(_params(glu) - _params(plain)) < len(glu.blocks) * (3 * d + 2)
    assert _params(glu) == pytest.approx(_params(plain), rel=1e-3)


def test_vit_glu_computes_fc2_of_the_candidate_gate_times_the_linear_branch():
    cls = CRRELU.module_class()
    mlp = build_model("vit-nano", cls, mlp="glu").blocks[1].mlp
    x = torch.randn(2, 5, 64)
    expected = mlp.fc2(mlp.act(mlp.fc1_g(x)) * mlp.fc1_x(x))
    torch.testing.assert_close(mlp(x), expected)
    relu_part = torch.relu(mlp.fc1_g(x)) + 0.01 * mlp.fc1_g(x) * torch.exp(-mlp.fc1_g(x) ** 2 / 2)
    torch.testing.assert_close(mlp(x), mlp.fc2(relu_part * mlp.fc1_x(x)))


def test_vit_glu_gate_keeps_the_vit_init_not_swiglus_constant_gate():
    # timm's SwiGLU.init_weights would set the gate to weight ~1e-6, bias 1: every gate input
    # ~1 at init, where the candidate's shape near 0 would not matter.
    mlp = build_model("vit-tiny", CRRELU.module_class(), mlp="glu").blocks[0].mlp
    assert mlp.fc1_g.bias.abs().max().item() == 0.0
    assert mlp.fc1_g.weight.std().item() == pytest.approx(mlp.fc1_x.weight.std().item(), rel=0.1)
    assert mlp.fc1_g.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_mlp_option_is_checked():
    with pytest.raises(ValueError, match="unknown mlp 'swiglu'; valid: plain, glu"):
        build_model("vit-nano", CRRELU.module_class(), mlp="swiglu")
    with pytest.raises(ValueError, match="resnet-tiny has no MLP to gate"):
        build_model("resnet-tiny", CRRELU.module_class(), mlp="glu")


def test_text_presets_need_a_vocabulary_size():
    with pytest.raises(ValueError, match="gpt-nano is a text model: build_model needs vocab_size"):
        build_model("gpt-nano", CRRELU.module_class())
    model = build_model("gpt-nano", CRRELU.module_class(), vocab_size=84)
    assert model(torch.randint(0, 84, (2, 16))).shape == (2, 16, 84)
    assert model.block_size == get_preset("gpt-nano").block_size
