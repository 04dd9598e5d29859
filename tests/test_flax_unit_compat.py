"""Behaviours flax.nnx 0.12's own unit tests rely on (tests/nnx of google/flax), checked on
nnxlite and, when flax is installed, on flax.nnx itself with the same code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx


def _libs():
    libs = [nnx]
    try:
        from flax import nnx as fnnx
    except ImportError:
        pass
    else:
        libs.append(fnnx)
    return libs


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_overridden_get_value_hooks_every_read(lib):
    class Plus3(lib.Param):
        def get_value(self, **kwargs):
            return super().get_value(**kwargs) + 3

    class Foo(lib.Module):
        def __init__(self):
            self.x = Plus3(jnp.array([1, 2]))

    foo = Foo()
    np.testing.assert_array_equal(foo.x[...], [4, 5])
    np.testing.assert_array_equal(foo.x.value, [4, 5])
    assert int(foo.x[1]) == 5
    np.testing.assert_array_equal(jnp.asarray(foo.x), [4, 5])
    np.testing.assert_array_equal(foo.x.get_raw_value(), [1, 2])  # what is stored
    # State holds the stored value, not the hooked one.
    leaf = lib.state(foo)["x"]
    stored = leaf.get_raw_value() if hasattr(leaf, "get_raw_value") else leaf
    np.testing.assert_array_equal(stored, [1, 2])


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_overridden_set_value_hooks_every_write(lib):
    class Plus7(lib.Param):
        def set_value(self, value, **kwargs):
            super().set_value(value + 7, **kwargs)

    x = Plus7(jnp.array([1, 1]))
    x[...] = jnp.array([5, 5])
    np.testing.assert_array_equal(x.get_raw_value(), [12, 12])
    x.set_value(jnp.array([0, 0]))
    np.testing.assert_array_equal(x.get_raw_value(), [7, 7])
    x[0] = 1
    np.testing.assert_array_equal(x.get_raw_value(), [8, 7])  # set_value(1, index=0) stores 1 + 7 there


def test_plain_variables_keep_direct_accessors():
    # Only subclasses that override the hooks route through them (the common case stays fast).
    assert nnx.Param.value is nnx.Variable.value
    assert nnx.Param.__getitem__ is nnx.Variable.__getitem__

    class Hooked(nnx.Param):
        def get_value(self, **kwargs):
            return super().get_value(**kwargs) * 2

    class Child(Hooked):  # inherits the routing
        pass

    assert float(Child(jnp.float32(2.0)).value) == 4.0
    assert float(nnx.Param(jnp.float32(2.0)).get_value()) == 2.0


def test_value_setter_goes_through_overridden_set_value():
    class Plus7(nnx.Param):
        def set_value(self, value, **kwargs):
            super().set_value(value + 7, **kwargs)

    x = Plus7(jnp.array(0))
    x.value = jnp.array(1)
    assert int(x.get_raw_value()) == 8


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_compat_graph_mode_transforms_train_shared_modules(lib):
    # flax's integration test: ``nnx.compat.jit``/``value_and_grad`` keep graph semantics.
    class Model(lib.Module):
        def __init__(self, rngs):
            self.a = lib.Linear(2, 2, rngs=rngs)
            self.b = self.a  # shared

    model = Model(lib.Rngs(0))

    @lib.compat.jit
    def step(model, x):
        loss, grads = lib.compat.value_and_grad(lambda m: jnp.mean(m.b(m.a(x)) ** 2))(model)
        lib.update(model, jax.tree.map(lambda p, g: p - 0.1 * g, lib.state(model, lib.Param), grads))
        return loss

    x = jnp.ones((3, 2))
    losses = [float(step(model, x)) for _ in range(3)]
    assert losses[-1] < losses[0]
    assert model.a is model.b


def test_compat_names_are_the_top_level_functions():
    assert nnx.compat.jit is nnx.jit and nnx.compat.split is nnx.split and nnx.compat.vmap is nnx.vmap
    with pytest.raises(AttributeError, match="no_such_name"):
        nnx.compat.no_such_name


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_graphdef_is_generic_in_annotations(lib):
    def train_step(state: lib.State, graphdef: lib.GraphDef[lib.Linear]) -> lib.GraphDef[lib.Linear]:
        return graphdef

    graphdef, _ = lib.split(lib.Linear(2, 3, rngs=lib.Rngs(0)))
    assert train_step(None, graphdef) is graphdef


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_set_attributes_filters_and_graph_keyword(lib):
    model = lib.Sequential(lib.Dropout(0.5, rngs=lib.Rngs(0)), lib.BatchNorm(2, rngs=lib.Rngs(0)))
    model.set_attributes(lib.BatchNorm, use_running_average=True, graph=True)
    assert model.layers[1].use_running_average is True
    model.set_attributes(lib.Dropout, deterministic=True)
    assert model.layers[0].deterministic is True
    with pytest.raises((AttributeError, ValueError)):  # the filter selects no module with that attribute
        model.set_attributes(lib.Dropout, use_running_average=False)


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_einsum_kernel_operand_may_use_ellipsis(lib):
    x = jax.random.normal(jax.random.key(0), (8, 6, 7, 3, 4))
    layer = lib.Einsum("d...ab,bc...->ad...c", (4, 5, 6, 7), (6, 7, 5), rngs=lib.Rngs(0))
    y = layer(x)
    kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    expected = np.einsum("d...ab,bc...->ad...c", np.asarray(x), kernel) + bias
    assert y.shape == (3, 8, 6, 7, 5)
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_einsum_int_bias_shape(lib):
    layer = lib.Einsum("ik,kj->ij", (5, 4), 4, rngs=lib.Rngs(0))
    assert layer.bias.shape == (4,)
    assert layer(jnp.ones((2, 5))).shape == (2, 4)


def test_einsum_kernel_operand_naming_too_many_axes_is_an_error():
    with pytest.raises(ValueError, match="names 3 axes but kernel_shape"):
        nnx.Einsum("ab,bcd...->ac", (4, 5), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("lib", _libs(), ids=lambda m: m.__name__)
def test_graph_functions_accept_the_graph_keyword(lib):
    model = lib.Linear(2, 3, rngs=lib.Rngs(0))
    graphdef, state = lib.split(model, graph=True)
    assert lib.graphdef(model, graph=True) == graphdef
    assert sorted(lib.to_pure_dict(lib.state(model, lib.Param, graph=True))) == ["bias", "kernel"]
    other = lib.clone(model, graph=True)
    assert other is not model and other.kernel is not model.kernel
    np.testing.assert_array_equal(other.kernel[...], model.kernel[...])
    assert len(list(lib.iter_graph(model, graph=True))) >= 3
    assert [p for p, _ in lib.iter_modules(model, graph=True)] == [()]
