"""The teacher aliases (``dinov2``, ``deit3:base``, ...) and the timm models they stand for, without torch: a
typo in a teacher's name is refused before anything heavy is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class TeacherFamily:
    """An alias: timm model ids per size, and the size used when none is given."""

    alias: str
    sizes: dict[str, str]
    default: str
    about: str


FAMILIES = {
    f.alias: f
    for f in (
        TeacherFamily("dinov2", {"small": "vit_small_patch14_dinov2.lvd142m", "base": "vit_base_patch14_dinov2.lvd142m",
                                 "large": "vit_large_patch14_dinov2.lvd142m", "giant": "vit_giant_patch14_dinov2.lvd142m"},
                      "base", "DINOv2 (self-supervised, LVD-142M)"),
        TeacherFamily("dinov2-reg", {"small": "vit_small_patch14_reg4_dinov2.lvd142m", "base": "vit_base_patch14_reg4_dinov2.lvd142m",
                                     "large": "vit_large_patch14_reg4_dinov2.lvd142m", "giant": "vit_giant_patch14_reg4_dinov2.lvd142m"},
                      "base", "DINOv2 with 4 registers"),
        TeacherFamily("dino", {"small": "vit_small_patch16_224.dino", "base": "vit_base_patch16_224.dino"},
                      "base", "DINO (self-supervised, IN-1k)"),
        TeacherFamily("deit3", {"small": "deit3_small_patch16_224.fb_in1k", "base": "deit3_base_patch16_224.fb_in1k",
                                "large": "deit3_large_patch16_224.fb_in1k", "huge": "deit3_huge_patch14_224.fb_in1k"},
                      "base", "DeiT-III (supervised, IN-1k)"),
        TeacherFamily("clip", {"base": "vit_base_patch16_clip_224.openai", "large": "vit_large_patch14_clip_224.openai"},
                      "base", "CLIP image tower (OpenAI)"),
        TeacherFamily("siglip", {"base": "vit_base_patch16_siglip_224.webli", "large": "vit_large_patch16_siglip_256.webli",
                                 "so400m": "vit_so400m_patch14_siglip_224.webli"},
                      "base", "SigLIP image tower (no CLS: attention-pooled summary)"),
        TeacherFamily("efficientnet-lite", {"lite0": "efficientnet_lite0"}, "lite0",
                      "EfficientNet-Lite0 (supervised, IN-1k; 4-D feature map): weights from the `lite0` extra"),
        TeacherFamily("mae", {"base": "vit_base_patch16_224.mae", "large": "vit_large_patch16_224.mae",
                              "huge": "vit_huge_patch14_224.mae"},
                      "base", "MAE encoder (self-supervised, IN-1k)"),
    )
}


def split_alias(teacher: str, size: str | None) -> tuple[str, str | None]:
    """``ALIAS:SIZE`` (as ``plan --teachers`` takes it) as (alias, size); ``timm:<name>`` and plain aliases as given."""
    if teacher.startswith("timm:") or ":" not in teacher:
        return teacher, size
    alias, _, given = teacher.partition(":")
    if size and size != given:
        raise UserError(f"--teacher {teacher} names size {given!r} and --size {size!r}; give the size once")
    return alias, given


def alias_model(teacher: str, size: str | None = None) -> str:
    """The timm model id of an alias at ``size`` (its default size when None); unknown ones are one-line errors."""
    family = FAMILIES.get(teacher)
    if family is None:
        raise UserError(f"unknown teacher {teacher!r}; use one of {', '.join(FAMILIES)} or timm:<model name>")
    size = size or family.default
    if size not in family.sizes:
        raise UserError(f"teacher {teacher} has no size {size!r}; sizes: {', '.join(family.sizes)}")
    return family.sizes[size]
