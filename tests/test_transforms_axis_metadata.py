"""transform_metadata / PARTITION_NAME on vmap, scan, pmap and nnx.transform_metadata, against flax.nnx."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlite as nnx

AXES = ("layers", "embed", "b", "x", "L")


@pytest.fixture
def mesh():
    m = jax.make_mesh((1,) * len(AXES), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
    with jax.set_mesh(m):  # flax needs a mesh to create Variables with out_sharding
        yield m


def _scenario(lib):
    """Metadata seen at each step of the stacked-layer path, for one library."""
    log = {}

    class Block(lib.Module):
        def __init__(self):
            self.w = lib.Param(jnp.ones((2, 3)), out_sharding=("embed", None))
            self.b = lib.Param(jnp.zeros((3,)))

    stack = lib.vmap(lambda: Block(), axis_size=4, transform_metadata={lib.PARTITION_NAME: "layers"})()
    log["init"] = (stack.w.shape, stack.w.out_sharding)
    seen = []

    @lib.scan(in_axes=(lib.Carry, 0), out_axes=lib.Carry, transform_metadata={lib.PARTITION_NAME: "layers"})
    def forward(x, blk):
        seen.append(blk.w.out_sharding)
        return x @ blk.w[...] @ jnp.ones((3, 2))

    log["y"] = np.asarray(forward(jnp.ones((1, 2)), stack))
    log["scan_inside"], log["scan_after"] = tuple(seen), stack.w.out_sharding
    m = lib.vmap(lambda: Block(), out_axes=1, axis_size=5, transform_metadata={lib.PARTITION_NAME: "b"})()
    log["out_axes_1"] = (m.w.shape, m.w.out_sharding)
    seen = []
    lib.vmap(lambda m: seen.append(m.w.out_sharding), in_axes=1, transform_metadata={lib.PARTITION_NAME: "b"})(m)
    log["in_axes_1"] = (tuple(seen), m.w.out_sharding)

    class Tagged(lib.Module):
        def __init__(self):
            self.w = lib.Param(jnp.ones((2,)), out_sharding=("x",), tags=("t",))

    t = lib.vmap(lambda: Tagged(), axis_size=3, transform_metadata={lib.PARTITION_NAME: "L", "tags": "T"})()
    log["other_key"] = (t.w.out_sharding, t.w.get_metadata()["tags"])
    p = lib.Param(jnp.zeros((4, 3)), out_sharding=("layers", "embed"))
    seen = []
    lib.transform_metadata(lambda p: seen.append(p.out_sharding), partition="layers")(p)
    q = lib.transform_metadata(lambda: lib.Param(jnp.zeros((3,)), out_sharding=("embed",)), partition="layers")()
    log["standalone"] = (tuple(seen), p.out_sharding, q.out_sharding)
    return log


def test_stacked_layer_metadata_matches_flax(mesh):
    fnnx = pytest.importorskip("flax.nnx")
    ours, theirs = _scenario(nnx), _scenario(fnnx)
    assert ours["init"] == ((4, 2, 3), ("layers", "embed", None))
    assert ours["scan_inside"] == (("embed", None),) and ours["scan_after"] == ("layers", "embed", None)
    for key in ours:
        if key == "y":
            np.testing.assert_allclose(ours[key], theirs[key])
        else:
            assert ours[key] == theirs[key], key


def test_stacked_layer_metadata_without_flax():
    log = _scenario(nnx)  # nnxlite needs no mesh for metadata
    assert log["out_axes_1"] == ((2, 5, 3), ("embed", "b", None))
    assert log["in_axes_1"] == ((("embed", None),), ("embed", "b", None))
    assert log["other_key"] == (("L", "x"), ("T", "t"))
    assert log["standalone"] == ((("embed",),), ("layers", "embed"), ("layers", "embed"))


def test_nnxlite_spellings_of_sharding_metadata_follow_too():
    stack = nnx.vmap(
        lambda: (nnx.Param(jnp.ones(3), sharding=("embed",)), nnx.Param(jnp.ones(3), sharding_names=("embed",))),
        axis_size=2, transform_metadata={nnx.PARTITION_NAME: "layers"},
    )()
    assert stack[0].sharding_names == ("layers", "embed") and stack[1].get_metadata("sharding_names") == ("layers", "embed")
    # padding with None when the metadata is shorter than the stacked axis, as flax does
    short = nnx.vmap(
        lambda: nnx.Param(jnp.ones((2, 3)), out_sharding=("embed",)), out_axes=2, axis_size=4,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )()
    assert short.shape == (2, 3, 4) and short.out_sharding == ("embed", None, "layers")


def test_without_transform_metadata_nothing_changes():
    stack = nnx.vmap(lambda: nnx.Param(jnp.ones(3), out_sharding=("embed",)), axis_size=2)()
    assert stack.out_sharding == ("embed",)
    seen = []
    nnx.vmap(lambda p: seen.append(p.out_sharding))(stack)
    assert seen == [("embed",)]


def test_wrong_partition_name_names_the_variable():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((4, 3)), out_sharding=("layers", "embed"))

    m = M()
    with pytest.raises(ValueError, match=r"w \(out_sharding=\('layers', 'embed'\)\) has 'layers' at mapped axis 0.*'stack'"):
        nnx.vmap(lambda m: None, transform_metadata={nnx.PARTITION_NAME: "stack"})(m)
    assert m.w.out_sharding == ("layers", "embed")
    with pytest.raises(ValueError, match="no entry for mapped axis 2"):
        nnx.vmap(lambda m: None, in_axes=2, transform_metadata={nnx.PARTITION_NAME: "layers"})(
            nnx.Param(jnp.ones((1, 1, 3)), out_sharding=("a",))
        )


def test_scan_creating_a_stack_and_pmap_accept_transform_metadata():
    xs = jnp.arange(3.0)

    def step(c, x):
        return c + x, nnx.Param(jnp.full((2,), x), out_sharding=("embed",))

    total, stack = nnx.scan(step, transform_metadata={nnx.PARTITION_NAME: "layers"})(jnp.zeros(()), xs)
    assert float(total) == 3.0 and stack.shape == (3, 2) and stack.out_sharding == ("layers", "embed")
    n = jax.local_device_count()
    made = nnx.pmap(
        lambda x: nnx.Param(x * jnp.ones(2), sharding=("embed",)), transform_metadata={nnx.PARTITION_NAME: "dev"}
    )(jnp.ones(n))
    assert made.shape == (n, 2) and made.sharding_names == ("dev", "embed")
