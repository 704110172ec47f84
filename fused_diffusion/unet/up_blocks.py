"""One forward for every standard diffusers up block (the blocks that concatenate skip connections), with the
concatenation done by a caller-given function (the fused `skip_concat` / `blend_concat`) and the option to start at
a layer with a given hidden state (DeepCache's shallow calls).

Each block type is described by what happens after each resnet (its attention call) and after the resnet loop (its
upsamplers, or the score-SDE skip path); the loop itself is written once. Gradient checkpointing is not applied
(these features are for sampling).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import Tensor, nn

# concat(j, h, skip) -> the concatenation entering resnet j of the block
Concat = Callable[[int, Tensor, Tensor], Tensor]


def _attn(block: nn.Module, j: int, h: Tensor, a: dict) -> Tensor:
    return block.attentions[j](h)


def _cross_attn(block: nn.Module, j: int, h: Tensor, a: dict) -> Tensor:
    return block.attentions[j](
        h, encoder_hidden_states=a.get("encoder_hidden_states"), cross_attention_kwargs=a.get("cross_attention_kwargs"),
        attention_mask=a.get("attention_mask"), encoder_attention_mask=a.get("encoder_attention_mask"),
        return_dict=False,
    )[0]


def _simple_cross_attn(block: nn.Module, j: int, h: Tensor, a: dict) -> Tensor:
    encoder_hidden_states, attention_mask = a.get("encoder_hidden_states"), a.get("attention_mask")
    if attention_mask is None:  # as SimpleCrossAttnUpBlock2D.forward chooses its mask
        mask = None if encoder_hidden_states is None else a.get("encoder_attention_mask")
    else:
        mask = attention_mask
    return block.attentions[j](h, encoder_hidden_states=encoder_hidden_states, attention_mask=mask,
                               **(a.get("cross_attention_kwargs") or {}))


def _k_cross_attn(block: nn.Module, j: int, h: Tensor, a: dict) -> Tensor:
    return block.attentions[j](
        h, encoder_hidden_states=a.get("encoder_hidden_states"), emb=a.get("temb"),
        attention_mask=a.get("attention_mask"), cross_attention_kwargs=a.get("cross_attention_kwargs"),
        encoder_attention_mask=a.get("encoder_attention_mask"),
    )


def _upsample_to_size(block: nn.Module, h: Tensor, a: dict) -> Tensor:
    for upsampler in block.upsamplers or []:
        h = upsampler(h, a.get("upsample_size"))
    return h


def _upsample_with_temb(block: nn.Module, h: Tensor, a: dict) -> Tensor:
    for upsampler in block.upsamplers or []:
        h = upsampler(h, a.get("temb"))
    return h


def _upsample_plain(block: nn.Module, h: Tensor, a: dict) -> Tensor:
    for upsampler in block.upsamplers or []:
        h = upsampler(h)
    return h


def _attn_upsample(block: nn.Module, h: Tensor, a: dict) -> Tensor:
    for upsampler in block.upsamplers or []:
        h = upsampler(h, temb=a.get("temb")) if block.upsample_type == "resnet" else upsampler(h)
    return h


def _skip_path(block: nn.Module, h: Tensor, a: dict) -> tuple[Tensor, Tensor]:
    """SkipUpBlock2D / AttnSkipUpBlock2D (score-SDE U-Nets): the FIR-upsampled skip sample beside the features."""
    if hasattr(block, "attentions"):
        h = block.attentions[0](h)
    skip_sample = a.get("skip_sample")
    skip_sample = block.upsampler(skip_sample) if skip_sample is not None else 0
    if block.resnet_up is not None:
        skip_sample = skip_sample + block.skip_conv(block.act(block.skip_norm(h)))
        h = block.resnet_up(h, a.get("temb"))
    return h, skip_sample


@dataclass(frozen=True)
class UpBlockKind:
    """attend(block, j, h, args) after resnet j (None: no attention there); finish(block, h, args) after the loop;
    concat_each: a skip connection enters every resnet (else only the first: the k-diffusion blocks)."""

    attend: Optional[Callable[..., Tensor]]
    finish: Callable[..., Any]
    concat_each: bool = True
    freeu: bool = False


UP_BLOCKS: dict[str, UpBlockKind] = {
    "UpBlock2D": UpBlockKind(None, _upsample_to_size, freeu=True),
    "CrossAttnUpBlock2D": UpBlockKind(_cross_attn, _upsample_to_size, freeu=True),
    "AttnUpBlock2D": UpBlockKind(_attn, _attn_upsample),
    "ResnetUpsampleBlock2D": UpBlockKind(None, _upsample_with_temb),
    "SimpleCrossAttnUpBlock2D": UpBlockKind(_simple_cross_attn, _upsample_with_temb),
    "SkipUpBlock2D": UpBlockKind(None, _skip_path),
    "AttnSkipUpBlock2D": UpBlockKind(None, _skip_path),
    "KUpBlock2D": UpBlockKind(None, _upsample_plain, concat_each=False),
    "KCrossAttnUpBlock2D": UpBlockKind(_k_cross_attn, _upsample_plain, concat_each=False),
}


def up_block_kind(block: nn.Module, where: str) -> UpBlockKind:
    kind = UP_BLOCKS.get(type(block).__name__)
    if kind is None:
        raise TypeError(f"{where} is a {type(block).__name__}, which fused_diffusion.unet does not support; "
                        f"supported up blocks: {', '.join(UP_BLOCKS)}")
    return kind


def skip_counts(unet: nn.Module) -> list[int]:
    """How many skip connections each up block concatenates. A k-diffusion up block joins one, or none where its
    mirror down block (a KCrossAttnDownBlock2D without downsampler) passes None."""
    counts, n = [], len(unet.up_blocks)
    for u, block in enumerate(unet.up_blocks):
        if UP_BLOCKS[type(block).__name__].concat_each:
            counts.append(len(block.resnets))
        else:
            mirror = unet.down_blocks[n - 1 - u]
            passes_none = type(mirror).__name__ == "KCrossAttnDownBlock2D" and mirror.downsamplers is None
            counts.append(0 if passes_none else 1)
    return counts


def bind_arguments(block: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The block forward's arguments by name, however the U-Net passed them."""
    signature = inspect.signature(type(block).forward)
    bound = signature.bind(block, *args, **kwargs)
    return {**bound.arguments.pop("kwargs", {}), **bound.arguments}


