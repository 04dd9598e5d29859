"""A backbone trained in PyTorch, loaded into nnxlite from safetensors, frozen, with a new head fine-tuned.

What this example teaches:

1. ``nnxlite.interop.torch.load_state_dict`` reads a PyTorch state dict
   (here a ``.safetensors`` file, read without torch) into an nnxlite model
   whose attributes are named like the torch module's. Layouts are
   converted by layer type: ``Conv2d.weight`` (out, in, kh, kw) becomes
   ``Conv.kernel`` (kh, kw, in, out), ``Linear.weight`` is transposed.
2. The one thing weights cannot fix is the data layout: nnxlite is
   channels-last, so images go in as NHWC, and the backbone moves channels
   first before flattening so that its features come out in torch's order.
3. Rules rename names on the way in: ``Rule(r"^features\\.", "layers.")``
   loads the torch ``features`` into ``classifier.backbone.layers``, and
   ``Rule(r"^head\\.", None)`` drops the old head.
4. Freezing is a filter: ``nnx.Optimizer(model, tx, wrt=head_only)``.

The story: PyTorch trains a small CNN on digits 0-4. nnxlite loads it and
must compute the same logits (the script prints the largest difference).
Then we want digits 5-9 with only a few labels each, and compare the
frozen torch backbone plus a new head against the same classifier trained
from scratch. These 8x8 digits are easy, so expect the two to end up
close. One full run on CPU (default flags, seed 0) measured: torch 0.996 test
accuracy on 0-4, nnxlite logits within 3.8e-06 of torch's (the same 0.996),
then on 5-9 with 5 labels per class 0.879 for the frozen backbone plus head
(2,565 trained parameters) against 0.862 from scratch (7,365) -- a small
gain, not a dramatic one.

    python examples/torch_backbone.py            # full run, plot in examples/out/
    python examples/torch_backbone.py --smoke    # a few seconds
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from safetensors.torch import save_file
from torch import nn

import nnxlite as nnx
from _common import batch_indices, few_per_class, load_digits_split, make_parser, plot_accuracy_curves, progress
from _finetune import accuracy, count_params, train
from nnxlite.interop import torch as tx

FEATURES = 32 * 4 * 4


# -- PyTorch: the network that is trained first -------------------------------------------------
class TorchCNN(nn.Module):
    """8x8x1 images (NCHW) -> 5 logits: conv, pool, conv, then a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(FEATURES, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def train_torch(model: TorchCNN, x, y, *, steps: int, batch_size: int, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    images, labels = torch.from_numpy(np.moveaxis(x, -1, 1).copy()), torch.from_numpy(y).long()
    batches = batch_indices(len(x), batch_size, seed=seed)
    model.train()
    for _ in progress(steps, desc="torch: train 0-4"):
        idx = torch.from_numpy(next(batches))
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def torch_logits(model: TorchCNN, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()


# -- nnxlite: the same layers, channels last ------------------------------------------------------
def pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


class Backbone(nnx.Module):
    """torch's ``features``: the layer indices match ``nn.Sequential`` (ReLU and pool are 1, 2 and 4)."""

    def __init__(self, *, ctx: nnx.Context):
        self.layers = nnx.Sequence([
            nnx.Conv(1, 16, (3, 3), padding=1, ctx=ctx), nnx.relu, pool,
            nnx.Conv(16, 32, (3, 3), padding=1, ctx=ctx), nnx.relu,
        ])  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.layers(x)  # (B, 4, 4, 32)
        # torch flattens (C, H, W): move channels first so the features line up with its head.
        return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class Classifier(nnx.Module):
    def __init__(self, backbone: Backbone, head: nnx.Linear):
        self.backbone = backbone
        self.head = head

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.backbone(x))


def new_classifier(seed: int) -> Classifier:
    return Classifier(Backbone(ctx=nnx.context(seed)), nnx.Linear(FEATURES, 5, ctx=nnx.context(seed + 1)))


# The torch checkpoint says features.0.weight; the classifier calls it backbone.layers.0.weight
# (inside an nnx.Sequence the index follows directly, as in nn.Sequential).
TO_CLASSIFIER = [tx.Rule(r"^features\.", "backbone.layers.")]
BACKBONE_ONLY = [tx.Rule(r"^features\.", "layers."), tx.Rule(r"^head\.", None)]


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--torch-steps", type=int, default=400, help="PyTorch training steps on digits 0-4")
    parser.add_argument("--finetune-steps", type=int, default=300, help="nnxlite steps on the few labels of 5-9")
    parser.add_argument("--labels-per-class", type=int, default=5, help="labelled images per digit for 5-9")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the PyTorch training")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (both frameworks)")
    args = parser.parse_args()
    if args.smoke:
        args.torch_steps, args.finetune_steps = 20, 20
    eval_every = max(1, args.finetune_steps // 30)

    # -- 1. PyTorch trains a CNN on digits 0-4 and saves it as safetensors ----------------
    x_train, y_train, x_test, y_test = load_digits_split(seed=args.seed, classes=(0, 1, 2, 3, 4))
    torch.manual_seed(args.seed)
    torch_model = TorchCNN()
    train_torch(torch_model, x_train, y_train, steps=args.torch_steps, batch_size=args.batch_size,
                lr=args.lr, seed=args.seed)  # fmt: skip
    torch_acc = float((torch_logits(torch_model, x_test).argmax(-1) == y_test).mean())
    print(f"torch CNN on digits 0-4 ({len(x_train)} images): test accuracy: {torch_acc:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "torch_cnn_digits_0-4.safetensors"
    save_file(torch_model.state_dict(), str(checkpoint))
    print(f"saved torch state dict: {checkpoint}")

    # -- 2. nnxlite loads it: same logits? -------------------------------------------------
    loaded = new_classifier(args.seed)
    tx.load_state_dict(loaded, checkpoint, rules=TO_CLASSIFIER)  # strict: every name must fit
    diff = float(np.abs(np.asarray(loaded(jnp.asarray(x_test))) - torch_logits(torch_model, x_test)).max())
    nnx_acc = float(accuracy(loaded, x_test, y_test))
    print(f"nnxlite logits vs torch logits on {len(x_test)} test images: max abs diff {diff:.2e}")
    print(f"the loaded model in nnxlite on digits 0-4: test accuracy: {nnx_acc:.3f}")

    # -- 3. few labels of digits 5-9: frozen torch backbone + new head vs from scratch ----
    x_train, y_train, x_test, y_test = load_digits_split(seed=args.seed, classes=(5, 6, 7, 8, 9))
    y_train, y_test = y_train - 5, y_test - 5
    x_few, y_few = few_per_class(x_train, y_train, args.labels_per_class, seed=args.seed)
    print(f"digits 5-9: training on {len(x_few)} labelled images ({args.labels_per_class} per class), "
          f"testing on {len(x_test)}")  # fmt: skip

    transfer = new_classifier(args.seed + 2)
    tx.load_state_dict(transfer.backbone, checkpoint, rules=BACKBONE_ONLY)  # into the sub-module
    head_only = nnx.All(nnx.Param, nnx.PathContains("head"))
    optimizer = nnx.Optimizer(transfer, optax.adam(args.lr), wrt=head_only)
    before = jax.tree.map(np.asarray, nnx.state(transfer.backbone, nnx.Param))
    transfer_curve = train(transfer, optimizer, x_few, y_few, steps=args.finetune_steps, batch_size=len(x_few),
                           seed=args.seed, x_test=x_test, y_test=y_test, eval_every=eval_every,
                           desc="head on frozen backbone")  # full-batch steps on the few labels
    after = nnx.state(transfer.backbone, nnx.Param)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after))), "the frozen backbone moved"

    scratch = new_classifier(args.seed + 2)  # the same initial weights, everything trainable
    optimizer = nnx.Optimizer(scratch, optax.adam(args.lr), wrt=nnx.Param)
    scratch_curve = train(scratch, optimizer, x_few, y_few, steps=args.finetune_steps, batch_size=len(x_few),
                          seed=args.seed, x_test=x_test, y_test=y_test, eval_every=eval_every, desc="from scratch")

    print(f"torch backbone (frozen) + new head, {count_params(transfer, head_only):,} trainable parameters: "
          f"test accuracy: {transfer_curve[1][-1]:.3f}")  # fmt: skip
    print(f"same classifier trained from scratch, {count_params(scratch):,} trainable parameters: "
          f"test accuracy: {scratch_curve[1][-1]:.3f}")  # fmt: skip

    curves = {"PyTorch backbone (frozen) + new head": transfer_curve, "from scratch (all trainable)": scratch_curve}
    plot_accuracy_curves(curves, xlabel="nnxlite training step", ylabel="test accuracy on digits 5-9",
                         title=f"{args.labels_per_class} labels per class; torch vs nnxlite logits differ by {diff:.1e}",
                         out_dir=args.out, name="torch_backbone.png")  # fmt: skip


if __name__ == "__main__":
    main()
