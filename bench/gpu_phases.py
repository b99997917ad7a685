"""Where a step of the resident CUDA kernels goes: per-phase microseconds per time step of block 0 (clock64
cycles, converted with the same block's globaltimer), forward and backward, over cells, H and B. Run on a GPU:
    python bench/gpu_phases.py [--T 256] [--cells LSTM,GRU] [--H 512,1024] [--B 1,16,64]"""

from __future__ import annotations

import argparse

import torch

import pyrnn
from pyrnn import cuda_launch

FORWARD = ("step info", "stage", "dot", "pointwise", "prefetch", "barrier")
BACKWARD = ("step info", "pointwise", "prefetch", "barrier", "stage", "dot", "carry")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--cells", default="LSTM,GRU")
    p.add_argument("--H", default="256,512,1024")
    p.add_argument("--B", default="1,16,64")
    args = p.parse_args()
    pyrnn.set_backend("cuda")
    print(f"{torch.cuda.get_device_name()}, T={args.T}: us per step in each phase (block 0)")
    for cell in args.cells.split(","):
        for H in map(int, args.H.split(",")):
            for B in map(int, args.B.split(",")):
                model = getattr(pyrnn, cell)(H, H).cuda()
                x = torch.randn(args.T, B, H, device="cuda", requires_grad=True)
                model(x)[0].sum().backward()  # warm-up
                records: list = []
                cuda_launch.record_phases(records)
                model(x)[0].sum().backward()
                torch.cuda.synchronize()
                cuda_launch.record_phases(None)
                for mode, backward, T, _, _, phases in records:
                    v = phases.tolist()
                    cycles, steps, ns = v[:8], v[8], v[9]
                    per_ns = sum(cycles) / ns if ns else 1.0
                    names = BACKWARD if backward else FORWARD
                    parts = "  ".join(f"{n} {c / per_ns / steps / 1e3:5.2f}" for n, c in zip(names, cycles))
                    print(f"{cell} H={H} B={B} {'bwd' if backward else 'fwd'}: total {ns / steps / 1e3:6.2f} us"
                          f" ({per_ns:.2f} GHz) | {parts}")


if __name__ == "__main__":
    main()
