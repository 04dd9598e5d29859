"""The package layout: the core loads without its pretty-printer, transforms, layers; transforms re-exports."""

import subprocess
import sys
from pathlib import Path

import nnxlite as nnx

ROOT = Path(__file__).resolve().parent.parent

CORE = ["_epoch", "_data", "variables", "_variable_flax", "_state_flax", "filters", "state", "graph", "pytree", "module", "rng", "_random_methods"]


def test_core_does_not_import_display_transforms_or_layers_at_load():
    # A bare `nnxlite` package object stands in for nnxlite/__init__.py (which imports everything),
    # so only what the core modules themselves import gets loaded.
    code = f"""
import sys, types
pkg = types.ModuleType("nnxlite")
pkg.__path__ = [{str(ROOT / 'nnxlite')!r}]
sys.modules["nnxlite"] = pkg
import importlib
for m in {CORE!r}:
    importlib.import_module("nnxlite." + m)
loaded = sorted(m for m in sys.modules if m.startswith("nnxlite."))
print(loaded)
bad = [m for m in loaded if m.split(".")[1] not in {CORE!r}]
assert not bad, bad
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout


def test_transforms_package_reexports_the_public_names():
    from nnxlite.transforms import autodiff, control, loops, mapping, shapes
    from nnxlite.transforms import _lift

    expected = {
        "jit": sys.modules["nnxlite.transforms.jit"].jit,
        "vmap": mapping.vmap,
        "pmap": mapping.pmap,
        "shard_map": mapping.shard_map,
        "while_loop": loops.while_loop,
        "fori_loop": loops.fori_loop,
        "scan": loops.scan,
        "cond": control.cond,
        "switch": control.switch,
        "grad": autodiff.grad,
        "value_and_grad": autodiff.value_and_grad,
        "remat": autodiff.remat,
        "jvp": autodiff.jvp,
        "vjp": autodiff.vjp,
        "custom_vjp": autodiff.custom_vjp,
        "eval_shape": shapes.eval_shape,
        "checkify": shapes.checkify,
        "transform_metadata": sys.modules["nnxlite.transforms.axis_metadata"].transform_metadata,
        "Carry": _lift.Carry,
    }
    assert set(nnx.transforms.__all__) == set(expected)
    for name, obj in expected.items():
        assert getattr(nnx.transforms, name) is obj, name
        assert getattr(nnx, name) is obj, name


def test_repr_still_works_with_lazy_display_import():
    model = nnx.Linear(2, 3, ctx=nnx.context(0))
    text = repr(model)
    assert text.startswith("Linear(") and "Param: 9" in text


def test_import_does_not_start_the_jax_backend():
    # flax programs import the library first and then set platform options such as
    # `jax_num_cpu_devices`; JAX refuses those once a backend exists.
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import jax
import nnxlite, nnxlite.nn, nnxlite.transforms, nnxlite.training, nnxlite.checkpoint, nnxlite.compat
jax.config.update("jax_num_cpu_devices", 4)
assert len(jax.devices()) == 4, jax.devices()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
