"""Options have one source: every field of every options class is reachable as a flag, from --config YAML
and from --set, with the same value; bad input is a one-line error before torch is even imported."""

import dataclasses
import json
import subprocess
import sys

import pytest
import typer
import yaml
from typer.testing import CliRunner

from unic_cache.cache.options import InfoOptions, VerifyOptions
from unic_cache.options.cli import options_command
from unic_cache.demo import DemoOptions
from unic_cache.distillation.options import DistillOptions
from unic_cache.evaluation.options import EvalOptions, TeacherTrainOptions
from unic_cache.extraction.options import ExtractOptions
from unic_cache.plan import PlanOptions
from unic_cache.shapes import ShapesOptions

from .conftest import HANG_GUARD
from .test_integrity import BLOCK_TORCH

CLASSES = {"extract": ExtractOptions, "distill": DistillOptions, "eval": EvalOptions, "train-teacher": TeacherTrainOptions,
           "make-shapes": ShapesOptions, "demo": DemoOptions, "info": InfoOptions, "verify": VerifyOptions, "plan": PlanOptions}


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict:
    """A value that differs from the default and passes the checks, for every field that needs one."""
    tmp = tmp_path_factory.mktemp("opts")
    run = tmp / "run"
    run.mkdir()
    (run / "student.safetensors").write_bytes(b"")
    (run / "heads.safetensors").write_bytes(b"")
    (run / "config.json").write_text('{"format": "unic-cache distill run"}')
    (tmp / "init.safetensors").write_bytes(b"")
    return {"codec": "int8", "patch_codec": "pca-8+int8", "loss": "gauss", "norm": "phis", "drop_norm": "sample", "teacher_drop": 0.25, "warmup": 0.25,
            "drop_path": 0.25, "crop_scale": (0.3, 0.9), "betas": (0.8, 0.9), "data": str(tmp),
            "init": str(tmp / "init.safetensors"), "students": {"mine": str(run)}, "out": str(tmp / "t.safetensors"),
            "model_args": {"depth": 2}, "teacher": "timm:x",
            "storage_options": {"s3": {"endpoint_url": "http://127.0.0.1:9", "anon": True}}, "cache": "c.zarr", "temperature": 0.5,
            "kinds": ["summary"], "lop_head": "prenorm", "lop_hidden": "student", "norm_stats": "running"}


def sample(f: dataclasses.Field, kind, samples: dict):
    if f.name in samples:
        return samples[f.name]
    default = f.default if f.default is not dataclasses.MISSING else None
    text = str(kind)
    if "bool" in text:
        return not default
    if "list" in text:
        return ["a", "b"]
    if "float" in text:
        return 0.75 if default != 0.75 else 0.5
    if "int" in text:
        return (default or 0) + 3
    return "x"


def flags(f: dataclasses.Field, value) -> list[str]:
    from unic_cache.options import flag_name

    if f.metadata["positional"]:
        return [str(value)]
    flag = flag_name(f)
    if isinstance(value, bool):
        on, _, off = flag.partition("/")
        return [on if value else (off or "--no-" + on[2:])]
    if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):  # PROTOCOL.KEY=VALUE
        return [a for p, d in value.items() for k, v in d.items() for a in (flag, f"{p}.{k}={json.dumps(v)}")]
    if isinstance(value, dict):
        return [a for k, v in value.items() for a in (flag, f"{k}={v}")]
    if isinstance(value, (list, tuple)) and f.metadata["parse"] is not None or isinstance(value, list):
        return [a for v in value for a in (flag, str(v))]
    if isinstance(value, tuple):
        return [flag, *map(str, value)]
    return [flag, str(value)]


@pytest.mark.parametrize("command", list(CLASSES))
def test_every_field_is_reachable_from_flags_yaml_and_set(command, samples, tmp_path):
    cls = CLASSES[command]
    got = []
    app = typer.Typer()
    options_command(app, command, cls, lambda opts, **extra: got.append(opts), "test")
    app.command("noop")(lambda: None)  # a second command keeps the command name on the line
    kinds = cls.field_types()
    required = {f.name: sample(f, kinds[f.name], samples) for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    runner = CliRunner()
    for f in dataclasses.fields(cls):
        value = sample(f, kinds[f.name], samples)
        base = {**required, f.name: value}
        positional = [a for g in dataclasses.fields(cls) if g.metadata["positional"] and g.name in base
                      for a in flags(g, base[g.name])]
        named = [a for g in dataclasses.fields(cls) if not g.metadata["positional"] and g.name in base
                 for a in flags(g, base[g.name])]
        config = tmp_path / f"{command}-{f.name}.yaml"
        config.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}))
        sets = [a for k, v in base.items() for a in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]
        for how, args in (("flags", positional + named), ("yaml", ["--config", str(config)]), ("set", sets)):
            got.clear()
            result = runner.invoke(app, [command, *args])
            assert result.exit_code == 0 and got, (f.name, how, result.output)
            assert getattr(got[0], f.name) == value, (f.name, how, getattr(got[0], f.name))


