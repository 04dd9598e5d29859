"""Activations: the re-exports are JAX's functions, and PReLU against its formula and flax.nnx."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx
from nnxlite.nn import activations


def test_activations_are_exported_at_every_level_and_are_jax_functions():
    for name in activations.__all__:
        assert getattr(nnx, name) is getattr(nnx.nn, name) is getattr(activations, name)
    assert nnx.relu is jax.nn.relu and nnx.gelu is jax.nn.gelu and nnx.tanh is jnp.tanh


def test_common_activations_match_numpy_formulas():
    x = np.linspace(-3, 3, 7).astype(np.float32)
    np.testing.assert_allclose(nnx.relu(x), np.maximum(x, 0))
    np.testing.assert_allclose(nnx.silu(x), x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nnx.softmax(x), np.exp(x) / np.exp(x).sum(), rtol=1e-5)
    np.testing.assert_allclose(nnx.leaky_relu(x, 0.1), np.where(x >= 0, x, 0.1 * x), rtol=1e-6)


def test_prelu_formula_learned_slope_and_dtype():
    act = nnx.PReLU(0.2)
    assert nnx.state(act).paths() == (("negative_slope",),) and act.negative_slope.shape == ()
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(act(x), [-0.4, 0.0, 3.0], rtol=1e-6)
    graphdef, params = nnx.split(act)
    grad = jax.grad(lambda p: nnx.merge(graphdef, p)(x).sum())(params)
    assert float(grad.flat()[("negative_slope",)]) == -2.0  # d/da of a * (-2)
    assert nnx.PReLU(dtype=jnp.bfloat16)(x).dtype == jnp.bfloat16


def test_prelu_parity_with_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours, theirs = nnx.PReLU(0.3), fnnx.PReLU(0.3)
    x = jnp.linspace(-2, 2, 5)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6)


@pytest.fixture(params=["nnxlite", "flax"])
def lib(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnx


@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.float16])
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.float32])
def test_prelu_dtypes_as_flax(lib, x_dtype, param_dtype, dtype):
    act = lib.PReLU(negative_slope_init=0.02, param_dtype=param_dtype, dtype=dtype)
    assert act.negative_slope[...].dtype == param_dtype
    x = jnp.linspace(-10, 10, 20, dtype=x_dtype)
    y = act(x)
    # dtype=None: computed in the input's dtype (the slope is cast to it); else in `dtype`.
    compute = x_dtype if dtype is None else dtype
    assert y.dtype == compute
    slope = np.asarray(jnp.asarray(jnp.asarray(0.02, param_dtype), compute))
    xc = np.asarray(x.astype(compute)).astype(np.float64)
    expected = np.where(xc >= 0, xc, xc * slope.astype(np.float64))
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=1e-2 if compute != jnp.float32 else 1e-6)


@pytest.mark.parametrize("x_dtype, param_dtype", [(jnp.float16, jnp.float32), (jnp.float16, jnp.float16),
                                                  (jnp.float32, jnp.float16)])
def test_prelu_output_and_gradient_equal_flax_exactly(x_dtype, param_dtype):
    fnnx = pytest.importorskip("flax.nnx")
    x = jnp.linspace(-10, 10, 20, dtype=x_dtype)
    ours = nnx.PReLU(negative_slope_init=0.02, param_dtype=param_dtype)
    theirs = fnnx.PReLU(negative_slope_init=0.02, param_dtype=param_dtype)
    np.testing.assert_array_equal(ours(x), theirs(x))
    grad_ours = jax.grad(lambda m: m(x).mean())(ours).negative_slope[...]
    grad_theirs = jax.grad(lambda m: m(x).mean())(theirs).negative_slope[...]
    assert grad_ours.dtype == grad_theirs.dtype == param_dtype
    np.testing.assert_array_equal(grad_ours, grad_theirs)
