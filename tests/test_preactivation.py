"""evaluators.preactivation: the pre-activation std of a model preset at init, on real data."""
import math

import pytest
import torch

from evaluators import preactivation_std
from evaluators import data as data_mod

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
