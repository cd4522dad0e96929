"""The student: a timm ViT encoder and, per teacher and token type, a ladder of projectors (LoP).

Each chosen block feeds one MLP per (teacher, kind) through ``forward_intermediates``; the MLP outputs
are summed. Where a teacher's token grid differs from the student's, the student's patch map is resized
to it. Two heads (``--lop-head``):

- ``unic`` (UNIC's code default, naver/unic ``modeling/unic.py``): each MLP is Linear -> GELU -> Linear
  with no norm, weights trunc-normal (std 0.02) and zero biases, fed by every chosen block's raw output,
  the last block's included. The encoder's final norm is never in the training graph: it is frozen at
  its initial value (weight 1, bias 0), so the exported encoder ends in a LayerNorm without a learnt
  affine, as UNIC's student evaluates.
- ``prenorm`` (this tool's head before 0.2): LayerNorm -> Linear -> GELU -> Linear with PyTorch's default
  init, the last block read after the encoder's final norm (so that norm is trained).

Hidden widths (``lop_hidden``): ``768`` (UNIC: 768, the last block's 3072, whatever the student's width),
``student`` (the student's width, the last block's 4x: the same for a ViT-B) or a number N (N and 4N).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .device_pixels import PixelNorm


def parse_blocks(spec: str, depth: int) -> list[int]:
    """``all``, ``last`` or ``i,j,k`` (negative counts from the end) -> sorted block indices, always with the last."""
    if spec == "all":
        return list(range(depth))
    try:
        raw = [-1] if spec == "last" else [int(b) for b in spec.split(",")]
    except ValueError:
        raw = [depth]
    if any(not -depth <= b < depth for b in raw):
        raise UserError(f"--lop-blocks takes all, last or block indices below {depth} like 3,7,11; got {spec!r}")
    return sorted({b % depth for b in raw} | {depth - 1})  # the last block (the exported output) always feeds


def hidden_widths(spec: str, dim: int) -> tuple[int, int]:
    """(hidden width of a projector, that of the last block's) for ``--lop-hidden`` (checked by the options)
    and a student of width ``dim``."""
    width = dim if spec == "student" else int(spec)
    return width, 4 * width


def _mlp(dim: int, hidden: int, out: int, prenorm: bool) -> nn.Sequential:
    layers = [nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out)]
    return nn.Sequential(nn.LayerNorm(dim), *layers) if prenorm else nn.Sequential(*layers)


class Ladder(nn.Module):
    """One MLP per block; the projections of all blocks are summed. ``widths``: (hidden, last block's hidden)."""

    def __init__(self, dim: int, out: int, blocks: list[int], last: int, widths: tuple[int, int], head: str = "unic"):
        super().__init__()
        self.mlps = nn.ModuleList(_mlp(dim, widths[b == last], out, head == "prenorm") for b in blocks)
        if head == "unic":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return sum(mlp(x) for mlp, x in zip(self.mlps, features))


class Student(nn.Module):
    """Encoder + LoP heads; ``forward`` returns {"<teacher>/<kind>": prediction}."""

    def __init__(self, arch: str, img_size: int, targets: dict[str, tuple[int, tuple[int, int] | None]],
                 lop_blocks: str = "all", drop_path: float = 0.1, out_factor: int = 1, model_args: dict | None = None,
                 lop_head: str = "unic", lop_hidden: str = "768"):
        """``targets``: "<teacher>/<kind>" -> (output dim, teacher grid for patch targets or None)."""
        super().__init__()
        import timm

        try:
            self.encoder = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size,
                                             drop_path_rate=drop_path, **(model_args or {}))
        except (RuntimeError, TypeError) as exc:
            raise UserError(f"cannot build student {arch!r} ({exc}); students are timm ViTs (vit_*, deit_*, deit3_*, ...)") from None
        intermediates = getattr(self.encoder, "forward_intermediates", None)
        if intermediates is None or "return_prefix_tokens" not in inspect.signature(intermediates).parameters \
                or not hasattr(self.encoder, "patch_embed") or not hasattr(self.encoder, "blocks"):
            raise UserError(f"student {arch!r} is a {type(self.encoder).__name__}; only ViTs are supported as students "
                            "(a timm VisionTransformer: vit_*, deit_*, deit3_*, ...)")
        self.pixels = PixelNorm.of(self.encoder)
        depth, dim = len(self.encoder.blocks), self.encoder.num_features
        self.blocks = parse_blocks(lop_blocks, depth)
        self.grid = tuple(self.encoder.patch_embed.grid_size)
        self.grids = {name: grid for name, (_, grid) in targets.items()}
        self.head = lop_head
        widths = hidden_widths(lop_hidden, dim)
        self.heads = nn.ModuleDict({name.replace("/", "__"): Ladder(dim, out * out_factor, self.blocks, depth - 1, widths, lop_head)
                                    for name, (out, _) in targets.items()})
        if lop_head == "unic":  # the final norms are outside the training graph: kept as initialised (UNIC)
            for norm in (self.encoder.norm, getattr(self.encoder, "fc_norm", None)):
                if norm is not None:
                    norm.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 images (B, 3, H, W), normalised here with the encoder's mean/std, -> predictions."""
        feats = self.encoder.forward_intermediates(self.pixels(images), indices=self.blocks, output_fmt="NLC", norm=False,
                                                   intermediates_only=True, return_prefix_tokens=True)
        if self.head == "prenorm":  # the last block read after the final norm, as the exported encoder outputs it
            norm = self.encoder.norm
            feats[-1] = (norm(feats[-1][0]), norm(feats[-1][1]))
        summary = [prefix[:, 0] if prefix.shape[1] else patch.mean(1) for patch, prefix in feats]
        out = {}
        for name, grid in self.grids.items():
            head = self.heads[name.replace("/", "__")]
            if grid is None:
                out[name] = head(summary)
            else:
                out[name] = head([self._resize(patch, grid) for patch, _ in feats])
        return out

    def _resize(self, patch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.grid:
            return patch
        b, _, d = patch.shape
        fmap = patch.transpose(1, 2).reshape(b, d, *self.grid)
        return F.interpolate(fmap, size=tuple(grid), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


def pooled(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm encoder's pooled embedding (the CLS token after the final norm for a ViT)."""
    return encoder.forward_head(encoder.forward_features(x), pre_logits=True)
