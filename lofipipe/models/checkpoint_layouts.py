"""The layouts encoder checkpoints are published in, detected from their keys and renamed
to lofipipe's parameter names (no model, no I/O: keys and tensors only).

Each layout is a few rules on the keys of the unwrapped state dict: keys that are not part
of an encoder (classifier heads, VideoMAE's pre-training decoder), wrapper prefixes to
strip, and renames. Where the names come from:

- `videomae-finetuned`: VideoMAE (MCG-NJU/VideoMAE) and VideoMAE-v2 (OpenGVLab/VideoMAEv2)
  `modeling_finetune.py`: `patch_embed.proj`, `blocks.N.attn.qkv.weight` with `q_bias` and
  `v_bias`, `fc_norm` (or `norm` with `use_mean_pooling` off), `head`.
- `videomae-pretrained`: their `modeling_pretrain.py`: the encoder under `encoder.` with
  its final `norm` on every token; `decoder.*`, `encoder_to_decoder.weight`, `mask_token`.
- `tsm-release`: mit-han-lab/temporal-shift-module: torchvision's ResNet under
  `module.base_model.`, each block's shifted conv1 as `conv1.net`, the classifier `new_fc`.
- `torchvision-resnet`: torchvision's ResNet (`conv1`, `bn1`, `layerN.M.downsample.0`, `fc`).
- `mmaction2-tsm` / `mmaction2-resnet`: MMAction2's ResNetTSM / ResNet: `backbone.` with
  mmcv ConvModules (`conv1.conv`, `conv1.bn`, `downsample.conv`, `downsample.bn`), the
  shift as `conv1.conv.net`, the head `cls_head.`.
- `mmaction2-vit`: MMAction2's VisionTransformer for VideoMAE (`vit_mae.py`):
  `backbone.patch_embed.projection`, mmcv FFN `mlp.layers.0.0` / `mlp.layers.1`, a fixed
  `pos_embed` buffer, `fc_norm` or `norm`.
- `lofipipe`: lofipipe's own (`encoder` in `runs/<run>/encoder.pt`); `lofipipe-losa` with
  LoSA adapters. Older ViT checkpoints with one biased `qkv` are split into q and v biases.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from lofipipe.models.vit import sincos_positions


@dataclass(frozen=True)
class CheckpointLayout:
    """A published layout: how to find it and how its keys become lofipipe's."""

    name: str
    description: str  # what it is, with one representative key
    markers: tuple[str, ...]  # regular expressions; the layout is any key matching one
    ignore: tuple[tuple[str, str], ...] = ()  # (regular expression, what it is) on raw keys
    strip: tuple[str, ...] = ()  # prefixes removed (repeatedly, in any order)
    renames: tuple[tuple[str, str], ...] = ()  # (pattern, replacement) after stripping


# MMAction2's ResNets name convolutions and norms as mmcv ConvModules (convN.conv, convN.bn,
# downsample.conv, downsample.bn); torchvision's names are convN, bnN, downsample.0/1.
_MMCV_RESNET = (
    (r"\.downsample\.conv\.", ".downsample.0."),
    (r"\.downsample\.bn\.", ".downsample.1."),
    (r"(^|\.)conv(\d)\.conv\.", r"\1conv\2."),
    (r"(^|\.)conv(\d)\.bn\.", r"\1bn\2."),
)
_HEAD = "classifier head"
_DECODER = "pre-training decoder"
_MMACTION_HEAD = ((r"^(cls_head|data_preprocessor)\.", _HEAD),)

# Most specific first: the first layout one of whose markers matches a key is taken.
LAYOUTS = (
    CheckpointLayout(
        "lofipipe-losa",
        "lofipipe's own LoSA encoder (backbone.blocks.N.attn.q_bias, gates)",
        (r"^gates$",),
    ),
    CheckpointLayout(
        "videomae-pretrained",
        "VideoMAE-v1/v2 pre-trained (encoder.blocks.N.attn.q_bias, decoder.*)",
        (r"^encoder\.patch_embed\.proj\.weight$",),
        ignore=(
            (r"^(decoder\.|encoder_to_decoder\.|mask_token$|pos_embed$)", _DECODER),
            (r"^encoder\.head\.", _HEAD),
        ),
        strip=("encoder.",),
    ),
    CheckpointLayout(
        "mmaction2-vit",
        "MMAction2 VisionTransformer (backbone.patch_embed.projection.weight)",
        (r"^backbone\.patch_embed\.projection\.weight$",),
        ignore=_MMACTION_HEAD,
        strip=("backbone.",),
        renames=(
            (r"^patch_embed\.projection\.", "patch_embed.proj."),
            (r"\.mlp\.layers\.0\.0\.", ".mlp.fc1."),
            (r"\.mlp\.layers\.1\.", ".mlp.fc2."),
        ),
    ),
    CheckpointLayout(
        "videomae-finetuned",
        "VideoMAE-v1/v2 fine-tuned (blocks.N.attn.q_bias, fc_norm, head)",
        (r"^(module\.)?blocks\.\d+\.attn\.q_bias$",),
        ignore=((r"^(module\.)?head\.", _HEAD),),
        strip=("module.",),
    ),
    CheckpointLayout(
        "mmaction2-tsm",
        "MMAction2 ResNetTSM (backbone.layer1.0.conv1.conv.net.weight)",
        (r"^backbone\.layer\d\.\d+\.conv1\.conv\.net\.weight$",),
        ignore=_MMACTION_HEAD,
        strip=("backbone.",),
        # the shift wraps the first conv of a block: conv1.conv.net
        renames=((r"(^|\.)conv1\.conv\.net\.", r"\1conv1."), *_MMCV_RESNET),
    ),
    CheckpointLayout(
        "mmaction2-resnet",
        "MMAction2 ResNet without shift wrappers, e.g. TSN (backbone.conv1.conv.weight)",
        (r"^backbone\.conv1\.conv\.weight$",),
        ignore=_MMACTION_HEAD,
        strip=("backbone.",),
        renames=_MMCV_RESNET,
    ),
    CheckpointLayout(
        "tsm-release",
        "TSM release (module.base_model.layer1.0.conv1.net.weight, module.new_fc)",
        (r"^(module\.)?base_model\.conv1\.weight$",),
        ignore=((r"^(module\.)?(new_fc|base_model\.fc)\.", _HEAD),),
        strip=("module.", "base_model."),
        renames=((r"^(layer\d\.\d+)\.conv1\.net\.", r"\1.conv1."),),
    ),
    CheckpointLayout(
        "torchvision-resnet",
        "torchvision ResNet (layer1.0.conv1.weight, fc)",
        (r"^(module\.)?layer1\.0\.conv1\.weight$",),
        ignore=((r"^(module\.)?fc\.", _HEAD),),
        strip=("module.",),
    ),
)
# Keys used as they are: lofipipe's own encoders without a published counterpart (tiny).
PLAIN = CheckpointLayout("plain", "a state dict in lofipipe's own names", ())
# A ViT or ResNet state nested under `encoder` (runs/<run>/encoder.pt): published names.
LOFIPIPE = CheckpointLayout("lofipipe", "lofipipe's own encoder (encoder: {...})", ())

