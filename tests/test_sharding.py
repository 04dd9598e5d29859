"""Sharding metadata, specs, named shardings, sharded init; 8-device runs in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import nnxlite as nnx
from nnxlite.functional import param_from_init

ROOT = Path(__file__).resolve().parents[1]
LECUN = nnx.initializers.lecun_normal()


class Block(nnx.Module):
    def __init__(self, *, ctx):
        self.w_in = param_from_init(nnx.with_partitioning(LECUN, ("embed", "mlp")), ctx.make_rng("params"), (4, 8))
        # Param(box) also picks the metadata up, for layers that do not use param_from_init.
        self.w_out = nnx.Param(nnx.with_partitioning(LECUN, ("mlp", "embed"))(ctx.make_rng("params"), (8, 4)))
        self.scale = nnx.Param(jnp.ones((4,)), sharding=("embed",))
        self.plain = nnx.Param(jnp.zeros((3,)))
        self.stat = nnx.BatchStat(jnp.zeros((8,)), sharding=("mlp",))

    def __call__(self, x):
        return (jax.nn.relu(x @ self.w_in.value) @ self.w_out.value) * self.scale.value


RULES = [("batch", "data"), ("embed", None), ("mlp", "model")]


# -- metadata ------------------------------------------------------------------------------------
def test_with_partitioning_metadata_reaches_params():
    b = Block(ctx=nnx.context(0))
    assert b.w_in.sharding_names == ("embed", "mlp") and type(b.w_in) is nnx.Param
    assert b.w_out.sharding_names == ("mlp", "embed") and type(b.w_out) is nnx.Param
    # The wrapped initializer draws exactly what the plain one does.
    key = jax.random.PRNGKey(3)
    boxed = nnx.with_partitioning(LECUN, ("a", "b"))(key, (4, 5), jnp.float32)
    assert isinstance(boxed, nnx.Partitioned)
    np.testing.assert_array_equal(boxed.value, LECUN(key, (4, 5), jnp.float32))
    # Explicit metadata wins over the box's; extra metadata is carried.
    p = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, ("a",), note="x")(key, (2,)), sharding=("b",))
    assert p.sharding_names == ("b",) and p.note == "x"
    # Metadata is static: it lands in the GraphDef and survives split/merge.
    gd, state = nnx.split(b)
    assert nnx.merge(gd, state).w_in.sharding_names == ("embed", "mlp")


def test_with_partitioning_wrong_rank_is_a_clear_error():
    with pytest.raises(TypeError, match="one entry per dimension"):
        nnx.with_partitioning(LECUN, "embed")
    m = nnx.Module()
    m.w = nnx.Param(nnx.with_partitioning(LECUN, ("embed", "mlp", "heads"))(jax.random.PRNGKey(0), (3, 4)))
    with pytest.raises(ValueError, match=r"w: sharding \('embed', 'mlp', 'heads'\) names 3 dimension\(s\) but the value has shape \(3, 4\)"):
        nnx.get_partition_spec(m)


def test_linear_accepts_with_partitioning():
    layer = nnx.Linear(4, 6, ctx=nnx.context(0), kernel_init=nnx.with_partitioning(LECUN, ("embed", "mlp")))
    assert layer.kernel.sharding_names == ("embed", "mlp")
    np.testing.assert_array_equal(
        layer.kernel.value, nnx.Linear(4, 6, ctx=nnx.context(0)).kernel.value
    )  # same draw as without the wrapper


# -- specs ---------------------------------------------------------------------------------------
def test_get_partition_spec_module_state_and_abstract():
    b = Block(ctx=nnx.context(0))
    expected_raw = {
        ("plain",): P(),
        ("scale",): P("embed"),
        ("stat",): P("mlp"),
        ("w_in",): P("embed", "mlp"),
        ("w_out",): P("mlp", "embed"),
    }
    specs = nnx.get_partition_spec(b)
    assert dict(zip(specs.paths(), specs.leaves())) == expected_raw
    assert specs.paths() == nnx.state(b).paths()
    mapped = {
        ("plain",): P(),
        ("scale",): P(None),
        ("stat",): P("model"),
        ("w_in",): P(None, "model"),
        ("w_out",): P("model", None),
    }
    # rules= argument, the context manager, and an abstract state from jax.eval_shape agree.
    _, abstract = jax.eval_shape(lambda: nnx.split(Block(ctx=nnx.context(0))))
    assert isinstance(abstract["w_in"].value, jax.ShapeDtypeStruct)  # a Param holding the abstract value
    via_arg = nnx.get_partition_spec(b, rules=RULES)
    with nnx.logical_axis_rules(RULES):
        via_ctx = nnx.get_partition_spec(nnx.state(b))
        via_abstract = nnx.get_partition_spec(abstract)
        with nnx.logical_axis_rules({"embed": "model", "mlp": None}):  # nesting: inner wins
            inner = nnx.get_partition_spec(b)
        assert nnx.get_logical_axis_rules() == tuple(RULES)
    assert nnx.get_logical_axis_rules() is None
    for s in (via_arg, via_ctx, via_abstract):
        assert dict(zip(s.paths(), s.leaves())) == mapped
    assert inner["w_in"] == P("model", None) and inner["stat"] == P(None)
    # The spec State keeps the Variable types: it splits like the state it describes.
    trainable_specs, rest_specs = nnx.split_trainable(via_arg)
    assert rest_specs.paths() == (("stat",),)


def test_missing_rule_and_bad_rank_errors_name_the_path():
    b = Block(ctx=nnx.context(0))
    with pytest.raises(KeyError) as e:
        nnx.get_partition_spec(b, rules=[("embed", None)])
    text = str(e.value)
    assert "'mlp'" in text and "stat" in text and "('mlp', None)" in text
    b.scale.set_metadata(sharding=("embed", "mlp"))
    with pytest.raises(ValueError, match=r"scale: sharding \('embed', 'mlp'\) names 2 dimension\(s\) but the value has shape \(4,\)"):
        nnx.get_partition_spec(b)


def test_tuple_axes_and_rule_priority():
    rules = [("batch", ("data", "fsdp")), ("mlp", "model"), ("heads", "model"), ("embed", "fsdp")]
    assert nnx.logical_to_mesh_axes(("batch", "embed"), rules) == P(("data", "fsdp"), None)
    assert nnx.logical_to_mesh_axes(("embed", "heads"), rules) == P("fsdp", "model")
    assert nnx.logical_to_mesh_axes((("embed", "mlp"), None), rules) == P(("fsdp", "model"), None)
    assert nnx.logical_to_mesh_axes(P("embed", None), rules) == P("fsdp", None)
    # No rules: logical names are the mesh axes.
    assert nnx.logical_to_mesh_axes(("data", None)) == P("data", None)


LOGICAL = ["batch", "embed", "mlp", "heads", "kv", "vocab"]
MESH = [None, "data", "model", "fsdp"]


@settings(max_examples=150, deadline=None)
@given(
    rules=st.lists(st.tuples(st.sampled_from(LOGICAL), st.sampled_from(MESH)), min_size=1, max_size=8),
    data=st.data(),
)
def test_logical_to_mesh_axes_matches_flax(rules, data):
    linen = pytest.importorskip("flax.linen")
    known = sorted({name for name, _ in rules})
    axes = data.draw(st.lists(st.sampled_from(known + [None]), max_size=4))
    named = [a for a in axes if a is not None]
    if len(named) != len(set(named)):
        return  # Flax rejects repeated logical names in one array
    ours = nnx.logical_to_mesh_axes(tuple(axes), rules)
    theirs = linen.logical_to_mesh_axes(tuple(axes), tuple(rules))
    assert tuple(ours) == tuple(theirs), (axes, rules)


# -- named shardings and sharded init on this process's devices --------------------------------------
def test_get_named_sharding_and_errors():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    b = Block(ctx=nnx.context(0))
    shardings = nnx.get_named_sharding(b, mesh, rules=RULES)
    assert shardings["w_in"] == NamedSharding(mesh, P(None, "model"))
    assert shardings["plain"] == NamedSharding(mesh, P())
    with pytest.raises(ValueError) as e:
        nnx.get_named_sharding(b, mesh)  # no rules: 'embed' and 'mlp' are not mesh axes
    text = str(e.value)
    assert "w_in" in text and "'embed'" in text and "('data', 'model')" in text and "logical_axis_rules" in text


def test_sharded_init_and_transform_init_with_out_shardings():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    with nnx.logical_axis_rules(RULES):
        b = nnx.sharded_init(lambda: Block(ctx=nnx.context(0)), mesh)
    assert b.w_in.value.sharding == NamedSharding(mesh, P(None, "model"))
    assert b.stat.value.sharding == NamedSharding(mesh, P("model"))
    # Compiled and eager initializers may differ in the last bit (XLA fuses the scaling differently).
    np.testing.assert_allclose(b.w_in.value, Block(ctx=nnx.context(0)).w_in.value, rtol=1e-6, atol=1e-7)
    assert b.w_in.sharding_names == ("embed", "mlp")
    # The same through transform: init_fn redraws under jit with out_shardings.
    init_fn, _ = nnx.transform(Block(ctx=nnx.context(0)))
    key = jax.random.PRNGKey(1)
    abstract = jax.eval_shape(init_fn, key)
    shardings = nnx.get_named_sharding(abstract, mesh, rules=RULES)
    v = jax.jit(init_fn, out_shardings=shardings)(key)
    for path, s in zip(shardings.paths(), shardings.leaves()):
        assert v[path].sharding == s, path
    np.testing.assert_allclose(v["w_in"], init_fn(key)["w_in"], rtol=1e-6, atol=1e-7)  # compiled vs eager: last bit


# -- 8 simulated devices, in subprocesses (XLA_FLAGS must be set before jax starts) -----------------
def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("mesh_kind", ["explicit", "auto"])
def test_sharded_training_example_on_8_devices(mesh_kind, tmp_path):
    proc = _run([str(ROOT / "examples" / "sharded_training.py"), "--smoke", "--mesh", mesh_kind, "--out", str(tmp_path)])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["devices"] == 8 and summary["mesh"] == {"data": 4, "model": 2}
    assert summary["mesh_axis_types"] == mesh_kind
    assert summary["arrays_checked"] == 8  # 6 params + 2 batch stats kept their shardings
    assert summary["up_kernel_spec"] == "P(None, 'model')"
    assert summary["up_kernel_shard_shape"] == [8, 16]  # 32 hidden units split over 2 'model' devices
    assert summary["last_loss_mean_of_3"] < 0.7 * summary["first_loss_mean_of_3"]
    assert summary["batchnorm_mean_changed"]
    # The printed losses are the JSON's: step 0 is first_loss, the labelled means are the means.
    assert f"step    0  loss {summary['first_loss']:.4f}" in proc.stdout
    assert f"mean of the first 3 steps {summary['first_loss_mean_of_3']:.4f}" in proc.stdout
    assert (tmp_path / "sharded_training.png").read_bytes()[:4] == b"\x89PNG"
    assert "%|" in proc.stderr  # the tqdm progress bar


def test_sharded_training_example_fsdp_splits_all_state_8_ways(tmp_path):
    proc = _run([str(ROOT / "examples" / "sharded_training.py"), "--smoke", "--strategy", "fsdp", "--out", str(tmp_path)])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["mesh"] == {"data": 8} and summary["mesh_axis_types"] == "explicit"
    # Parameters, batch statistics and Adam's moments: each device holds exactly 1/8 of the bytes.
    assert summary["largest_device_share_of_state"] == pytest.approx(1 / 8)
    assert summary["up_kernel_spec"] == "P(None, 'data')"
    assert summary["last_loss_mean_of_3"] < 0.7 * summary["first_loss_mean_of_3"]


def test_sharded_training_example_help_describes_every_option():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sharded_training.py"), "--help"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--smoke", "--out", "--seed", "--steps", "--strategy", "--mesh", "--lr"):
        assert option in proc.stdout
    assert "(default: " in proc.stdout


SHARD_MAP_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import nnxlite as nnx

    class Noisy(nnx.Module):
        def __init__(self, *, ctx):
            self.ctx = ctx
        def __call__(self, x):
            return jnp.where(jax.random.bernoulli(self.ctx.dropout(), 0.5, x.shape), x, 0.0)

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    init_fn, apply_fn = nnx.transform(Noisy(ctx=nnx.context(dropout=3)))
    v = init_fn()
    x = jnp.ones((8 * 4, 64))

    def run(rng_axes):
        f = lambda v, x: apply_fn(v, x, rng_axes=rng_axes)
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())))(v, x)

    same, _ = run(None)
    folded, new = run("data")
    blocks = np.asarray(folded).reshape(8, 4, 64)
    same_blocks = np.asarray(same).reshape(8, 4, 64)
    key = v["ctx"]["dropout"]["key"][...]
    ref = jax.jit(jax.vmap(lambda i: apply_fn(v, x[:4], rngs={"dropout": jax.random.fold_in(key, i)})[0]))(
        jnp.arange(8, dtype=jnp.uint32))

    # The context-manager form, on a merged module inside shard_map.
    gd, st = nnx.split(Noisy(ctx=nnx.context(dropout=3)))
    def g(st, x):
        m = nnx.merge(gd, st)
        with nnx.fold_rngs(m, "data"):
            y = m(x)
        return y, nnx.state(m)
    cm, cm_state = jax.jit(jax.shard_map(g, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())))(st, x)

    print(json.dumps({
        "unfolded_all_equal": all(np.array_equal(same_blocks[0], b) for b in same_blocks),
        "folded_distinct": len({b.tobytes() for b in blocks}),
        "matches_reference": all(np.array_equal(b, r) for b, r in zip(blocks, ref)),
        "count": int(new["ctx"]["dropout"]["count"]),
        "key_restored": bool(np.array_equal(jax.random.key_data(new["ctx"]["dropout"]["key"][...]), jax.random.key_data(key))),
        "cm_matches": bool(np.array_equal(np.asarray(cm), np.asarray(folded))),
        "cm_count": int(cm_state["ctx"]["dropout"]["count"]),
    }))
    """
)


