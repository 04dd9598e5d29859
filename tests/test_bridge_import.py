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
