"""Data- plus tensor-parallel training of an MLP on a 4 x 2 device mesh.

What it shows, in order:

1. logical axis names on parameters (``nnx.with_partitioning``) and rules
   that map them onto a ``('data', 'model')`` mesh;
2. ``nnx.transform`` to get pure ``init_fn``/``apply_fn``;
3. sharded initialisation: ``jax.eval_shape`` reads the shapes and
   metadata without allocating, ``jax.jit(init_fn, out_shardings=...)``
   creates every parameter directly in its sharded layout;
4. a jitted optax training step on ``(trainable, rest)`` states, with the
   batch split over ``data`` and the hidden layer split over ``model``;
5. checks: every parameter keeps its sharding through training and the loss
   goes down.

Run it on one CPU: it asks XLA for 8 simulated host devices itself (the flag
must be set before jax starts). On a real 8-accelerator machine the flag is
ignored and the real devices are used::

    python examples/sharded_training.py            # ~300 steps
    python examples/sharded_training.py --smoke    # a few seconds (used by the tests)

The last line printed is a JSON summary.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import nnxlite as nnx  # noqa: E402

# Logical axis names used by the model -> mesh axes. 'embed' (the model width)
# is replicated; 'mlp' (the hidden width) is split over 'model' (tensor
# parallelism); 'batch' is split over 'data' (data parallelism).
RULES = [("batch", "data"), ("embed", None), ("mlp", "model")]


class MLP(nnx.Module):
    """x -> Linear(embed->mlp) -> BatchNorm -> gelu -> Linear(mlp->embed)."""

    def __init__(self, width: int, hidden: int, *, ctx: nnx.Context):
        lecun = nnx.initializers.lecun_normal()
        self.up = nnx.Linear(
            width,
            hidden,
            kernel_init=nnx.with_partitioning(lecun, ("embed", "mlp")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)),
            ctx=ctx,
        )
        # BatchStat state (running mean/var) comes back updated from apply_fn. Its
        # scale and bias live on the hidden axis too, so shard them like it.
        self.norm = nnx.BatchNorm(
            hidden,
            scale_init=nnx.with_partitioning(nnx.initializers.ones, ("mlp",)),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)),
            ctx=ctx,
        )
        # The running statistics are created inside BatchNorm; give them a layout
        # after the fact (metadata is free-form and editable). Without it, jit is
        # free to re-lay them out between steps, since they are unannotated.
        self.norm.mean.set_metadata(sharding=("mlp",))
        self.norm.var.set_metadata(sharding=("mlp",))
        self.down = nnx.Linear(
            hidden,
            width,
            kernel_init=nnx.with_partitioning(lecun, ("mlp", "embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)),
            ctx=ctx,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.norm(self.up(x))))


def make_mesh() -> jax.sharding.Mesh:
    n = jax.device_count()
    if n < 8:
        raise SystemExit(
            f"This example needs 8 devices, found {n}. On CPU, run it as a script (it sets "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax starts)."
        )
    # Auto axes: jit propagates shardings through the layers (GSPMD style).
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def canonical(sharding: NamedSharding) -> NamedSharding:
    """The same sharding with trailing ``None`` dropped from its spec.

    ``P('model', None)`` and ``P('model')`` lay an array out identically; jit
    reports propagated shardings in the short form.
    """
    spec = list(sharding.spec)
    while spec and spec[-1] is None:
        spec.pop()
    return NamedSharding(sharding.mesh, P(*spec))


def same_layout(actual: jax.sharding.Sharding, expected: NamedSharding) -> bool:
    return isinstance(actual, NamedSharding) and canonical(actual) == canonical(expected)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few steps, small sizes (used by the tests)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 300, or 30 with --smoke)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and initialization (default: 0)")
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.smoke else 300)
    width, hidden, batch = (8, 32, 64) if args.smoke else (32, 256, 256)

    mesh = make_mesh()
    model = MLP(width, hidden, ctx=nnx.context(args.seed))
    init_fn, apply_fn = nnx.transform(model)
    del model  # from here on everything is pure

    # -- sharded initialisation: no device ever holds a full copy of a sharded weight ------------
    key = jax.random.PRNGKey(args.seed)
    abstract = jax.eval_shape(init_fn, key)  # ShapeDtypeStructs + metadata, nothing allocated
    with nnx.logical_axis_rules(RULES):
        shardings = nnx.get_named_sharding(abstract, mesh)
    variables = jax.jit(init_fn, out_shardings=shardings)(key)
    trainable, rest = nnx.split_trainable(variables)

    tx = optax.adam(3e-3)
    opt_state = jax.jit(tx.init)(trainable)  # moments inherit the parameters' shardings

    # -- a teacher network to regress onto; the batch lives on the 'data' axis ----------------------
    with nnx.logical_axis_rules(RULES):
        batch_spec = nnx.logical_to_mesh_axes(("batch", "embed"))
    data_sharding = NamedSharding(mesh, batch_spec)
    rng = np.random.default_rng(args.seed)
    teacher = rng.normal(size=(width, width)).astype(np.float32) / np.sqrt(width)

    def get_batch() -> tuple[jax.Array, jax.Array]:
        x = rng.normal(size=(batch, width)).astype(np.float32)
        y = np.tanh(x @ teacher)
        # One process here; on several hosts each passes only its own rows (see docs/guides/multihost.md).
        return (
            jax.make_array_from_process_local_data(data_sharding, x),
            jax.make_array_from_process_local_data(data_sharding, y),
        )

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(trainable, rest, opt_state, x, y):
        def loss_fn(trainable):
            pred, new_variables = apply_fn((trainable, rest), x)
            _, new_rest = nnx.split_trainable(new_variables)
            return jnp.mean((pred - y) ** 2), new_rest

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), rest, opt_state, loss

    losses = []
    for step in range(steps):
        x, y = get_batch()
        trainable, rest, opt_state, loss = train_step(trainable, rest, opt_state, x, y)
        losses.append(float(loss))
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}")

    # -- checks: shardings survived every step, and the model learned --------------------------------
    checked = 0
    final = nnx.merge_states(trainable, rest)
    for path, expected in zip(shardings.paths(), shardings.leaves()):
        actual = final[path].sharding
        if not same_layout(actual, expected):
            raise AssertionError(f"{'/'.join(map(str, path))}: sharding {actual} after training, expected {expected}")
        checked += 1
    kernel = trainable["up"]["kernel"]
    shard_shapes = sorted({s.data.shape for s in kernel.addressable_shards})
    first, last = float(np.mean(losses[:3])), float(np.mean(losses[-3:]))
    if not last < 0.7 * first:
        raise AssertionError(f"loss did not decrease enough: {first:.4f} -> {last:.4f}")
    summary = {
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "steps": steps,
        "first_loss": first,
        "last_loss": last,
        "arrays_checked": checked,
        "up_kernel_spec": str(trainable["up"]["kernel"].sharding.spec),
        "up_kernel_shard_shape": list(shard_shapes[0]),
        "batchnorm_mean_changed": bool(np.any(np.asarray(rest["norm"]["mean"]) != 0)),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
