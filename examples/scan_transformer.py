"""A character-level transformer on Python source code, with its layers stacked by vmap and run by scan.

What this example teaches:

1. *Stacked layers.* Calling a block's constructor under ``nnx.vmap`` with
   ``axis_size=N`` creates N blocks at once, as ONE block whose every
   parameter has a leading axis of size N (``fc1.kernel: (N, 64, 256)``).
   Each layer gets its own initialization key.
2. *Scan over layers.* ``nnx.scan`` then applies the block N times, slicing
   layer ``i``'s parameters on step ``i``. XLA compiles the block body once, so
   compile time stays flat as the model gets deeper, whereas an unrolled
   Python ``for`` loop over N separate blocks is traced and compiled N times
   over. The script measures both at several depths (for a shallow model the
   loop can be a little cheaper: the scan has a fixed cost of its own).
3. *Randomness per layer.* Dropout must not reuse one mask in every layer:
   each scan step receives its own key, and the script checks that the
   layers' dropout masks differ.
4. A decoder-only transformer in a few lines: token and position
   embeddings, pre-norm blocks of causal self-attention
   (``nnx.make_causal_mask``) and an MLP, and output logits tied to the input
   embedding (``embed.attend``). After training it writes a sample.

Data: the text of the public top-level modules of the Python standard
library (``abc.py``, ``aifc.py``, ``argparse.py``, ...) of the interpreter
running the script: no download, and always the same text for a given
Python.

    python examples/scan_transformer.py            # full run, plot in examples/out/
    python examples/scan_transformer.py --smoke    # a few seconds
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxlite as nnx
from _common import Timer, make_parser, plt, progress, save_figure, stdlib_text


class Block(nnx.Module):
    """A pre-norm transformer block: causal self-attention, then an MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, dropout: float, *, ctx: nnx.Context):
        self.ln1 = nnx.LayerNorm(dim, ctx=ctx)
        self.attn = nnx.MultiHeadAttention(num_heads, dim, ctx=ctx)
        self.ln2 = nnx.LayerNorm(dim, ctx=ctx)
        self.fc1 = nnx.Linear(dim, 4 * dim, ctx=ctx)
        self.fc2 = nnx.Linear(4 * dim, dim, ctx=ctx)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, mask: jax.Array, *, ctx: nnx.Context | None) -> jax.Array:
        no_dropout = ctx is None  # evaluation and sampling pass no random keys
        x = x + self.dropout(self.attn(self.ln1(x), mask=mask), deterministic=no_dropout, ctx=ctx)
        x = x + self.dropout(self.fc2(jax.nn.gelu(self.fc1(self.ln2(x)))), deterministic=no_dropout, ctx=ctx)
        return x


class ScannedBlocks(nnx.Module):
    """``n_layers`` blocks stored as ONE stacked Block, applied by ``nnx.scan`` over the layer axis."""

    def __init__(self, n_layers: int, dim: int, num_heads: int, dropout: float, *, ctx: nnx.Context):
        def make_block(ctx: nnx.Context) -> Block:
            return Block(dim, num_heads, dropout, ctx=ctx)

        # vmap over a constructor: n_layers lanes, each drawing its own keys from
        # `ctx` (nnx.vmap splits RNG streams per lane), give one Block whose
        # Variables all have a leading axis of size n_layers.
        self.layers = nnx.vmap(make_block, axis_size=n_layers)(ctx)

    def __call__(self, x: jax.Array, mask: jax.Array, *, ctx: nnx.Context | None) -> jax.Array:
        def one_layer(x, layer: Block, ctx):
            return layer(x, mask, ctx=ctx)

        # in_axes: x is the carry, the stack is sliced along axis 0 (layer i on
        # step i), and ctx is passed whole; nnx.scan still splits its RNG
        # streams, so each layer draws different dropout keys.
        scan_layers = nnx.scan(one_layer, in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
        return scan_layers(x, self.layers, ctx)


class LoopedBlocks(nnx.Module):
    """The same blocks as a Python list, applied by an ordinary (unrolled) ``for`` loop."""

    def __init__(self, n_layers: int, dim: int, num_heads: int, dropout: float, *, ctx: nnx.Context):
        self.layers = [Block(dim, num_heads, dropout, ctx=ctx) for _ in range(n_layers)]

    def __call__(self, x: jax.Array, mask: jax.Array, *, ctx: nnx.Context | None) -> jax.Array:
        for layer in self.layers:
            x = layer(x, mask, ctx=ctx)
        return x


class CharTransformer(nnx.Module):
    """A decoder-only language model over characters."""

    def __init__(
        self, vocab_size: int, *, dim: int, num_heads: int, n_layers: int, max_len: int,
        dropout: float = 0.1, scan: bool = True, ctx: nnx.Context,
    ):  # fmt: skip
        self.embed = nnx.Embed(vocab_size, dim, ctx=ctx)
        self.pos = nnx.Param(0.02 * jax.random.normal(ctx.make_rng("params"), (max_len, dim)))
        stack = ScannedBlocks if scan else LoopedBlocks
        self.blocks = stack(n_layers, dim, num_heads, dropout, ctx=ctx)
        self.ln_f = nnx.LayerNorm(dim, ctx=ctx)

    def __call__(self, tokens: jax.Array, *, ctx: nnx.Context | None = None) -> jax.Array:
        """Logits ``(batch, length, vocab)`` for the next character at every position.

        Pass ``ctx`` (with a ``dropout`` stream) to train with dropout; without
        it the model is deterministic.
        """
        x = self.embed(tokens) + self.pos[: tokens.shape[-1]]
        mask = nnx.make_causal_mask(tokens)  # position i attends to positions <= i
        x = self.blocks(x, mask, ctx=ctx)
        return self.embed.attend(self.ln_f(x))  # the output layer reuses the embedding table


def loss_fn(model: CharTransformer, tokens: jax.Array, ctx: nnx.Context | None):
    logits = model(tokens[:, :-1], ctx=ctx)  # predict character t+1 from characters <= t
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@nnx.jit
def train_step(model: CharTransformer, optimizer: nnx.Optimizer, tokens: jax.Array, ctx: nnx.Context):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, ctx)
    optimizer.update(grads)
    return loss