def _freeu_on(block: nn.Module) -> bool:
    return all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))


def run_up_block(block: nn.Module, args: dict, concat: Concat, *, start: int = 0, entry: Tensor | None = None,
                 record_at: int | None = None, record: Callable[[Tensor], None] | None = None) -> Any:
    """The block's forward on bound `args`, each skip concatenation by `concat`.

    start / entry: skip the resnets before `start` and enter resnet `start` with `entry` instead of the block's input
    (their skip connections are consumed unused). record(h): called with the hidden state entering resnet
    `record_at`, before its concatenation (what DeepCache stores).
    """
    kind = UP_BLOCKS[type(block).__name__]
    h = args["hidden_states"] if entry is None else entry
    skips = list(args["res_hidden_states_tuple"])
    temb = args.get("temb")
    freeu = kind.freeu and _freeu_on(block)
    for j, resnet in enumerate(block.resnets):
        skip = skips.pop() if kind.concat_each or j == 0 else None
        if j < start:
            continue
        if j == record_at:
            record(h)
        if skip is not None:
            if freeu:
                from diffusers.utils.torch_utils import apply_freeu

                # FreeU scales h in place: never a stored tensor
                stored = (j == start and entry is not None) or j == record_at
                h, skip = apply_freeu(block.resolution_idx, h.clone() if stored else h, skip,
                                      s1=block.s1, s2=block.s2, b1=block.b1, b2=block.b2)
            h = concat(j, h, skip)
        h = resnet(h, temb)
        if kind.attend is not None:
            h = kind.attend(block, j, h, args)
    return kind.finish(block, h, args)
