"""Property-based tests: split -> merge round-trips random graphs with sharing and cycles."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

import nnxlite as nnx

VAR_TYPES = [nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Variable]

ref = st.one_of(
    st.tuples(st.just("node"), st.integers(0, 5)),
    st.tuples(st.just("var"), st.integers(0, 7)),
    st.tuples(st.just("static"), st.integers(-3, 3)),
    st.tuples(st.just("tuple"), st.integers(0, 3)),  # shared tuples from a pool
)
attr = st.one_of(ref, st.tuples(st.just("list"), st.lists(ref, max_size=3)), st.tuples(st.just("dict"), st.lists(ref, max_size=3)))
graph_spec = st.tuples(
    st.lists(st.lists(attr, max_size=4), min_size=1, max_size=6),  # attributes per node
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), min_size=8, max_size=8),  # var type, size
    # A pool of 4 tuples; tuple k may hold nodes, variables and tuples j < k.
    st.lists(st.lists(ref, min_size=1, max_size=3), min_size=4, max_size=4),
)


def build(spec):
    node_attrs, var_specs, tuple_specs = spec
    nodes = [nnx.Module() for _ in node_attrs]
    variables = [
        VAR_TYPES[t](jnp.arange(size, dtype=jnp.float32) + 10 * i) for i, (t, size) in enumerate(var_specs)
    ]

    tuples: list = []

    def resolve(r):
        kind, i = r
        if kind == "node":
            return nodes[i % len(nodes)]
        if kind == "var":
            return variables[i]
        if kind == "tuple":
            return tuples[i % len(tuples)] if tuples else -1
        return i

    for refs in tuple_specs:
        tuples.append(tuple(resolve(r) for r in refs))

    for node, attrs in zip(nodes, node_attrs):
        for k, (kind, payload) in enumerate(attrs):
            if kind == "list":
                value = [resolve(r) for r in payload]
            elif kind == "dict":
                value = {f"k{j}": resolve(r) for j, r in enumerate(payload)}
            else:
                value = resolve((kind, payload))
            setattr(node, f"a{k}", value)
    return nodes[0]


def children(obj):
    if isinstance(obj, nnx.Module):
        return [(k, v) for k, v in vars(obj).items() if not k.startswith("_nnx_")]
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    return []


def holds_graph(x):
    if isinstance(x, tuple):
        return any(holds_graph(v) for v in x)
    return isinstance(x, (nnx.Module, nnx.Variable, list, dict))


def assert_isomorphic(a, b):
    """Walk both graphs together: the id mapping must be a bijection with equal values."""
    forward, backward = {}, {}
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            raise AssertionError(f"type {type(x)} vs {type(y)}")
        if not isinstance(x, (nnx.Module, nnx.Variable, list, dict, tuple)) or not holds_graph(x):
            assert x == y  # static data (ints, tuples of ints) is kept as is
            continue
        if id(x) in forward:
            assert forward[id(x)] is y, "sharing differs"
            continue
        assert id(y) not in backward, "two objects merged into one"
        assert x is not y, "merge must build new objects"
        forward[id(x)] = y
        backward[id(y)] = x
        if isinstance(x, nnx.Variable):
            np.testing.assert_array_equal(x.value, y.value)
            continue
        cx, cy = children(x), children(y)
        assert [k for k, _ in cx] == [k for k, _ in cy]
        stack.extend((vx, vy) for (_, vx), (_, vy) in zip(cx, cy))
    return forward


@settings(max_examples=60, deadline=None)
@given(graph_spec)
def test_split_merge_roundtrip_preserves_values_identity_and_sharing(spec):
    root = build(spec)
    graphdef, state = nnx.split(root)
    copy = nnx.merge(graphdef, state)
    assert_isomorphic(root, copy)
    # Every Variable appears exactly once in the state.
    n_vars = sum(1 for _, obj in nnx.iter_graph(root) if isinstance(obj, nnx.Variable))
    assert len(state.paths()) == n_vars
    # The GraphDef of the copy equals the original's.
    assert nnx.graphdef(copy) == graphdef


@settings(max_examples=40, deadline=None)
@given(graph_spec)
def test_filtered_split_merge_and_update_roundtrip(spec):
    root = build(spec)
    graphdef, params, rest = nnx.split(root, nnx.Param, ...)
    copy = nnx.merge(graphdef, params, rest)
    assert_isomorphic(root, copy)
    # update writes new values through every path, including shared ones.
    doubled = jax.tree.map(lambda x: x * 2, nnx.state(root))
    nnx.update(copy, doubled)
    for p, v in nnx.state(copy).flat().items():
        np.testing.assert_array_equal(v, doubled.flat()[p])


@settings(max_examples=40, deadline=None)
@given(graph_spec)
def test_merge_under_jit_matches_eager(spec):
    root = build(spec)
    graphdef, state = nnx.split(root)

    @jax.jit
    def roundtrip(state):
        return nnx.state(nnx.merge(graphdef, state))

    out = roundtrip(state)
    assert out.paths() == state.paths()
    for a, b in zip(out.leaves(), state.leaves()):
        np.testing.assert_array_equal(a, b)