@nnx.jit
def eval_loss(model: CharTransformer, tokens: jax.Array):
    return loss_fn(model, tokens, None)


@nnx.jit
def next_token_logits(model: CharTransformer, window: jax.Array):
    return model(window[None])[0, -1]


class Vocab:
    """Characters <-> integer ids."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], dtype=np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def random_windows(data: np.ndarray, length: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` random slices of ``length`` consecutive ids."""
    starts = rng.integers(0, len(data) - length, size=batch_size)
    return np.stack([data[s : s + length] for s in starts])


def sample(model: CharTransformer, vocab: Vocab, prompt: str, n_chars: int, temperature: float, seed: int) -> str:
    """Temperature sampling, one character at a time, from a sliding window of the last ``len(prompt)`` ids.

    The window keeps a fixed length so that ``next_token_logits`` compiles once.
    """
    window = jnp.asarray(vocab.encode(prompt))
    key = jax.random.PRNGKey(seed)
    out = []
    for _ in range(n_chars):
        logits = next_token_logits(model, window)
        key, sub = jax.random.split(key)
        token = jax.random.categorical(sub, logits / temperature)
        out.append(int(token))
        window = jnp.concatenate([window[1:], token[None]])
    return vocab.decode(out)


def check_dropout_differs_per_layer(blocks: ScannedBlocks, dim: int) -> None:
    """Scan only the dropout of every stacked layer over a tensor of ones, and compare the masks."""

    def dropout_mask(carry, layer: Block, ctx):
        kept = layer.dropout(jnp.ones((64, dim)), ctx=ctx) != 0
        return carry, kept  # the per-step output is stacked: one mask per layer

    scan_layers = nnx.scan(dropout_mask, in_axes=(nnx.Carry, 0, None), out_axes=(nnx.Carry, 0))
    _, masks = scan_layers(jnp.zeros(()), blocks.layers, nnx.context(dropout=1))
    masks = np.asarray(masks).reshape(len(masks), -1)
    distinct = len({m.tobytes() for m in masks})
    assert distinct == len(masks), f"only {distinct} distinct dropout masks for {len(masks)} layers"
    print(f"dropout masks differ across the {len(masks)} scanned layers: {distinct} distinct masks")


