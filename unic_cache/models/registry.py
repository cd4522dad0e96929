"""The teacher aliases (``dinov2``, ``deit3:base``, ...) and the timm models they stand for, without torch: a
typo in a teacher's name is refused before anything heavy is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnknownTeacher, UserError


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


# width and patch (or, for a 4-D feature map, total stride) of every alias model, so that `teachers` and `plan`
# answer without torch; tests/test_registry.py checks each against the model built on the meta device
SHAPES = {
    "vit_small_patch14_dinov2.lvd142m": (384, 14), "vit_base_patch14_dinov2.lvd142m": (768, 14),
    "vit_large_patch14_dinov2.lvd142m": (1024, 14), "vit_giant_patch14_dinov2.lvd142m": (1536, 14),
    "vit_small_patch14_reg4_dinov2.lvd142m": (384, 14), "vit_base_patch14_reg4_dinov2.lvd142m": (768, 14),
    "vit_large_patch14_reg4_dinov2.lvd142m": (1024, 14), "vit_giant_patch14_reg4_dinov2.lvd142m": (1536, 14),
    "vit_small_patch16_224.dino": (384, 16), "vit_base_patch16_224.dino": (768, 16),
    "deit3_small_patch16_224.fb_in1k": (384, 16), "deit3_base_patch16_224.fb_in1k": (768, 16),
    "deit3_large_patch16_224.fb_in1k": (1024, 16), "deit3_huge_patch14_224.fb_in1k": (1280, 14),
    "vit_base_patch16_clip_224.openai": (768, 16), "vit_large_patch14_clip_224.openai": (1024, 14),
    "vit_base_patch16_siglip_224.webli": (768, 16), "vit_large_patch16_siglip_256.webli": (1024, 16),
    "vit_so400m_patch14_siglip_224.webli": (1152, 14),
    "efficientnet_lite0": (1280, 32),
    "vit_base_patch16_224.mae": (768, 16), "vit_large_patch16_224.mae": (1024, 16), "vit_huge_patch14_224.mae": (1280, 14),
}
ALIAS_RESOLUTION = 224  # UNIC's input size: aliases use it unless --resolution says otherwise
CONV_MODELS = {"efficientnet_lite0"}  # a 4-D feature map: the grid is ceil(resolution / stride)


@dataclass(frozen=True)
class AliasShape:
    """What an alias model's features look like at a resolution, known without building it."""

    model_id: str
    dim: int
    grid: tuple[int, int]
    resolution: int


def alias_shape(teacher: str, size: str | None, resolution: int) -> AliasShape:
    """Width and token grid of an alias at ``resolution`` (torch-free)."""
    model_id = alias_model(teacher, size)
    dim, step = SHAPES[model_id]
    side = -(-resolution // step) if model_id in CONV_MODELS else resolution // step
    return AliasShape(model_id, dim, (side, side), resolution)


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
        raise UnknownTeacher(f"unknown teacher {teacher!r}; use one of {', '.join(FAMILIES)} or timm:<model name>")
    size = size or family.default
    if size not in family.sizes:
        raise UserError(f"teacher {teacher} has no size {size!r}; sizes: {', '.join(family.sizes)}")
    return family.sizes[size]


def default_resolution(teacher: str, resolution: int | None) -> int | None:
    """``resolution``, else 224 for an alias (not the hub model's native size: DINOv2's 518 px gives 37x37
    tokens, 7x the bytes), else None (the timm model's own size)."""
    return resolution or (None if teacher.startswith("timm:") else ALIAS_RESOLUTION)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weights_problem(weights: str | None) -> str | None:
    """What is wrong with a ``--weights`` value (None: the hub; "random[:SEED]"; a weight file), torch-free, so
    that it is said before anything is loaded; None when it is fine."""
    from pathlib import Path

    if weights is None:
        return None
    if weights == "random" or weights.startswith("random:"):
        seed = weights.partition(":")[2] or "0"
        return None if seed.isdigit() else f"--weights random:SEED takes an integer seed, got {weights!r}"
    path = Path(weights)
    if not path.is_file():
        return f"weight file not found: {weights}"
    if path.suffix not in WEIGHT_SUFFIXES:
        return f"--weights must be a .safetensors or .pth file, got {path.name}"
    return None


def file_sha256(path: str) -> str:
    """sha256 of a weight file, read in blocks (what a cache records of a teacher's weights)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
