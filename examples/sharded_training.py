"""Sharded training of an MLP on 8 devices: data + tensor parallel, or FSDP; Explicit or Auto mesh axes.

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
   goes down; a plot of the loss curve.

Two layouts (``--strategy``):

* ``tp`` (default): a 4 x 2 ``('data', 'model')`` mesh; the batch is split
  over ``data``, the hidden layer over ``model`` (column-parallel ``up``,
  row-parallel ``down``);
* ``fsdp``: an 8-device ``('data',)`` mesh; the batch *and* every parameter
  and optimizer moment are split over ``data``, so each device holds 1/8 of
  the state.

Two kinds of mesh axes (``--mesh``): ``explicit`` (``jax.make_mesh``'s
default: every array's type carries its sharding, and nnxlite's layers work
out their output shardings) or ``auto`` (jit propagates shardings). The same
model code runs on both.

Run it on one CPU: it asks XLA for 8 simulated host devices itself (the flag
must be set before jax starts). On a real 8-accelerator machine the flag is
ignored and the real devices are used::

    python examples/sharded_training.py                      # ~300 steps, tp, explicit axes
    python examples/sharded_training.py --strategy fsdp --mesh auto
    python examples/sharded_training.py --smoke              # a few seconds (used by the tests)

The last line printed is a JSON summary.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import json  # noqa: E402
import sys  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common, when run from elsewhere
import nnxlite as nnx  # noqa: E402
from _common import make_parser, plt, progress, save_figure  # noqa: E402

# Logical axis names used by the model -> mesh axes, per strategy.
RULES = {
    # 'embed' (the model width) is replicated; 'mlp' (the hidden width) is split over
    # 'model' (tensor parallelism); 'batch' is split over 'data' (data parallelism).
    "tp": [("batch", "data"), ("embed", None), ("mlp", "model")],
    # FSDP: every weight is split over 'data' too. When two dimensions of one weight
    # want 'data', the rule listed first wins: 'mlp' before 'embed'.
    "fsdp": [("batch", "data"), ("mlp", "data"), ("embed", "data")],
}
MESHES = {"tp": ((4, 2), ("data", "model")), "fsdp": ((8,), ("data",))}


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


def make_mesh(strategy: str, kind: str) -> jax.sharding.Mesh:
    n = jax.device_count()
    if n < 8:
        raise SystemExit(
            f"This example needs 8 devices, found {n}. On CPU, run it as a script (it sets "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax starts)."
        )
    shape, names = MESHES[strategy]
    # Explicit is jax.make_mesh's default; Auto lets jit propagate shardings (GSPMD style).
    axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
    return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


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


def largest_device_share(trees: list) -> float:
    """The largest fraction of all (non-scalar) state bytes that any one device holds."""
    per_device: dict = {}
    total = 0
    for tree in trees:
        for a in jax.tree_util.tree_leaves(tree):
            if a.ndim == 0:
                continue  # a step counter: replicated, a few bytes
            total += a.nbytes
            for shard in a.addressable_shards:
                per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values()) / total


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 300, or 30 with --smoke)")
    parser.add_argument("--strategy", choices=sorted(RULES), default="tp",
                        help="tp: data + tensor parallel on 4x2; fsdp: parameters and optimizer state split over 8")
    parser.add_argument("--mesh", choices=["explicit", "auto"], default="explicit",
                        help="mesh axis type: explicit (jax.make_mesh's default) or auto (jit propagates)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.smoke else 300)
    width, hidden, batch = (8, 32, 64) if args.smoke else (32, 256, 256)
    rules = RULES[args.strategy]

    mesh = make_mesh(args.strategy, args.mesh)
    print(f"mesh: {dict(mesh.shape)} ({args.mesh} axes), strategy: {args.strategy}")
    model = MLP(width, hidden, ctx=nnx.context(args.seed))
    init_fn, apply_fn = nnx.transform(model)
    del model  # from here on everything is pure

    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        # -- sharded initialisation: no device ever holds a full copy of a sharded weight ----------
        key = jax.random.PRNGKey(args.seed)
        abstract = jax.eval_shape(init_fn, key)  # ShapeDtypeStructs + metadata, nothing allocated
        shardings = nnx.get_named_sharding(abstract, mesh)
        variables = jax.jit(init_fn, out_shardings=shardings)(key)
        trainable, rest = nnx.split_trainable(variables)

        tx = optax.adam(args.lr)
        opt_state = jax.jit(tx.init)(trainable)  # moments inherit the parameters' shardings

        # -- a teacher network to regress onto; the batch lives on the 'data' axis ------------------
        data_sharding = NamedSharding(mesh, nnx.logical_to_mesh_axes(("batch", "embed")))
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
        bar = progress(steps, desc="training")
        for step in bar:
            x, y = get_batch()
            trainable, rest, opt_state, loss = train_step(trainable, rest, opt_state, x, y)
            losses.append(float(loss))
            if step % max(1, steps // 10) == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.write(f"step {step:4d}  loss {losses[-1]:.4f}")
        bar.close()

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
    # Single steps are noisy (a fresh random batch each): compare means of three.
    first3, last3 = float(np.mean(losses[:3])), float(np.mean(losses[-3:]))
    print(f"loss: step 0 {losses[0]:.4f}, step {steps - 1} {losses[-1]:.4f}; "
          f"mean of the first 3 steps {first3:.4f}, of the last 3 {last3:.4f}")
    if not last3 < 0.7 * first3:
        raise AssertionError(f"loss did not decrease enough: {first3:.4f} -> {last3:.4f} (means of 3 steps)")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(steps), losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE)")
    ax.set_title(f"sharded MLP: {args.strategy}, {args.mesh} mesh {dict(mesh.shape)}")
    save_figure(fig, args.out, "sharded_training.png")

    summary = {
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "mesh_axis_types": args.mesh,
        "strategy": args.strategy,
        "steps": steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "first_loss_mean_of_3": first3,
        "last_loss_mean_of_3": last3,
        "arrays_checked": checked,
        "up_kernel_spec": str(trainable["up"]["kernel"].sharding.spec),
        "up_kernel_shard_shape": list(shard_shapes[0]),
        "largest_device_share_of_state": largest_device_share([trainable, rest, opt_state]),
        "batchnorm_mean_changed": bool(np.any(np.asarray(rest["norm"]["mean"]) != 0)),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
