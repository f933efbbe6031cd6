"""Proxy models: timm networks built with a candidate activation as ``act_layer``.

timm resolves ``act_layer`` once and instantiates it per block, so every MLP
(every residual block, for the ResNet) gets its own activation instance with
its own learnable coefficients.

Presets are registered by name (timm style); ``list_models()`` lists them. A
preset is of one kind: "image" (a classifier of images) or "text" (a next-character
model, ``evaluators.gpt``, which registers its own presets here).

``mlp="glu"`` (transformers only) makes the candidate the gate of a gated MLP,
``fc2(act(x W) * (x V))``: with SiLU that is SwiGLU, with GELU GEGLU (Shazeer 2020).
The hidden width is scaled by 2/3 so that the three weight matrices hold as many
parameters as the plain MLP's two.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

MLPS = ("plain", "glu")
KINDS = ("image", "text")


@dataclass(frozen=True)
class ModelPreset:
    name: str
    build: Callable[..., nn.Module]  # image: (act_layer, in_chans, num_classes, img_size, mlp);
                                     # text: (act_layer, vocab_size, block_size, mlp) -> module
    img_size: int | None             # input size the preset expects (None: the dataset's own)
    recipe: dict = field(default_factory=dict)  # training-recipe hints (e.g. label_smoothing)
    doc: str = ""
    kind: str = "image"              # "image" or "text": the datasets it trains on
    block_size: int | None = None    # text: characters of context it is built for by default


_MODELS: dict[str, ModelPreset] = {}


def register_model(name: str, img_size: int | None = None, kind: str = "image", block_size: int | None = None,
                   **recipe):
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(KINDS)}")

    def deco(fn):
        _MODELS[name] = ModelPreset(name, fn, img_size, dict(recipe), (fn.__doc__ or "").strip(), kind, block_size)
        return fn
    return deco


def check_mlp(mlp: str) -> str:
    if mlp not in MLPS:
        raise ValueError(f"unknown mlp {mlp!r}; valid: {', '.join(MLPS)}")
    return mlp


def glu_hidden(hidden: int) -> int:
    """Hidden width of a gated MLP with the parameters of a plain one of width `hidden`:
    3 d h' = 2 d h, so h' = 2h/3, rounded (the biases differ by at most a few units' worth)."""
    return max(1, round(2 * hidden / 3))


def list_models(pattern: str = "*") -> list[str]:
    """Registered preset names matching a glob pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_preset(name: str) -> ModelPreset:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def build_model(name: str, act_layer: type, in_chans: int = 1, num_classes: int = 10,
                img_size: int | None = None, *, mlp: str = "plain", vocab_size: int | None = None,
                block_size: int | None = None) -> nn.Module:
    """A fresh model of preset `name` whose activations are instances of `act_layer`.

    Image presets: img_size None takes the preset's own size (28 for vit-nano, 32 for vit-tiny).
    Text presets: vocab_size is required; block_size None takes the preset's (gpt-nano 128).
    mlp: "plain" or "glu" (the candidate gates a gated MLP; transformers only).
    """
    preset = get_preset(name)
    check_mlp(mlp)
    if preset.kind == "text":
        if vocab_size is None:
            raise ValueError(f"{name} is a text model: build_model needs vocab_size")
        return preset.build(act_layer=act_layer, vocab_size=vocab_size,
                            block_size=block_size or preset.block_size, mlp=mlp)
    size = img_size or preset.img_size or 28
    return preset.build(act_layer=act_layer, in_chans=in_chans, num_classes=num_classes, img_size=size, mlp=mlp)


def _gated_mlp():
    from timm.layers import SwiGLU

    class GatedMlp(SwiGLU):
        """timm's SwiGLU, ``fc2(act(fc1_g(x)) * fc1_x(x))``, with the candidate as the gate's
        activation and the width timm asks for (the plain MLP's) scaled by 2/3."""

        def __init__(self, in_features, hidden_features=None, **kw):
            super().__init__(in_features, glu_hidden(hidden_features or in_features), **kw)

        def init_weights(self):
            # SwiGLU's own init sets the gate's weights to ~0 and its bias to 1, so every
            # gate input starts at 1 and the candidate's shape around 0 would not matter at
            # init. Keep the ViT init of any Linear (called before this): the gate's input
            # then has the scale of the plain MLP's pre-activation.
            pass

    return GatedMlp


def _vit(act_layer, in_chans, num_classes, img_size, *, patch_size, mlp="plain", **kw):
    from timm.models.vision_transformer import VisionTransformer

    if img_size % patch_size:
        raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
    if check_mlp(mlp) == "glu":
        kw["mlp_layer"] = _gated_mlp()
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                             num_classes=num_classes, act_layer=act_layer, **kw)


@register_model("vit-nano")
def vit_nano(act_layer, in_chans, num_classes, img_size, mlp="plain"):
    """CPU-sized ViT: dim 64, depth 4, 2 heads, MLP ratio 2, 4x4 = 16 patches
    (patch 7 on 28x28, 8 on 32x32). 139k parameters; one epoch of 10,000
    Fashion-MNIST images takes about 4 s on 2 CPU cores."""
    patch = img_size // 4 if img_size % 4 == 0 else 7
    return _vit(act_layer, in_chans, num_classes, img_size, patch_size=patch, mlp=mlp,
                embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0)


@register_model("vit-tiny", img_size=32)
def vit_tiny(act_layer, in_chans, num_classes, img_size, mlp="plain"):
    """The paper's ViT-T (Sun et al. 2025, Table 2): dim 192, depth 12, 3 heads,
    MLP ratio 4, patch 4 on 32x32 inputs (64 patches + class token)."""
    return _vit(act_layer, in_chans, num_classes, img_size, patch_size=4, mlp=mlp,
                embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)


@register_model("deit-tiny", img_size=32, label_smoothing=0.1)
def deit_tiny(act_layer, in_chans, num_classes, img_size, mlp="plain"):
    """DeiT-Ti dims (= ViT-T) with the distillation-free DeiT recipe's model
    settings: class token, stochastic depth 0.1; the task adds label smoothing 0.1
    (Touvron et al. 2021, Table 9)."""
    return _vit(act_layer, in_chans, num_classes, img_size, patch_size=4, mlp=mlp,
                embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
                class_token=True, global_pool="token", drop_path_rate=0.1)


@register_model("resnet-tiny")
def resnet_tiny(act_layer, in_chans, num_classes, img_size, mlp="plain"):
    """A small convolutional check that a winner transfers across architectures:
    timm ResNet with BasicBlocks [1, 1, 1, 1], channels 32-64-128-256, timm's
    deep 3x3 stem (width 16, stride 2) and no max-pool, so 28/32-pixel inputs
    reach the first block at 14/16 pixels."""
    from timm.models.resnet import BasicBlock, ResNet

    if mlp != "plain":
        raise ValueError(f"mlp={mlp!r}: resnet-tiny has no MLP to gate (only transformer presets take mlp='glu')")
    model = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), in_chans=in_chans, num_classes=num_classes,
                   channels=(32, 64, 128, 256), stem_type="deep", stem_width=16, act_layer=act_layer)
    model.maxpool = nn.Identity()  # a 4x shrink before the first block is too much for 28 pixels
    return model


__all__ = ["ModelPreset", "build_model", "list_models", "get_preset", "register_model", "check_mlp", "glu_hidden",
           "MLPS"]
