"""The teacher aliases (``dinov2``, ``deit3:base``, ...) and the timm models they stand for, without torch: a
typo in a teacher's name is refused before anything heavy is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UnknownTeacher, UserError


@dataclass(frozen=True)
class TeacherFamily:
    """An alias: timm model ids per size, the size used when none is given, what it is, its summary rule (said by
    ``unic-cache teachers``) and the resolution it runs at unless ``--resolution`` says otherwise."""

    alias: str
    sizes: dict[str, str]
    default: str
    about: str
    summary: str = "CLS"
    resolution: int = 224  # UNIC's input size: every family runs there unless it cannot (SAM)
    model_args: dict = field(default_factory=dict)  # timm arguments that make the architecture the family's own
    release: str = ""  # where the weights are released, for families not on the Hugging Face hub (--weights needed)


# ImageNet's mean and std, as iBOT's and dBOT's own code (and UNIC's) normalise their inputs; timm's
# vit_base_patch16_224 (whose architecture they are) would otherwise take its augreg weights' 0.5
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

FAMILIES = {
    f.alias: f
    for f in (
        TeacherFamily("dinov2", {"small": "vit_small_patch14_dinov2.lvd142m", "base": "vit_base_patch14_dinov2.lvd142m",
                                 "large": "vit_large_patch14_dinov2.lvd142m", "giant": "vit_giant_patch14_dinov2.lvd142m"},
                      "base", "DINOv2 (self-supervised, LVD-142M)"),
        TeacherFamily("dinov2-reg", {"small": "vit_small_patch14_reg4_dinov2.lvd142m", "base": "vit_base_patch14_reg4_dinov2.lvd142m",
                                     "large": "vit_large_patch14_reg4_dinov2.lvd142m", "giant": "vit_giant_patch14_reg4_dinov2.lvd142m"},
                      "base", "DINOv2 with 4 registers"),
        TeacherFamily("dinov3", {"small": "vit_small_patch16_dinov3.lvd1689m", "small_plus": "vit_small_plus_patch16_dinov3.lvd1689m",
                                 "base": "vit_base_patch16_dinov3.lvd1689m", "large": "vit_large_patch16_dinov3.lvd1689m",
                                 "huge_plus": "vit_huge_plus_patch16_dinov3.lvd1689m", "7b": "vit_7b_patch16_dinov3.lvd1689m"},
                      "base", "DINOv3 (self-supervised, LVD-1689M; RoPE, CLS + 4 registers, native 256 px)",
                      "CLS (DINOv3's own; not timm's avg pool)"),
        TeacherFamily("dinov3-convnext", {"tiny": "convnext_tiny.dinov3_lvd1689m", "small": "convnext_small.dinov3_lvd1689m",
                                          "base": "convnext_base.dinov3_lvd1689m", "large": "convnext_large.dinov3_lvd1689m"},
                      "base", "DINOv3 distilled into ConvNeXt (4-D feature map)", "avg pool of the map"),
        TeacherFamily("dino", {"small": "vit_small_patch16_224.dino", "base": "vit_base_patch16_224.dino"},
                      "base", "DINO (self-supervised, IN-1k)"),
        TeacherFamily("deit3", {"small": "deit3_small_patch16_224.fb_in1k", "base": "deit3_base_patch16_224.fb_in1k",
                                "large": "deit3_large_patch16_224.fb_in1k", "huge": "deit3_huge_patch14_224.fb_in1k"},
                      "base", "DeiT-III (supervised, IN-1k)"),
        TeacherFamily("clip", {"base": "vit_base_patch16_clip_224.openai", "large": "vit_large_patch14_clip_224.openai"},
                      "base", "CLIP image tower (OpenAI)"),
        TeacherFamily("dfn-clip", {"large": "vit_large_patch14_clip_224.dfn2b", "huge": "vit_huge_patch14_clip_224.dfn5b",
                                   "huge-378": "vit_huge_patch14_clip_378.dfn5b"},
                      "huge", "DFN-CLIP image tower (Apple, DFN-5B; RADIOv2.5's CLIP teacher)"),
        TeacherFamily("siglip", {"base": "vit_base_patch16_siglip_224.webli", "large": "vit_large_patch16_siglip_256.webli",
                                 "so400m": "vit_so400m_patch14_siglip_224.webli"},
                      "base", "SigLIP image tower", "attention pool (MAP; no CLS)"),
        TeacherFamily("siglip2", {"base": "vit_base_patch16_siglip_224.v2_webli", "large": "vit_large_patch16_siglip_256.v2_webli",
                                  "so400m": "vit_so400m_patch14_siglip_224.v2_webli", "giant": "vit_giantopt_patch16_siglip_256.v2_webli"},
                      "base", "SigLIP2 image tower (WebLI; RADIOv4's text-aligned teacher)", "attention pool (MAP; no CLS)"),
        TeacherFamily("c-radio", {"base": "vit_base_patch16_radio_v3.c_radio", "large": "vit_large_patch16_radio_v3.c_radio",
                                  "huge": "vit_huge_patch16_radio_v3.c_radio", "giant": "vit_giant_patch16_radio_v3.c_radio"},
                      "base", "C-RADIOv3 (NVIDIA, agglomerative: CLIP, SigLIP2, DINOv2, SAM; 8 prefix tokens, native 512 px)",
                      "summary tokens 0-2 concatenated (one per summary teacher, as RADIO's own model returns it)"),
        TeacherFamily("c-radio-v4", {"so400m": "vit_so400m_patch16_radio_v4.c_radio", "huge": "vit_huge_patch16_radio_v4.c_radio"},
                      "so400m", "C-RADIOv4 (NVIDIA: SigLIP2, DINOv3, SAM3; 10 prefix tokens, native 512 px)",
                      "summary tokens 0-1 concatenated (one per summary teacher, as RADIO's own model returns it)"),
        TeacherFamily("pe-core", {"tiny": "vit_pe_core_tiny_patch16_384.fb", "small": "vit_pe_core_small_patch16_384.fb",
                                  "base": "vit_pe_core_base_patch16_224.fb", "large": "vit_pe_core_large_patch14_336.fb",
                                  "gigantic": "vit_pe_core_gigantic_patch14_448.fb"},
                      "base", "Perception Encoder core (Meta, CLIP-trained)",
                      "attention pool (the embedding its contrastive loss is on; the CLS is left out of the patch tokens)"),
        TeacherFamily("pe-spatial", {"tiny": "vit_pe_spatial_tiny_patch16_512.fb", "small": "vit_pe_spatial_small_patch16_512.fb",
                                     "base": "vit_pe_spatial_base_patch16_512.fb", "large": "vit_pe_spatial_large_patch14_448.fb",
                                     "gigantic": "vit_pe_spatial_gigantic_patch14_448.fb"},
                      "base", "Perception Encoder spatial (Meta, dense-aligned)",
                      "avg pool of the patch tokens (trained on its patch tokens only)"),
        TeacherFamily("aimv2", {"large": "aimv2_large_patch14_224.apple_pt", "huge": "aimv2_huge_patch14_224.apple_pt",
                                "1b": "aimv2_1b_patch14_224.apple_pt", "3b": "aimv2_3b_patch14_224.apple_pt"},
                      "large", "AIMv2 (Apple, autoregressive pre-training)", "avg pool of the patch tokens (no CLS)"),
        TeacherFamily("sam", {"base": "samvit_base_patch16.sa1b", "large": "samvit_large_patch16.sa1b",
                              "huge": "samvit_huge_patch16.sa1b"},
                      "base", "SAM image encoder (SA-1B; 4-D neck map of 256 channels, windowed attention)",
                      "avg pool of the neck map (no CLS)", resolution=1024),
        TeacherFamily("efficientnet-lite", {"lite0": "efficientnet_lite0"}, "lite0",
                      "EfficientNet-Lite0 (supervised, IN-1k; 4-D feature map): weights from the `lite0` extra",
                      "avg pool of the map"),
        TeacherFamily("ibot", {"base": "vit_base_patch16_224"}, "base",
                      "iBOT (self-supervised, IN-1k; one of UNIC's four teachers): its released teacher checkpoint",
                      model_args={"pretrained_cfg_overlay": IMAGENET}, release="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/"
                              "vitb_16_rand_mask/checkpoint_teacher.pth"),
        TeacherFamily("dbot-ft", {"base": "vit_base_patch16_224"}, "base",
                      "dBOT fine-tuned on IN-1k (one of UNIC's four teachers): its released fine-tuned checkpoint",
                      "avg pool of the patch tokens then its fc_norm (no final norm on the patch tokens), as dBOT's "
                      "and UNIC's code take it", model_args={"global_pool": "avg", "pretrained_cfg_overlay": IMAGENET},
                      release="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/mmodal/dbot/"
                              "84.5_dbot_base_finetune.pth"),
        TeacherFamily("mae", {"base": "vit_base_patch16_224.mae", "large": "vit_large_patch16_224.mae",
                              "huge": "vit_huge_patch14_224.mae"},
                      "base", "MAE encoder (self-supervised, IN-1k)"),
    )
}


# width, patch (or, for a 4-D feature map, total stride) and prefix tokens (CLS and registers) of every alias
# model, so that `teachers` and `plan` answer without torch; tests/test_registry.py checks each against the model
# built on the meta device
SHAPES = {
    "vit_small_patch14_dinov2.lvd142m": (384, 14, 1), "vit_base_patch14_dinov2.lvd142m": (768, 14, 1),
    "vit_large_patch14_dinov2.lvd142m": (1024, 14, 1), "vit_giant_patch14_dinov2.lvd142m": (1536, 14, 1),
    "vit_small_patch14_reg4_dinov2.lvd142m": (384, 14, 5), "vit_base_patch14_reg4_dinov2.lvd142m": (768, 14, 5),
    "vit_large_patch14_reg4_dinov2.lvd142m": (1024, 14, 5), "vit_giant_patch14_reg4_dinov2.lvd142m": (1536, 14, 5),
    "vit_small_patch16_dinov3.lvd1689m": (384, 16, 5), "vit_small_plus_patch16_dinov3.lvd1689m": (384, 16, 5),
    "vit_base_patch16_dinov3.lvd1689m": (768, 16, 5), "vit_large_patch16_dinov3.lvd1689m": (1024, 16, 5),
    "vit_huge_plus_patch16_dinov3.lvd1689m": (1280, 16, 5), "vit_7b_patch16_dinov3.lvd1689m": (4096, 16, 5),
    "convnext_tiny.dinov3_lvd1689m": (768, 32, 0), "convnext_small.dinov3_lvd1689m": (768, 32, 0),
    "convnext_base.dinov3_lvd1689m": (1024, 32, 0), "convnext_large.dinov3_lvd1689m": (1536, 32, 0),
    "vit_small_patch16_224.dino": (384, 16, 1), "vit_base_patch16_224.dino": (768, 16, 1),
    "deit3_small_patch16_224.fb_in1k": (384, 16, 1), "deit3_base_patch16_224.fb_in1k": (768, 16, 1),
    "deit3_large_patch16_224.fb_in1k": (1024, 16, 1), "deit3_huge_patch14_224.fb_in1k": (1280, 14, 1),
    "vit_base_patch16_clip_224.openai": (768, 16, 1), "vit_large_patch14_clip_224.openai": (1024, 14, 1),
    "vit_large_patch14_clip_224.dfn2b": (1024, 14, 1), "vit_huge_patch14_clip_224.dfn5b": (1280, 14, 1),
    "vit_huge_patch14_clip_378.dfn5b": (1280, 14, 1),
    "vit_base_patch16_siglip_224.webli": (768, 16, 0), "vit_large_patch16_siglip_256.webli": (1024, 16, 0),
    "vit_so400m_patch14_siglip_224.webli": (1152, 14, 0),
    "vit_base_patch16_siglip_224.v2_webli": (768, 16, 0), "vit_large_patch16_siglip_256.v2_webli": (1024, 16, 0),
    "vit_so400m_patch14_siglip_224.v2_webli": (1152, 14, 0), "vit_giantopt_patch16_siglip_256.v2_webli": (1536, 16, 0),
    "vit_base_patch16_radio_v3.c_radio": (768, 16, 8), "vit_large_patch16_radio_v3.c_radio": (1024, 16, 8),
    "vit_huge_patch16_radio_v3.c_radio": (1280, 16, 8), "vit_giant_patch16_radio_v3.c_radio": (1536, 16, 8),
    "vit_so400m_patch16_radio_v4.c_radio": (1152, 16, 10), "vit_huge_patch16_radio_v4.c_radio": (1280, 16, 10),
    "vit_pe_core_tiny_patch16_384.fb": (192, 16, 1), "vit_pe_core_small_patch16_384.fb": (384, 16, 1),
    "vit_pe_core_base_patch16_224.fb": (768, 16, 1), "vit_pe_core_large_patch14_336.fb": (1024, 14, 1),
    "vit_pe_core_gigantic_patch14_448.fb": (1536, 14, 0),
    "vit_pe_spatial_tiny_patch16_512.fb": (192, 16, 1), "vit_pe_spatial_small_patch16_512.fb": (384, 16, 1),
    "vit_pe_spatial_base_patch16_512.fb": (768, 16, 1), "vit_pe_spatial_large_patch14_448.fb": (1024, 14, 1),
    "vit_pe_spatial_gigantic_patch14_448.fb": (1536, 14, 0),
    "aimv2_large_patch14_224.apple_pt": (1024, 14, 0), "aimv2_huge_patch14_224.apple_pt": (1536, 14, 0),
    "aimv2_1b_patch14_224.apple_pt": (2048, 14, 0), "aimv2_3b_patch14_224.apple_pt": (3072, 14, 0),
    "samvit_base_patch16.sa1b": (256, 16, 0), "samvit_large_patch16.sa1b": (256, 16, 0),
    "samvit_huge_patch16.sa1b": (256, 16, 0),
    "efficientnet_lite0": (1280, 32, 0),
    "vit_base_patch16_224.mae": (768, 16, 1), "vit_large_patch16_224.mae": (1024, 16, 1),
    "vit_huge_patch14_224.mae": (1280, 14, 1), "vit_base_patch16_224": (768, 16, 1),
}
ALIAS_RESOLUTION = 224  # UNIC's input size: aliases use it unless --resolution (or their family) says otherwise
CONV_MODELS = {"efficientnet_lite0", "convnext_tiny.dinov3_lvd1689m", "convnext_small.dinov3_lvd1689m",
               "convnext_base.dinov3_lvd1689m", "convnext_large.dinov3_lvd1689m", "samvit_base_patch16.sa1b",
               "samvit_large_patch16.sa1b", "samvit_huge_patch16.sa1b"}  # a 4-D map: grid ceil(resolution / stride)
# models that have a CLS token but whose summary is their pooled embedding (the pool their own objective shapes);
# every other model with a CLS token is summarised by it (whatever timm's default global_pool), one without by its pool
POOLED_SUMMARY = tuple(m for f in ("pe-core", "pe-spatial") for m in FAMILIES[f].sizes.values())
# models whose summary is their first N prefix tokens concatenated: C-RADIO keeps a CLS token per teacher it distils
# and its own model returns those of the teachers trained with a summary loss, flattened (NVlabs/RADIO
# ``radio_model.py`` ``_extract_final``: ``all_summary[:, summary_idxs]`` then ``flatten(1)``; ``hubconf.py``:
# ``summary_idxs`` = the first index of each ``use_summary`` teacher, from the checkpoint's args). Its README lists
# the teachers in order, v3 ``clip``, ``siglip2-g``, ``dino_v2``, ``sam`` and v4 ``siglip2-g``, ``dino_v3``, ``sam3``;
# SAM has no summary: tokens 0-2 for v3, 0-1 for v4. timm drops these indices when it converts the weights.
SUMMARY_TOKENS = {**{m: 3 for m in FAMILIES["c-radio"].sizes.values()},
                  **{m: 2 for m in FAMILIES["c-radio-v4"].sizes.values()}}
MODEL_PREFIXES = ("timm:", "local-dir:", "hf-hub:")  # a model named outright, not an alias


def summary_kind(model_id: str, has_cls: bool, model_args: dict | None = None) -> str:
    """How a model's summary is taken: "cls" (its CLS token) or "pooled" (its own pooled embedding). A model built
    with a ``global_pool`` argument (dBOT-ft's ``avg``) is summarised by that pool ("token": the CLS)."""
    pool = (model_args or {}).get("global_pool")
    if pool is not None:
        return "cls" if pool == "token" and has_cls else "pooled"
    return "cls" if has_cls and model_id not in POOLED_SUMMARY else "pooled"


def family_model_args(teacher: str, model_args: dict | None = None) -> dict:
    """An alias's own timm arguments (dBOT-ft's average pool) with ``model_args`` on top; others' as given."""
    family = FAMILIES.get(teacher)
    return {**(family.model_args if family else {}), **(model_args or {})}


def release_problem(teacher: str, weights: str | None) -> str | None:
    """The one line for an alias whose weights are not on the hub when no ``--weights`` is given (None: fine)."""
    family = FAMILIES.get(teacher)
    if weights is None and family is not None and family.release:
        return (f"{teacher} weights are not on the Hugging Face hub: download the release ({family.release}) and pass "
                "--weights FILE (read as released, no conversion)")
    return None


@dataclass(frozen=True)
class AliasShape:
    """What an alias model's features look like at a resolution, known without building it."""

    model_id: str
    dim: int
    grid: tuple[int, int]
    resolution: int
    summary_tokens: int = 1  # the summary's width is dim x summary_tokens (SUMMARY_TOKENS)


def alias_shape(teacher: str, size: str | None, resolution: int) -> AliasShape:
    """Width and token grid of an alias at ``resolution`` (torch-free)."""
    model_id = alias_model(teacher, size)
    dim, step, _ = SHAPES[model_id]
    side = -(-resolution // step) if model_id in CONV_MODELS else resolution // step
    return AliasShape(model_id, dim, (side, side), resolution, SUMMARY_TOKENS.get(model_id, 1))


def split_alias(teacher: str, size: str | None) -> tuple[str, str | None]:
    """``ALIAS:SIZE`` (as ``plan --teachers`` takes it) as (alias, size); ``timm:<name>`` and plain aliases as given."""
    if teacher.startswith(MODEL_PREFIXES) or ":" not in teacher:
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
    """``resolution``, else its family's for an alias (224, UNIC's, not the hub model's native size: DINOv2's 518 px
    gives 37x37 tokens, 7x the bytes; SAM's 1024), else None (the named model's own size)."""
    if resolution or teacher.startswith(MODEL_PREFIXES):
        return resolution
    family = FAMILIES.get(teacher)
    return family.resolution if family else ALIAS_RESOLUTION


def model_spec(model_id: str) -> str:
    """The ``--teacher`` that names a recorded model id: ``timm:<id>``, or a ``local-dir:`` / ``hf-hub:`` id as it is."""
    return model_id if model_id.startswith(MODEL_PREFIXES[1:]) else f"timm:{model_id}"


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
