"""``generate()`` for the decoder families, with a fixed-size KV cache.

The cache for ``prompt + max_new_tokens`` positions is allocated once; the
prompt is run in one call (``prefill``) and each new token in one call of
the same compiled ``step`` (the slot to write is a traced index, so the
shapes never change and nothing retraces per token). Both are module-level
``nnx.jit`` functions, and the sampling options are traced values, so any
later ``generate`` with the same batch and lengths (greedy or sampled, any
temperature or ``top_k``) reuses the compiled code. ``TRACES`` counts how often each was traced (tests read it).

End-of-sequence stopping follows ``transformers``: once a row has emitted
``eos_token_id`` its later tokens are ``pad_token_id``, and the loop ends
when every row is done. The end ids and the pad id are traced too (a row
that is done is one more traced boolean per row), so stopping adds no
compiled variant; the host reads one boolean per token to stop early.

A decoder provides ``init_cache(batch, length)`` and
``decode(ids, positions, key_valid, cache, index) -> (logits, cache)``.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlite.models._common import as_ids
from nnxlite.rng import Context
from nnxlite.rng import _as_key as as_typed_key
from nnxlite.transforms import jit

TRACES: collections.Counter = collections.Counter()


def _pick(logits: jax.Array, key: jax.Array, temperature: jax.Array, do_sample: jax.Array, top_k: jax.Array):
    """The next token: argmax, or (``do_sample``) a sample from ``softmax(logits / temperature)`` over the ``top_k`` best.

    Every option is a traced value, so greedy and sampled decoding with any
    temperature or ``top_k`` share one compiled step.
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    kth = jnp.take(jnp.sort(logits, axis=-1), logits.shape[-1] - top_k, axis=-1)[:, None]
    scaled = jnp.where(logits < kth, -jnp.inf, logits / temperature)
    sampled = jax.random.categorical(key, scaled, axis=-1)
    return jnp.where(do_sample, sampled, greedy).astype(jnp.int32)


def _finish(token: jax.Array, done: jax.Array, stop: tuple[jax.Array, jax.Array]):
    """``token`` with rows already done replaced by the pad id, and the rows done after it.

    The order is ``transformers``': pad first, then mark rows whose token is an
    end id (so a pad id equal to the end id keeps finished rows finished).
    """
    eos_ids, pad = stop
    token = jnp.where(done, pad, token)
    return token, done | jnp.isin(token, eos_ids)


def _prefill(model, ids, positions, key_valid, cache, key, options, stop):
    TRACES["prefill"] += 1
    logits, cache = model.decode(ids, positions, key_valid, cache, jnp.int32(0))
    token = _pick(logits[:, -1], jax.random.fold_in(key, 0), *options)
    token, done = _finish(token, jnp.zeros(token.shape, bool), stop)
    return token, done, cache


def _step(model, token, done, position, key_valid, cache, index, key, options, stop):
    TRACES["step"] += 1
    logits, cache = model.decode(token[:, None], position[:, None], key_valid, cache, index)
    token, done = _finish(_pick(logits[:, -1], jax.random.fold_in(key, index), *options), done, stop)
    return token, done, cache


_prefill_jit = jit(_prefill)
_step_jit = jit(_step, donate_argnames=("cache",))


def _as_key(rng: Any, do_sample: bool) -> jax.Array:
    if rng is None:
        if do_sample:
            raise ValueError("generate(do_sample=True) needs rng=: a seed, a jax.random key or an nnx Context.")
        return jax.random.key(0)
    if isinstance(rng, Context):
        return rng.make_rng("sample")
    # Always a typed key (as a Context draws), so greedy and sampled calls share one compiled step.
    return as_typed_key(rng)


class Decoder:
    """Mixin: ``generate()`` for causal language models."""

    #: Learned position embeddings cap the total length (GPT-2); None for RoPE models.
    max_positions: int | None = None

    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        rng: Any = None,
        attention_mask: Any = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> jax.Array:
        """Prompt plus up to ``max_new_tokens`` new ids, ``(batch, prompt + new)``, like ``transformers``' ``generate``.

        Greedy by default; ``do_sample=True`` samples with ``temperature`` and
        ``top_k`` using ``rng`` (a seed, key or Context). ``attention_mask``
        (1 = token, 0 = left padding) allows prompts of different lengths in
        one batch.

        With ``eos_token_id`` (an id or a list of ids), a row that emits one
        is done: its later positions hold ``pad_token_id`` (default: the
        first end id), and generation stops as soon as every row is done, so
        fewer than ``max_new_tokens`` columns may come back. Without it,
        exactly ``max_new_tokens`` are produced.
        """
        ids = as_ids(input_ids)
        batch, prompt = ids.shape
        if max_new_tokens < 1:
            return ids
        vocab = self.config.vocab_size
        if top_k is not None and not 0 < top_k <= vocab:
            raise ValueError(f"top_k must be None or an int in [1, {vocab}] (the vocabulary size), got {top_k}.")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}.")
        total = prompt + max_new_tokens
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(
                f"{type(self).__name__}: prompt ({prompt}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                f"the {self.max_positions} positions the model has embeddings for."
            )
        if attention_mask is None:
            prompt_valid = jnp.ones((batch, prompt), bool)
            positions = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), (batch, prompt))
        else:
            prompt_valid = jnp.asarray(np.asarray(attention_mask)).astype(bool)
            positions = jnp.maximum(jnp.cumsum(prompt_valid, axis=1, dtype=jnp.int32) - 1, 0)
        key_valid = jnp.concatenate([prompt_valid, jnp.ones((batch, max_new_tokens), bool)], axis=1)
        key = _as_key(rng, do_sample)
        options = (jnp.float32(temperature), jnp.bool_(do_sample), jnp.int32(vocab if top_k is None else top_k))
        stop = _stop_ids(eos_token_id, pad_token_id)
        cache = self.init_cache(batch, total)
        token, done, cache = _prefill_jit(self, ids, positions, key_valid, cache, key, options, stop)
        new = [token]
        position = positions[:, -1] + 1
        for i in range(max_new_tokens - 1):
            # Only with an end id does the host wait for each token (one boolean) to stop early.
            if eos_token_id is not None and bool(done.all()):
                break
            index = jnp.int32(prompt + i)
            token, done, cache = _step_jit(self, token, done, position + i, key_valid, cache, index, key, options, stop)
            new.append(token)
        return jnp.concatenate([ids, jnp.stack(new, axis=1)], axis=1)


def _stop_ids(eos_token_id: Any, pad_token_id: Any) -> tuple[jax.Array, jax.Array]:
    """The end ids (a never-matching ``-1`` when there are none) and the pad id, as traced arrays."""
    if eos_token_id is None:
        eos = [-1]
    else:
        eos = [eos_token_id] if np.ndim(eos_token_id) == 0 else list(np.ravel(eos_token_id))
        if not eos or not all(float(e).is_integer() and e >= 0 for e in eos):
            raise ValueError(f"eos_token_id must be a token id or a list of them, got {eos_token_id!r}.")
    pad = eos[0] if pad_token_id is None else pad_token_id
    if eos_token_id is not None and not (float(pad).is_integer() and pad >= 0):
        raise ValueError(f"pad_token_id must be a token id, got {pad_token_id!r}.")
    return jnp.asarray(eos, jnp.int32), jnp.int32(max(int(pad), 0))
