"""Lifted transforms: ``jit``, ``vmap``, ``scan``, ``remat``, ``cond``/``switch``, ``eval_shape``, ``grad`` for modules.

Each works like its JAX namesake, and also accepts modules, Contexts,
Optimizers and Variables as arguments and results, on their own or anywhere
inside pytree arguments::

    >>> import jax.numpy as jnp, nnxlite as nnx
    >>> model = nnx.BatchNorm(2, ctx=nnx.context(0))
    >>> @nnx.jit
    ... def forward(model, x):
    ...     return model(x)               # updates model.mean / model.var
    >>> y = forward(model, jnp.arange(4.0).reshape(2, 2))
    >>> [round(float(m), 3) for m in model.mean.value]
    [0.01, 0.02]

The rules, the same for every transform:

* **In-place updates come out.** Values a function writes into a module's
  Variables (BatchNorm statistics, RNG counters, ``optimizer.update``) are
  written back into the caller's Variables, as in eager code.
* **Identity is preserved.** A module passed in and returned (or any of its
  sub-modules) comes back as the caller's own object; modules created inside
  come back as new objects. Shared references between arguments (an
  optimizer holding the model) stay shared.
* **Structure changes propagate** (``jit``, ``vmap``, ``remat``, ``cond``,
  ``grad``): a new attribute, sub-module or Variable set inside appears on the
  caller's object afterwards. ``scan`` and ``eval_shape`` cannot do that and
  raise an error saying so.
* **Nothing is stale.** ``jit`` caches the traversal of its arguments, but any
  structural edit (``model.eval()``, replacing a layer, appending to a list,
  re-pointing a shared reference) invalidates it and retraces.

Axis specs for modules (``vmap``, ``scan``)
-------------------------------------------

``in_axes``/``out_axes`` are JAX's: one entry per argument or a prefix
pytree. An entry that lands on a module says where its state is batched:

* an int — every Variable of the module is mapped along that axis;
* ``None`` — broadcast: the same state for every lane (``vmap``), or carried
  from step to step (``scan``: updates made by one step are seen by the next);
* a dict ``{filter: axis}`` — per kind of state, first matching filter wins
  (``nnx.Param``, ``'dropout'``, ``nnx.All(...)``, any :mod:`~nnxlite.filters`
  filter); Variables matching no key use the transform's default axis 0.
  E.g. ``in_axes=({nnx.BatchStat: None}, 0)``.

**RNG streams are split by default**, whatever the entry says: a stream
(a Context's, or one a module stores) draws one key outside the transform,
splits it into one key per lane or step, and each lane/step runs a fresh
stream from its own key. The caller's stream advances by one draw, so the
next call gets new keys. To opt out for a stream or a kind of RNG state, name
it in the dict: ``{'dropout': None}`` gives every lane the same dropout key
(in ``scan``: one stream carried through the steps), ``{nnx.RngState: 0}``
maps streams that are themselves stacked; ``'split'`` may also be written out.
There is no separate ``split_rngs`` decorator or ``StateAxes`` object to
combine (the pair flax.nnx users must get right together, flax issues #4195
and #4589): one dict in the usual ``in_axes`` says it all.

    >>> import jax, jax.numpy as jnp, nnxlite as nnx
    >>> ctx = nnx.context(params=0, dropout=1)
    >>> keys = nnx.vmap(lambda c: (c.params(), c.dropout()), axis_size=3)(ctx)
    >>> len({tuple(jax.random.key_data(k).tolist()) for k in keys[0]})   # split: one key per lane
    3
    >>> keys = nnx.vmap(lambda c: c.dropout(), in_axes={"dropout": None}, axis_size=3)(ctx)
    >>> len({tuple(jax.random.key_data(k).tolist()) for k in keys})      # broadcast: the same key in every lane
    1
    >>> bn = nnx.vmap(lambda c: nnx.BatchNorm(2, ctx=c), axis_size=3, out_axes={nnx.BatchStat: None})(ctx)
    >>> bn.scale.shape, bn.mean.shape               # stacked params, shared statistics
    ((3, 2), (2,))

Layout of this package
----------------------

* ``_lift.py`` — the shared core: graph nodes inside pytrees, axis specs,
  RNG splitting, write-back of what the function changed; ``Carry``.
* ``jit.py`` — ``jit``; ``mapping.py`` — ``vmap``; ``loops.py`` — ``scan``;
  ``control.py`` — ``cond``, ``switch``; ``autodiff.py`` — ``grad``,
  ``value_and_grad``, ``remat``; ``shapes.py`` — ``eval_shape``.
"""

from nnxlite.transforms._lift import Carry
from nnxlite.transforms.autodiff import CustomVjp, custom_vjp, grad, jvp, remat, value_and_grad, vjp
from nnxlite.transforms.control import cond, switch
from nnxlite.transforms.jit import jit
from nnxlite.transforms.loops import fori_loop, scan, while_loop
from nnxlite.transforms.mapping import pmap, shard_map, vmap
from nnxlite.transforms.axis_metadata import transform_metadata
from nnxlite.transforms.shapes import checkify, eval_shape

__all__ = ["jit", "vmap", "scan", "remat", "cond", "switch", "eval_shape", "grad", "value_and_grad", "Carry", "while_loop", "fori_loop", "pmap", "shard_map", "jvp", "vjp", "custom_vjp", "checkify", "transform_metadata"]