def test_per_device_rng_under_shard_map_on_8_devices():
    proc = _run(["-c", SHARD_MAP_SCRIPT])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["unfolded_all_equal"]  # the pitfall: every device draws the same mask
    assert r["folded_distinct"] == 8  # fold_rngs: 8 devices, 8 different masks
    assert r["matches_reference"]  # device i used fold_in(key, i)
    assert r["count"] == 1 and r["key_restored"]  # replicated state (out_specs=P()) stays consistent
    assert r["cm_matches"] and r["cm_count"] == 1


# ------------------------------------------------ flax.nnx's with_partitioning spellings
@pytest.fixture(params=["nnxlite", "flax"])
def lib(request):
    if request.param == "flax":
        return pytest.importorskip("flax.nnx")
    return nnx


def _names(variable):
    """The logical axis names a Variable carries (flax 0.12 calls the entry `out_sharding`)."""
    meta = variable.get_metadata()
    return meta.get("out_sharding", meta.get("sharding"))


@pytest.fixture
def mesh_ab():
    # flax 0.12 places a partitioned Variable on the current mesh at creation, so it needs one.
    mesh = jax.make_mesh((1, 1), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        yield mesh


@pytest.mark.parametrize("spelling", ["positional", "keyword", "partition_spec", "with_mesh", "with_rules"])
def test_with_partitioning_call_shapes_in_a_layer(lib, mesh_ab, spelling):
    init = lib.initializers.lecun_normal()
    wrapped = {
        "positional": lambda: lib.with_partitioning(init, ("a", "b")),
        "keyword": lambda: lib.with_partitioning(init, sharding=("a", "b")),
        "partition_spec": lambda: lib.with_partitioning(init, P("a", "b")),
        "with_mesh": lambda: lib.with_partitioning(init, ("a", "b"), mesh=mesh_ab),
        "with_rules": lambda: lib.with_partitioning(init, ("a", "b"), sharding_rules=(("x", "a"),)),
    }[spelling]()
    layer = lib.Linear(2, 3, kernel_init=wrapped, rngs=lib.Rngs(0))
    assert tuple(_names(layer.kernel)) == ("a", "b")
    expected = init(lib.Rngs(0).params(), (2, 3), jnp.float32)  # the wrapper draws exactly what init draws
    np.testing.assert_array_equal(layer.kernel[...], expected)
    if spelling == "with_mesh":
        assert layer.kernel.get_metadata()["mesh"] is mesh_ab
    if spelling == "with_rules":
        assert layer.kernel.get_metadata()["sharding_rules"] == (("x", "a"),)


def test_with_partitioning_of_an_initializer_without_arguments(lib, mesh_ab):
    w = lib.Param(lib.with_partitioning(lambda: jnp.arange(4.0).reshape(2, 2), sharding=("a", "b"))())
    assert tuple(_names(w)) == ("a", "b")
    np.testing.assert_array_equal(w[...], np.arange(4.0).reshape(2, 2))


def test_with_partitioning_none_records_no_axis_names(lib, mesh_ab):
    layer = lib.Linear(2, 3, kernel_init=lib.with_partitioning(lib.initializers.ones, None), rngs=lib.Rngs(0))
    assert _names(layer.kernel) is None
    np.testing.assert_array_equal(layer.kernel[...], np.ones((2, 3)))


def test_with_partitioning_sharding_may_be_left_out_and_axes_is_the_older_name():
    p = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros)(jax.random.PRNGKey(0), (2,)))
    assert "sharding" not in p.get_metadata()
    q = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, axes=("a",))(jax.random.PRNGKey(0), (2,)))
    assert q.sharding_names == ("a",)
    with pytest.raises(TypeError, match="give the axis names once"):
        nnx.with_partitioning(nnx.initializers.zeros, ("a",), axes=("a",))


def test_with_metadata_out_sharding_in_a_layer(lib, mesh_ab):
    layer = lib.Linear(
        3, 3, rngs=lib.Rngs(0),
        kernel_init=lib.with_metadata(lib.initializers.lecun_normal(), out_sharding=("a", "b")),
        bias_init=lib.with_metadata(lib.initializers.zeros_init(), out_sharding=("b",)),
    )
    assert tuple(_names(layer.kernel)) == ("a", "b") and tuple(_names(layer.bias)) == ("b",)
    np.testing.assert_array_equal(layer.bias[...], np.zeros(3))