# A ViT checkpoint whose final norm is `norm`, not `fc_norm`, and what lofipipe computes.
_TOKEN_NORM = {
    "videomae-pretrained": "features: the pre-trained encoder's output tokens (each through "
    "its final `norm`), averaged",
    "videomae-finetuned": "final `norm` (use_mean_pooling off): the official classifier "
    "reads the first token, a corner patch (there is no class token); lofipipe averages all "
    "tokens, each through `norm`",
}
_TOKEN_NORM["mmaction2-vit"] = _TOKEN_NORM["videomae-finetuned"]
_TOKEN_NORM["lofipipe"] = _TOKEN_NORM["lofipipe-losa"] = (
    "final `norm` on each token before their mean (as a VideoMAE pre-trained encoder)"
)

_QKV_BIAS = re.compile(r"^(.*\.attn\.)qkv\.bias$")


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """A checkpoint's encoder tensors in lofipipe's names, and what was left out."""

    layout: CheckpointLayout
    state: dict[str, torch.Tensor]
    ignored: Counter[str] = field(default_factory=Counter)  # what it is -> keys
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.layout.name


def detect_layout(keys: set[str] | Mapping[str, object], nesting: tuple[str, ...] = ()) -> str:
    """The name of the layout of a state dict with these keys (`plain` if none matches).

    `nesting` is the path the state dict was found under; a ViT or ResNet state under
    `encoder` is lofipipe's own, which uses the published names.
    """
    found = next(
        (
            layout
            for layout in LAYOUTS
            if any(re.search(marker, key) for marker in layout.markers for key in keys)
        ),
        PLAIN,
    )
    if nesting[-1:] == ("encoder",) and found.name != "lofipipe-losa":
        return "lofipipe"
    return found.name


def convert_checkpoint(
    state: Mapping[str, torch.Tensor], nesting: tuple[str, ...] = ()
) -> ConvertedCheckpoint:
    """A state dict in any known layout, renamed to lofipipe's parameter names."""
    name = detect_layout(state, nesting)
    layout = next((layout for layout in (*LAYOUTS, LOFIPIPE) if layout.name == name), PLAIN)
    ignored: Counter[str] = Counter()
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        what = next((what for pattern, what in layout.ignore if re.search(pattern, key)), None)
        if what is not None:
            ignored[what] += 1
            continue
        own = _strip(key, layout.strip)
        for pattern, replacement in layout.renames:
            own = re.sub(pattern, replacement, own)
        renamed[own] = value
    notes = []
    for key in [key for key in renamed if key.endswith("pos_embed")]:
        if _is_sincos(renamed[key]):
            ignored["fixed sine-cosine positions"] += 1
            del renamed[key]
    if _split_qkv_bias(renamed):
        notes.append(
            "one biased qkv: split into q_bias and v_bias (the key bias is dropped; the "
            "softmax cancels it)"
        )
    if any(re.fullmatch(r"(backbone\.)?norm\.weight", key) for key in renamed):
        notes.append(_TOKEN_NORM.get(name, _TOKEN_NORM["lofipipe"]))
    return ConvertedCheckpoint(layout, renamed, ignored, tuple(notes))


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _is_sincos(table: torch.Tensor) -> bool:
    """Whether a (1, N, dim) `pos_embed` is the fixed table lofipipe computes itself."""
    if table.ndim != 3 or table.shape[0] != 1 or table.is_meta:
        return False
    expected = sincos_positions(table.shape[1], table.shape[2])
    return torch.allclose(table[0].float(), expected, atol=1e-5)


def _split_qkv_bias(state: dict[str, torch.Tensor]) -> bool:
    """Replaces each `attn.qkv.bias` by VideoMAE's `q_bias` and `v_bias`, in place."""
    found = [match for match in map(_QKV_BIAS.match, list(state)) if match]
    found = [match for match in found if f"{match.group(1)}q_bias" not in state]
    for match in found:
        query, _, value = state.pop(match.group(0)).chunk(3)
        state[f"{match.group(1)}q_bias"], state[f"{match.group(1)}v_bias"] = query, value
    return bool(found)
