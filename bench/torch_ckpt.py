#!/usr/bin/python3
"""Times torch.save / torch.load of a state dict of float32 tensors; prints one JSON line.

    /usr/bin/python3 bench/torch_ckpt.py save PATH SIZE_MIB
    /usr/bin/python3 bench/torch_ckpt.py load PATH SIZE_MIB

save: builds the state dict (seeded, untimed), then times open + torch.save + flush + fsync + close.
load: drops the file's page cache (POSIX_FADV_DONTNEED, so the read goes to the file system), then times
torch.load(map_location="cpu"). Both print a checksum of the tensors, so the caller can check that what
was loaded is what was saved.
"""
import json
import os
import sys
import time

TENSOR_MIB = 16  # 4 Mi float32 per tensor: a mid-sized layer


def checksum(sd):
    total = 0.0
    for name in sorted(sd):
        total += float(sd[name][::1021].double().sum())
    return round(total, 3)


def main():
    mode, path, size_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import torch  # noqa: E402 (imported after argument checks, and not timed)

    out = {"mode": mode, "path": path, "torch": torch.__version__}
    if mode == "save":
        torch.manual_seed(0)
        n = max(1, size_mib // TENSOR_MIB)
        per = TENSOR_MIB * (1 << 20) // 4
        sd = {f"layer{i:03d}.weight": torch.randn(per, dtype=torch.float32) for i in range(n)}
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(sd, f)
            f.flush()
            t1 = time.perf_counter()
            os.fsync(f.fileno())
        t2 = time.perf_counter()
        out.update(seconds=t2 - t0, save_seconds=t1 - t0, fsync_seconds=t2 - t1, tensors=n)
    elif mode == "load":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        t0 = time.perf_counter()
        sd = torch.load(path, map_location="cpu")
        t1 = time.perf_counter()
        out.update(seconds=t1 - t0, tensors=len(sd))
    else:
        raise SystemExit(f"unknown mode {mode}")
    out.update(bytes=os.path.getsize(path), checksum=checksum(sd))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
