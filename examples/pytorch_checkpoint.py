#!/usr/bin/python3
"""Save a PyTorch checkpoint to a CubeFS mount, load it back, and check it is the same.

    /usr/bin/python3 examples/pytorch_checkpoint.py /mnt/cubefs [--size-mb 64]

Debian's python3-torch is enough (apt-get install python3-torch). Prints one line per step and exits
non-zero when the loaded state differs from the saved one.
"""
import argparse
import os
import sys
import time

import torch


def make_state(size_mb: int) -> dict:
    """A model-like state dict: a few layers whose weights add up to about size_mb MiB of float32."""
    torch.manual_seed(1234)
    per_layer = max(1, size_mb * 1024 * 1024 // 4 // 4)
    side = int(per_layer ** 0.5)
    model = {f"layers.{i}.weight": torch.randn(side, side) for i in range(4)}
    model.update({f"layers.{i}.bias": torch.randn(side) for i in range(4)})
    return {
        "model": model,
        "optimizer": {"step": 1000, "lr": 3e-4, "betas": (0.9, 0.999)},
        "epoch": 7,
        "note": "checkpoint written through cubefs-mount",
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mountpoint", help="where the CubeFS volume is mounted")
    p.add_argument("--size-mb", type=int, default=64, help="approximate checkpoint size (default 64)")
    p.add_argument("--keep", action="store_true", help="leave the checkpoint file in place")
    args = p.parse_args()

    if not os.path.isdir(args.mountpoint):
        print(f"{args.mountpoint} is not a directory (is the volume mounted?)", file=sys.stderr)
        return 2
    ckpt_dir = os.path.join(args.mountpoint, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"ckpt-{os.getpid()}.pt")

    state = make_state(args.size_mb)
    t0 = time.monotonic()
    torch.save(state, path)
    # torch.save closed the file: the data is on the replicas. fsync the directory entry too.
    fd = os.open(ckpt_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    size = os.path.getsize(path)
    t1 = time.monotonic()
    print(f"saved {path}: {size / 2**20:.1f} MiB in {t1 - t0:.2f} s")

    loaded = torch.load(path)
    t2 = time.monotonic()
    print(f"loaded {path} in {t2 - t1:.2f} s")
    if not same(state, loaded):
        print("MISMATCH: the loaded checkpoint differs from the saved one", file=sys.stderr)
        return 1
    print("ok: the loaded state dict equals the saved one")
    if not args.keep:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
