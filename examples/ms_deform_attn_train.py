"""Train a tiny multi-scale deformable attention model with cudcn on the CPU, then export it to ONNX.

The task is synthetic (no download): find the centre of one bright blob in a noisy 32 x 32 image.
The model sees a three-level feature pyramid of the image (16 x 16, 8 x 8, 4 x 4 average pools),
each pixel described by its intensity I and by I·x, I·y. Four learned queries, conditioned on the
image's mean feature, each predict a reference point, attend around it on every level through
``nn.MultiScaleDeformableAttention`` (4 heads x 4 points per level) and regress the blob's centre
from what they gathered; the loss is the mean squared error of the four predictions. Adam trains it
end to end, so the sampling offsets and attention weights learn where to look.

Then the model is exported with ``cudcn.onnx.export`` (the attention becomes a gather-based subgraph
of standard nodes) and, when onnxruntime is installed, run in ONNX Runtime at another batch size and
compared with cudcn's forward. Exits 1 if the loss did not fall.

Run: python examples/ms_deform_attn_train.py [--steps 150] [--out DIR]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cudcn
from cudcn import nn, optim
from cudcn.functional import mse_loss

LEVELS = [(16, 16), (8, 8), (4, 4)]  # (H_l, W_l)
EMBED, HEADS, POINTS, QUERIES = 32, 4, 4, 4


def blobs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images' pyramids (n, S, 3) float32 and the blobs' centres (n, 2) as normalised (x, y).

    Each pixel of each level is described by (I, I·x, I·y): its intensity, and its normalised
    centre weighted by it, so that a sum over points that cover the blob measures its centre."""
    centres = rng.uniform(0.15, 0.85, (n, 2))
    grid = (np.arange(32) + 0.5) / 32
    dx = grid[None, None, :] - centres[:, 0, None, None]
    dy = grid[None, :, None] - centres[:, 1, None, None]
    images = 4 * np.exp(-(dx**2 + dy**2) / (2 * 0.06**2)) + rng.normal(0, 0.1, (n, 32, 32))
    levels = []
    for h, w in LEVELS:
        k = 32 // h
        pooled = images.reshape(n, h, k, w, k).mean(axis=(2, 4))[..., None]
        xs, ys = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
        coords = np.stack([xs, ys], -1)
        levels.append(np.concatenate([pooled, pooled * coords], -1).reshape(n, h * w, 3))
    return np.concatenate(levels, 1).astype(np.float32), centres.astype(np.float32)


class BlobFinder(nn.Module):
    """Input projection with a learned level embedding, queries from learned embeddings plus the
    image's mean feature, reference points from the queries, one deformable attention, a head."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.input_proj = nn.Linear(3, EMBED, rng=rng)
        self.level_embed = nn.Parameter(rng.normal(0, 0.5, (sum(h * w for h, w in LEVELS), EMBED)))
        self.query_embed = nn.Parameter(rng.normal(0, 1.0, (QUERIES, EMBED)))
        self.reference = nn.Linear(EMBED, 2, rng=rng)
        self.attn = nn.MultiScaleDeformableAttention(
            EMBED, HEADS, len(LEVELS), POINTS, dropout=0.0, batch_first=True, rng=rng
        )
        self.head = nn.Linear(EMBED, 2, rng=rng)
        self.level_embed.data = self.level_embed.data.astype(np.float32)
        self.query_embed.data = self.query_embed.data.astype(np.float32)

    def forward(self, features):  # (B, S, 3) -> (B, QUERIES, 2) normalised (x, y)
        value = self.input_proj(features) + self.level_embed
        query = value.mean(axis=1, keepdims=True) + self.query_embed  # (B, QUERIES, EMBED)
        ref = self.reference(query).sigmoid()  # (B, QUERIES, 2), the same point on every level
        ref = ref.reshape(ref.shape[0], QUERIES, 1, 2) * np.ones((1, 1, len(LEVELS), 1), np.float32)
        # identity=0: no residual (Deformable DETR's form): the answer is in what the queries gather
        out = self.attn(query, value=value, identity=0.0, reference_points=ref, spatial_shapes=LEVELS)
        return self.head(out).sigmoid()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=None, help="folder for the .onnx (default: a temp dir)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    net = BlobFinder(np.random.default_rng(1))
    opt = optim.Adam(net.parameters(), lr=5e-3)
    start, losses = time.perf_counter(), []
    print("step  loss (mean of the last 15)  time")
    for step in range(args.steps):
        features, centres = blobs(rng, 8)
        target = np.repeat(centres[:, None, :], QUERIES, axis=1)
        loss = mse_loss(net(features), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
        if step % 15 == 14:
            print(f"{step + 1:4d}  {np.mean(losses[-15:]):.5f}  {time.perf_counter() - start:5.1f} s")
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")
    features, centres = blobs(np.random.default_rng(2), 64)
    net.eval()
    with cudcn.no_grad():
        pred = net(features).data.mean(axis=1)
    error = np.abs(pred - centres).mean() * 32
    print(f"mean error of the predicted centre on 64 new images: {error:.2f} pixels of 32")
    export(net, features, args.out)
    first, last = np.mean(losses[:15]), np.mean(losses[-15:])
    print(f"loss fell from {first:.5f} to {last:.5f}: {bool(last < 0.5 * first)}")
    return 0 if last < 0.5 * first else 1


def export(net: BlobFinder, features: np.ndarray, out: Path | None) -> None:
    """Export with the traced batch 2, run in ONNX Runtime on 5 images, compare with cudcn."""
    try:
        import cudcn.onnx
    except ImportError:
        print("ONNX export skipped: onnx not installed (pip install 'cudcn[onnx]')")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = (out or Path(tmp)) / "blob_finder.onnx"
        model = cudcn.onnx.export(net, features[:2], path, input_names=["features"])
        ops = sorted({node.op_type for node in model.graph.node})
        print(f"exported {path.name}: {len(model.graph.node)} nodes, standard ops {', '.join(ops)}")
        try:
            import onnxruntime
        except ImportError:
            print("ONNX Runtime check skipped: onnxruntime not installed")
            return
        sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"features": features[:5]})[0]
    with cudcn.no_grad():
        ours = net(features[:5]).data
    print(f"onnxruntime at batch 5 vs cudcn: largest difference {np.abs(got - ours).max():.2e}")


if __name__ == "__main__":
    sys.exit(main())
