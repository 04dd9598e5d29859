"""nnxlite.bridge is optional: ``import nnxlite`` never imports it (nor flax), and without flax its ImportError says what to install."""

import importlib.util
import subprocess
import sys
import textwrap

import pytest


def _has_flax() -> bool:
    try:
        return importlib.util.find_spec("flax") is not None
    except ImportError:
        return False


def test_import_nnxlite_does_not_import_the_bridge_or_flax():
    code = "import sys, nnxlite; assert 'nnxlite.bridge' not in sys.modules; assert 'flax' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=_root())
    assert result.returncode == 0, result.stderr


def test_import_bridge_without_flax_says_which_extra_to_install():
    code = textwrap.dedent(
        """
        import sys
        class NoFlax:
            def find_spec(self, name, path=None, target=None):
                if name == "flax" or name.startswith("flax."):
                    raise ModuleNotFoundError("No module named " + repr(name), name=name)
        sys.meta_path.insert(0, NoFlax())
        import nnxlite
        try:
            import nnxlite.bridge
        except ImportError as e:
            print("MESSAGE:", e)
        else:
            raise SystemExit("imported without flax")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=_root())
    assert result.returncode == 0, result.stderr + result.stdout
    assert 'pip install "nnxlite[parity]"' in result.stdout


def _root():
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])


@pytest.mark.skipif(not _has_flax(), reason="needs flax")
def test_nnx_bridge_attribute_imports_it_on_first_use():
    code = "import sys, nnxlite; b = nnxlite.bridge; assert 'nnxlite.bridge' in sys.modules and b.ToNNX is not None"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=_root())
    assert result.returncode == 0, result.stderr



@pytest.mark.skipif(not _has_flax(), reason="needs flax")
def test_nnx_wrappers_attribute_is_the_bridge_wrappers_module_imported_on_first_use():
    code = (
        "import sys, nnxlite; assert 'nnxlite.bridge' not in sys.modules and 'flax' not in sys.modules; "
        "w = nnxlite.wrappers; import nnxlite.bridge.wrappers as bw; assert w is bw; "
        "assert w.ToNNX is nnxlite.bridge.ToNNX and w.lazy_init is nnxlite.bridge.lazy_init"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=_root())
    assert result.returncode == 0, result.stderr


@pytest.fixture(params=["nnxlite", "flax"])
def lib(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    pytest.importorskip("flax.linen")
    import nnxlite

    return nnxlite


def test_wrappers_to_nnx_and_lazy_init_as_flax_spells_them(lib):
    import jax.numpy as jnp
    import numpy as np
    from flax import linen

    model = lib.wrappers.lazy_init(lib.wrappers.ToNNX(linen.Dense(3), rngs=lib.Rngs(0)), jnp.ones((1, 2)))
    x = jnp.arange(4.0).reshape(2, 2)
    expected = np.asarray(x) @ np.asarray(model.kernel[...]) + np.asarray(model.bias[...])
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)
