"""A training loop written by hand with cudcn's tape: forward, loss, backward, optimiser step.

The task is synthetic (no download): tell horizontal from vertical bars of random length and position
in 16 x 16 noisy images. The network has a deformable layer (mmcv's ``DeformConv2dPack``) whose offset
convolution gets its own, smaller learning rate through a parameter group. At the end the model is
saved as an ``.npz`` checkpoint and loaded back.

Run: python examples/custom_training_loop.py
"""

import tempfile
from pathlib import Path

import numpy as np

import cudcn
from cudcn import functional as F
from cudcn import nn, optim


def bars(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 1, 16, 16) float32 with one bar each; label 0 horizontal, 1 vertical."""
    images = rng.normal(0.0, 0.2, (n, 1, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    for k in range(n):
        length, start, across = rng.integers(4, 13), rng.integers(0, 4), rng.integers(2, 14)
        if labels[k] == 0:
            images[k, 0, across, start : start + length] += 1.0
        else:
            images[k, 0, start : start + length, across] += 1.0
    return images, labels


rng = np.random.default_rng(0)
init = np.random.default_rng(1)
net = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1, rng=init),
    nn.BatchNorm2d(8),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.DeformConv2dPack(8, 16, 3, padding=1, rng=init),
    nn.BatchNorm2d(16),
    nn.ReLU(),
    nn.GlobalAvgPool2d(),
    nn.Linear(16, 2, rng=init),
)
offset_params = list(net[4].conv_offset.parameters())
other_params = [p for p in net.parameters() if all(p is not q for q in offset_params)]
opt = optim.Adam([{"params": other_params}, {"params": offset_params, "lr": 1e-3}], lr=1e-2)
sched = optim.StepLR(opt, step_size=40, gamma=0.3)

losses = []
for step in range(80):
    x, y = bars(rng, 32)
    loss = F.cross_entropy(net(x), y)  # the forward pass records on the tape
    opt.zero_grad()
    loss.backward()  # walks the tape in reverse, fills p.grad
    opt.step()
    sched.step()
    losses.append(float(loss.data))
    if step % 20 == 19:
        rates = ", ".join(f"{lr:.2g}" for lr in sched.get_last_lr())
        print(f"step {step + 1:3d}  loss {np.mean(losses[-20:]):.3f}  learning rates {rates}")

x_test, y_test = bars(np.random.default_rng(2), 256)
net.eval()
with cudcn.no_grad():
    pred = net(x_test).data.argmax(axis=1)
print(f"test accuracy {100 * (pred == y_test).mean():.1f}% (chance 50%)")
offsets = np.abs(net[4].conv_offset.weight.data).max()
print(f"largest offset-conv weight after training: {offsets:.3f} (it started at 0)")

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "bars.npz"
    nn.save_checkpoint(net, path)
    net.load_state_dict(nn.load_checkpoint(path))
    with cudcn.no_grad():
        again = net(x_test).data.argmax(axis=1)
print("checkpoint round trip gives the same predictions:", bool((again == pred).all()))
if not np.mean(losses[-20:]) < np.mean(losses[:20]):
    raise SystemExit("the loss did not fall")