def compile_seconds(scan: bool, n_layers: int, tx: optax.GradientTransformation, args, vocab_size: int) -> float:
    """Time to trace and compile one training step: its first call minus a second, compiled, call."""
    model = CharTransformer(
        vocab_size, dim=args.dim, num_heads=args.heads, n_layers=n_layers, max_len=args.seq_len,
        dropout=args.dropout, scan=scan, ctx=nnx.context(0),
    )  # fmt: skip
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    tokens = jnp.zeros((args.batch_size, args.seq_len + 1), jnp.int32)
    ctx = nnx.context(dropout=0)
    with Timer() as first:
        train_step(model, optimizer, tokens, ctx).block_until_ready()
    with Timer() as second:
        train_step(model, optimizer, tokens, ctx).block_until_ready()
    return max(first.seconds - second.seconds, 0.0)


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per training step")
    parser.add_argument("--seq-len", type=int, default=64, help="characters of context")
    parser.add_argument("--dim", type=int, default=64, help="model width (d_model)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads per layer")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (scanned over)")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout rate")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--chars", type=int, default=1_000_000, help="characters of stdlib source to read")
    parser.add_argument(
        "--depths", type=int, nargs="+", default=[2, 4, 8, 16], help="numbers of layers for the compile-time table"
    )
    parser.add_argument("--sample-chars", type=int, default=300, help="characters to generate after training")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.seq_len, args.dim, args.layers = 30, 8, 32, 32, 2
        args.chars, args.depths, args.sample_chars = 50_000, [1, 2], 40

    # -- data ---------------------------------------------------------------------------
    text, files = stdlib_text(args.chars)
    vocab = Vocab(text)
    data = vocab.encode(text)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    print(f"text: {len(text):,} characters from {len(files)} stdlib files ({files[0]} ... {files[-1]}), "
          f"vocabulary of {len(vocab)} characters")  # fmt: skip

    # -- 1. the model: its blocks are stacked ----------------------------------------------
    model = CharTransformer(
        len(vocab), dim=args.dim, num_heads=args.heads, n_layers=args.layers, max_len=args.seq_len,
        dropout=args.dropout, scan=True, ctx=nnx.context(args.seed),
    )  # fmt: skip
    kernel_shape = model.blocks.layers.fc1.kernel.shape
    print(f"model: {args.layers} stacked blocks, e.g. blocks.layers.fc1.kernel has shape {kernel_shape}")
    if args.dropout > 0:  # randomness: each scanned layer draws its own dropout key
        check_dropout_differs_per_layer(model.blocks, args.dim)

    # The optimizer: AdamW with a warm-up then cosine decay of the learning rate.
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, max(1, args.steps // 20), args.steps)
    tx = optax.adamw(schedule, weight_decay=0.01)

    # -- 2. compile time: scan vs an unrolled loop -----------------------------------------
    # nnx.jit compiles once per model *structure*; at depth == --layers the scan
    # model built here has the training model's structure, so training below
    # reuses that compiled step.
    print("compile time of one training step, in seconds (trace + XLA compile):")
    print(f"{'layers':>8} {'nnx.scan':>10} {'for loop':>10}")
    compile_table = []
    for n in args.depths:
        row = (n, compile_seconds(True, n, tx, args, len(vocab)), compile_seconds(False, n, tx, args, len(vocab)))
        compile_table.append(row)
        print(f"{row[0]:>8d} {row[1]:>10.2f} {row[2]:>10.2f}")

    # -- 3. train -------------------------------------------------------------------------
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    dropout_ctx = nnx.context(dropout=args.seed + 1)
    rng = np.random.default_rng(args.seed)
    val_batch = jnp.asarray(random_windows(val_data, args.seq_len + 1, 4 * args.batch_size, rng))

    losses, val_steps, val_losses = [], [], []
    eval_every = max(1, args.steps // 15)
    bar = progress(args.steps, desc="training")
    for step in bar:
        tokens = jnp.asarray(random_windows(train_data, args.seq_len + 1, args.batch_size, rng))
        losses.append(float(train_step(model, optimizer, tokens, dropout_ctx)))
        if (step + 1) % eval_every == 0 or step + 1 == args.steps:
            val_steps.append(step + 1)
            val_losses.append(float(eval_loss(model, val_batch)))
            bar.set_postfix(loss=f"{np.mean(losses[-eval_every:]):.3f}", val=f"{val_losses[-1]:.3f}")
    bar.close()
    print(f"final loss: train {np.mean(losses[-eval_every:]):.3f}, validation {val_losses[-1]:.3f} "
          f"(nats per character; uniform guessing would be {np.log(len(vocab)):.2f})")  # fmt: skip

    # -- 4. sample ------------------------------------------------------------------------
    start = text.find("\ndef ", split) + 1  # the start of a function definition in the validation text
    prompt = text[start : start + args.seq_len]
    generated = sample(model, vocab, prompt, args.sample_chars, args.temperature, seed=args.seed)
    print("----- prompt -----")
    print(prompt)
    print("----- sample -----")
    print(generated)
    print("------------------")

    # -- plot -----------------------------------------------------------------------------
    fig, (ax_loss, ax_compile) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(np.arange(1, len(losses) + 1), losses, alpha=0.4, label="train (per step)")
    ax_loss.plot(val_steps, val_losses, marker="o", label="validation")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy (nats per character)")
    ax_loss.set_title("training loss")
    ax_loss.legend()
    depths = [r[0] for r in compile_table]
    ax_compile.plot(depths, [r[1] for r in compile_table], marker="o", label="nnx.scan over stacked layers")
    ax_compile.plot(depths, [r[2] for r in compile_table], marker="o", label="Python for loop (unrolled)")
    ax_compile.set_xlabel("number of layers")
    ax_compile.set_ylabel("seconds")
    ax_compile.set_ylim(bottom=0)
    ax_compile.set_xticks(depths)
    ax_compile.set_title("compile time of one training step")
    ax_compile.legend()
    save_figure(fig, args.out, "scan_transformer.png")


if __name__ == "__main__":
    main()
