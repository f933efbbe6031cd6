"""evaluators.gpt: the character GPT of the language-model track (causality, gated MLPs, presets)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import spaces
from evaluators import build_model
from evaluators.gpt import GPT, MLP

CRRELU = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
VOCAB = 84


def _params(module):
    return sum(p.numel() for p in module.parameters())


def _tiny(mlp="plain", act=nn.GELU):
    torch.manual_seed(0)
    return GPT(VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32, act_layer=act, mlp=mlp).eval()


@pytest.mark.parametrize("mlp", ["plain", "glu"])
def test_future_tokens_do_not_change_earlier_logits(mlp):
    model = _tiny(mlp)
    x = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    for j in (0, 7, 15):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % VOCAB  # change one token
        with torch.no_grad():
            a, b = model(x), model(y)
        torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-6)  # positions before j: unchanged
        assert (a[:, j:] - b[:, j:]).abs().amax(dim=-1).min() > 1e-4     # j and after: every one changes


def test_a_sequence_longer_than_the_block_is_refused():
    with pytest.raises(ValueError, match="17 tokens is longer than block_size=16"):
        _tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_output_layer_is_tied_to_the_token_embedding():
    model = _tiny()
    assert model.lm_head.weight is model.wte.weight


def test_each_block_has_its_own_candidate_instance_and_its_coefficient_learns():
    cls = CRRELU.module_class()
    model = build_model("gpt-nano", cls, vocab_size=VOCAB)
    acts = [m for m in model.modules() if isinstance(m, cls)]
    assert len(acts) == len(model.blocks) == 4 and len({id(a.eps) for a in acts}) == 4
    x = torch.randint(0, VOCAB, (2, 32))
    nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    assert all(a.eps.grad is not None and a.eps.grad.abs().item() > 0 for a in acts)


def test_residual_projections_start_smaller_as_in_gpt2():
    model = build_model("gpt-nano", nn.GELU, vocab_size=VOCAB)
    block = model.blocks[0]
    assert block.mlp.fc1_x.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.mlp.fc2.weight.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.1)
    assert block.attn.proj.weight.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.1)


def test_glu_mlp_is_fc2_of_the_candidate_gate_times_the_linear_branch():
    torch.manual_seed(0)
    mlp = MLP(32, 128, CRRELU.module_class(), mlp="glu")
    x = torch.randn(2, 5, 32)
    g = mlp.fc1_g(x)
    gate = torch.relu(g) + 0.01 * g * torch.exp(-g ** 2 / 2)
    torch.testing.assert_close(mlp(x), mlp.fc2(gate * mlp.fc1_x(x)))


@pytest.mark.parametrize("name, dim, hidden", [("gpt-nano", 64, 256), ("gpt-small", 384, 1536)])
def test_glu_matches_the_plain_parameter_count(name, dim, hidden):
    plain = build_model(name, nn.GELU, vocab_size=VOCAB)
    glu = build_model(name, nn.GELU, vocab_size=VOCAB, mlp="glu")
    assert plain.blocks[0].mlp.fc1_x.out_features == hidden
    assert glu.blocks[0].mlp.fc1_g.out_features == round(2 * hidden / 3)
    # 3 d h' = 2 d h weights (exact when 3 divides h); the biases differ by less than one hidden unit
    assert abs(_params(glu.blocks[0].mlp) - _params(plain.blocks[0].mlp)) < 3 * dim + 2
    assert abs(_params(glu) - _params(plain)) < len(glu.blocks) * (3 * dim + 2)
    assert _params(glu) == pytest.approx(_params(plain), rel=5e-3)


def test_gpt_small_has_nanogpts_shakespeare_char_dimensions():
    model = build_model("gpt-small", nn.GELU, vocab_size=65)
    assert len(model.blocks) == 6 and model.wte.embedding_dim == 384 and model.blocks[0].attn.n_head == 6
    assert model.block_size == 256
    # nanoGPT counts 10.65M without the position embedding: 10.65M + 256 * 384 here
    assert _params(model) == pytest.approx(10.75e6, rel=0.01)
