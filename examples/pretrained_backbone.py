"""Reuse a pretrained backbone: save it, restore it into a bigger model, freeze it, train a new head.

What this example teaches:

1. Models compose by reference. ``Classifier(backbone, head)`` simply stores
   the two modules you give it as attributes; there is no separate
   "params tree" to keep in sync with the module structure.
2. ``nnx.save(path, module)`` writes a module's Variables to a safetensors
   file; ``nnx.restore(path, target)`` reads them into an existing module in
   place. The target can be a *sub-module* of a bigger model:
   ``nnx.restore(path, classifier.backbone)``.
3. Freezing is a filter. ``nnx.Optimizer(model, tx, wrt=head_only)`` with
   ``head_only = nnx.All(nnx.Param, nnx.PathContains("head"))`` creates
   optimizer state for the head alone and never touches the backbone;
   gradients are asked for with the same filter (``train_step`` in
   ``_finetune.py``), so none are even computed for the backbone.

4. Low-rank adapters are a Variable type. ``nnx.LoRALinear`` is a Linear
   plus a rank-``r`` adapter whose matrices are ``nnx.LoRAParam``;
   ``wrt=nnx.LoRAParam`` trains the adapters alone and leaves every
   pretrained weight as it was.

The story: a small CNN learns digits 0-4 (plenty of labels). Then we want a
classifier for digits 5-9 but have only 10 labelled images of each. We
compare (a) the pretrained backbone, frozen, plus a new linear head, with
(b) the same classifier trained from scratch on the same 50 images.

What to expect: 8x8 digits are easy, and a small CNN trained from scratch
is already good with 50 images, so the two end up close (about 97% each);
the frozen backbone gets there training a third as many parameters. With
fewer labels the pretrained features matter more: with
``--labels-per-class 2`` it reached 90% against 84% from scratch.

Two more runs start from the *whole* pretrained 0-4 classifier (its head
reused, output ``k`` now meaning digit ``5 + k``): (c) LoRA adapters on its
dense layer (the head), everything else frozen, and (d) a full fine-tune of
every parameter. The printout gives each one's trainable parameter count and
test accuracy.

    python examples/pretrained_backbone.py            # full run, plot in examples/out/
    python examples/pretrained_backbone.py --smoke    # a few seconds
"""

from __future__ import annotations

import jax
import numpy as np
import optax

import nnxlite as nnx
from _common import few_per_class, load_digits_split, make_parser, plot_accuracy_curves
from _finetune import accuracy, count_params, train


class Backbone(nnx.Module):
    """8x8x1 image -> 512 features: two 3x3 convolutions with a 2x2 max-pool between them."""

    features = 4 * 4 * 32

    def __init__(self, *, ctx: nnx.Context):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), ctx=ctx)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), ctx=ctx)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))  # (B, 8, 8, 16)
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))  # (B, 4, 4, 16)
        x = jax.nn.relu(self.conv2(x))  # (B, 4, 4, 32)
        return x.reshape((x.shape[0], -1))  # (B, 512)