@pytest.mark.parametrize("args, message", [
    (["distill", "{data}", "--cache", "{cache}", "--batch-size", "-1", "--steps", "2"], "--batch-size must be >= 1"),
    (["distill", "{data}", "--cache", "{cache}", "--teachers", "nope", "--steps", "2"], "has no teacher 'nope'"),
    (["distill", "{data}", "--cache", "{tmp}/none.zarr", "--steps", "2"], "no cache at"),
    (["distill", "{data}", "--cache", "{cache}", "--init", "{tmp}/none.safetensors", "--steps", "2"], "--init not found"),
    (["distill", "{data}", "--cache", "{cache}", "--config", "{tmp}/bad.yaml"], "unknown distill option(s) no_such_key"),
    (["distill", "{data}", "--cache", "{cache}", "--set", "lr=fast", "--steps", "2"], "option lr takes a float"),
    (["extract", "{data}", "--cache", "{tmp}/c.zarr", "--teacher", "dinov2", "--views", "0"], "--views must be >= 1"),
    (["extract", "{data}", "--cache", "{tmp}/c.zarr", "--teacher", "dinov2", "--crop-scale", "0.9", "0.1"], "--crop-scale"),
    (["eval", "{data}", "--cache", "{cache}", "--student", "{tmp}"], "is not a finished distill run"),
    (["eval", "{tmp}/nodata", "--cache", "{cache}"], "not found"),
    (["train-teacher", "{data}", "--out", "{tmp}/t.pth", "--task", "shape"], "must be a .safetensors file"),
])
def test_bad_input_is_one_line_before_torch_is_imported(args, message, shapes_dir, clean_cache, tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: 2\nno_such_key: 1\n")
    args = [a.format(data=shapes_dir, cache=clean_cache, tmp=tmp_path) for a in args]
    code = BLOCK_TORCH + f"from unic_cache.cli import main\nsys.argv = ['unic-cache', *{args!r}]\nmain()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-1500:]
    assert message in lines[0], lines[0]


def test_the_options_names_before_0_2_still_import():
    """One suffix for every command's options; code written for the old names gets the same classes."""
    import unic_cache

    from unic_cache import DistillOptions, TeacherTrainOptions, ViewPlan

    with pytest.warns(DeprecationWarning, match="unic_cache.DistillConfig is unic_cache.DistillOptions since 0.2"):
        from unic_cache import DistillConfig, PlanConfig, TeacherTrainConfig
    assert (DistillConfig, TeacherTrainConfig, PlanConfig) == (DistillOptions, TeacherTrainOptions, ViewPlan)
    assert all(name.endswith("Options") for module, names in unic_cache._EXPORTS.items() if module.endswith("options")
               for name in names)


def test_the_public_api_is_one_screen_and_the_internals_it_exported_still_import():
    """``unic_cache.__all__`` is what a user's code needs (each name resolves); the internals 0.3 exported at the top
    are found where they live, and from the top with a warning that says where."""
    import importlib

    import unic_cache

    assert len(unic_cache.__all__) <= 40 and {"Cache", "TeacherStore", "extract", "distill", "evaluate", "run_pipeline",
                                              "plan", "UserError", "DistillOptions"} <= set(unic_cache.__all__)
    assert all(getattr(unic_cache, name) is not None for name in unic_cache.__all__)
    for module, names in unic_cache.MOVED.items():
        for name in names:
            assert name not in unic_cache.__all__
            with pytest.warns(DeprecationWarning, match=f"unic_cache.{name} is unic_cache.{module}.{name} since 0.4"):
                moved = getattr(unic_cache, name)
            assert moved is getattr(importlib.import_module(f"unic_cache.{module}"), name)