class Classifier(nnx.Module):
    """A backbone and a head, both given from outside: the model is just their composition."""

    def __init__(self, backbone: Backbone, head: nnx.Linear):
        self.backbone = backbone
        self.head = head

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.backbone(x))


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=600, help="steps of backbone pre-training")
    parser.add_argument("--finetune-steps", type=int, default=300, help="steps of fine-tuning on the few labels")
    parser.add_argument("--labels-per-class", type=int, default=10, help="labelled images per digit for 5-9")
    parser.add_argument("--batch-size", type=int, default=32, help="for pretraining (fine-tuning uses all labels)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--lora-rank", type=int, default=4, help="rank of the LoRA adapters in run (c)")
    args = parser.parse_args()
    if args.smoke:
        args.pretrain_steps, args.finetune_steps = 20, 20
    eval_every = max(1, args.finetune_steps // 30)

    # -- 1. pretrain on digits 0-4 ---------------------------------------------------------
    x_train, y_train, x_test, y_test = load_digits_split(seed=args.seed, classes=(0, 1, 2, 3, 4))
    pretrained = Classifier(
        Backbone(ctx=nnx.context(args.seed)),
        nnx.Linear(Backbone.features, 5, ctx=nnx.context(args.seed)),
    )
    optimizer = nnx.Optimizer(pretrained, optax.adam(args.lr), wrt=nnx.Param)
    train(
        pretrained, optimizer, x_train, y_train,
        steps=args.pretrain_steps, batch_size=args.batch_size, seed=args.seed,
        x_test=x_test, y_test=y_test, eval_every=args.pretrain_steps, desc="pretrain 0-4",
    )  # fmt: skip
    print(f"pretraining on digits 0-4 ({len(x_train)} images): "
          f"test accuracy: {float(accuracy(pretrained, x_test, y_test)):.3f}")  # fmt: skip

    # Save only the backbone: the 0-4 head is of no use for 5-9.
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "backbone_digits_0-4.safetensors"
    nnx.save(checkpoint, pretrained.backbone)
    print(f"saved backbone: {checkpoint}")

    # -- 2. few labels of digits 5-9 ------------------------------------------------------
    x_train, y_train, x_test, y_test = load_digits_split(seed=args.seed, classes=(5, 6, 7, 8, 9))
    y_train, y_test = y_train - 5, y_test - 5  # labels 0..4 for the new 5-way head
    x_few, y_few = few_per_class(x_train, y_train, args.labels_per_class, seed=args.seed)
    print(f"digits 5-9: training on {len(x_few)} labelled images ({args.labels_per_class} per class), "
          f"testing on {len(x_test)}")  # fmt: skip

    def new_classifier(seed: int) -> Classifier:
        return Classifier(
            Backbone(ctx=nnx.context(seed)),
            nnx.Linear(Backbone.features, 5, ctx=nnx.context(seed + 1)),
        )

    # (a) A fresh classifier whose backbone is then overwritten by the checkpoint.
    transfer = new_classifier(args.seed + 1)
    nnx.restore(checkpoint, transfer.backbone)  # in place, into the sub-module
    assert np.array_equal(transfer.backbone.conv1.kernel.value, pretrained.backbone.conv1.kernel.value)
    print("restored it into classifier.backbone")
    head_only = nnx.All(nnx.Param, nnx.PathContains("head"))
    optimizer = nnx.Optimizer(transfer, optax.adam(args.lr), wrt=head_only)
    frozen_before = jax.tree.map(np.asarray, nnx.state(transfer.backbone, nnx.Param))
    transfer_curve = train(
        transfer, optimizer, x_few, y_few,
        steps=args.finetune_steps, batch_size=len(x_few), seed=args.seed,
        x_test=x_test, y_test=y_test, eval_every=eval_every, desc="head on frozen backbone",
    )  # fmt: skip
    frozen_after = nnx.state(transfer.backbone, nnx.Param)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, frozen_before, frozen_after))), "backbone moved!"

    # (b) The same classifier (same initial weights), everything trainable, same 50 images.
    scratch = new_classifier(args.seed + 1)
    optimizer = nnx.Optimizer(scratch, optax.adam(args.lr), wrt=nnx.Param)
    scratch_curve = train(
        scratch, optimizer, x_few, y_few,
        steps=args.finetune_steps, batch_size=len(x_few), seed=args.seed,
        x_test=x_test, y_test=y_test, eval_every=eval_every, desc="from scratch",
    )  # fmt: skip

    # (c) LoRA: the whole pretrained classifier, its dense layer (the head) given a low-rank
    # adapter. Only the adapter (nnx.LoRAParam) is trained; every pretrained weight stays.
    def pretrained_copy(head: nnx.Linear) -> Classifier:
        model = Classifier(Backbone(ctx=nnx.context(args.seed + 2)), head)
        nnx.update(model, nnx.state(pretrained))  # kernel/bias paths match; the adapter keeps its init
        return model

    lora = pretrained_copy(nnx.LoRALinear(Backbone.features, 5, lora_rank=args.lora_rank, ctx=nnx.context(args.seed + 3)))
    optimizer = nnx.Optimizer(lora, optax.adam(args.lr), wrt=nnx.LoRAParam)
    before = jax.tree.map(np.asarray, nnx.state(lora, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    lora_curve = train(
        lora, optimizer, x_few, y_few,
        steps=args.finetune_steps, batch_size=len(x_few), seed=args.seed,
        x_test=x_test, y_test=y_test, eval_every=eval_every, desc="LoRA adapters",
    )  # fmt: skip
    after = nnx.state(lora, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after))), "a pretrained weight moved!"

    # (d) Full fine-tune: the same pretrained classifier, every parameter trained.
    full = pretrained_copy(nnx.Linear(Backbone.features, 5, ctx=nnx.context(args.seed + 3)))
    optimizer = nnx.Optimizer(full, optax.adam(args.lr), wrt=nnx.Param)
    full_curve = train(
        full, optimizer, x_few, y_few,
        steps=args.finetune_steps, batch_size=len(x_few), seed=args.seed,
        x_test=x_test, y_test=y_test, eval_every=eval_every, desc="full fine-tune",
    )  # fmt: skip

    print(f"pretrained backbone (frozen) + new head, {count_params(transfer, head_only):,} trainable parameters: "
          f"test accuracy: {transfer_curve[1][-1]:.3f}")  # fmt: skip
    print(f"same classifier trained from scratch, {count_params(scratch):,} trainable parameters: "
          f"test accuracy: {scratch_curve[1][-1]:.3f}")  # fmt: skip

    print(f"LoRA adapters (rank {args.lora_rank}) on the pretrained classifier, "
          f"{count_params(lora, nnx.LoRAParam):,} trainable parameters: test accuracy: {lora_curve[1][-1]:.3f}")  # fmt: skip
    print(f"full fine-tune of the pretrained classifier, {count_params(full):,} trainable parameters: "
          f"test accuracy: {full_curve[1][-1]:.3f}")  # fmt: skip

    curves = {
        "pretrained backbone (frozen) + new head": transfer_curve,
        "from scratch (all trainable)": scratch_curve,
        f"LoRA rank {args.lora_rank} on the pretrained classifier": lora_curve,
        "full fine-tune of the pretrained classifier": full_curve,
    }
    plot_accuracy_curves(curves, xlabel="training step", ylabel="test accuracy on digits 5-9",
                         title=f"{args.labels_per_class} labels per class", out_dir=args.out,
                         name="pretrained_backbone.png")  # fmt: skip


if __name__ == "__main__":
    main()
