"""Per-step GPU timings of pyrnn's kernels against torch.nn (cuDNN) over B and H: microseconds per time
step, inference and training, medians of CUDA-event timings. Run on a GPU machine:
    python bench/gpu_profile.py [--backend cuda] [--T 256] [--triton-mode resident] [--mma]"""

from __future__ import annotations

import argparse
import statistics

import torch

import pyrnn


def time_ms(fn, reps: int = 15) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def step_fns(module, x):
    def infer():
        with torch.no_grad():
            module(x)

    def train():
        out, _ = module(x.requires_grad_())
        out.sum().backward()

    return infer, train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="cuda")
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--cells", default="LSTM,GRU")
    p.add_argument("--H", default="256,512,1024")
    p.add_argument("--B", default="1,4,16,64")
    p.add_argument("--triton-mode", default="auto", help="with --backend triton: auto, persistent, resident, step")
    p.add_argument("--mma", action="store_true", help="with --backend cuda: TF32 tensor-core dot products in the "
                   "resident kernels (pyrnn.cuda_launch.set_mma; float32 under cuDNN's TF32 flag, on by default)")
    args = p.parse_args()
    pyrnn.set_backend(args.backend)
    if args.mma:
        from pyrnn import cuda_launch

        cuda_launch.set_mma(True)
    if args.backend == "triton":
        from pyrnn.kernels import triton_host

        triton_host.set_mode(args.triton_mode)
    mode = f" ({args.triton_mode})" if args.backend == "triton" else (" (TF32 MMA)" if args.mma else "")
    print(f"{torch.cuda.get_device_name()}, T={args.T}, backend {args.backend}{mode}: us per step (torch / pyrnn)")
    print(f"{'case':24s} {'infer torch':>12s} {'pyrnn':>8s} {'ratio':>6s} {'train torch':>12s} {'pyrnn':>8s} {'ratio':>6s}")
    for cell in args.cells.split(","):
        for H in map(int, args.H.split(",")):
            for B in map(int, args.B.split(",")):
                torch.manual_seed(0)
                ref = getattr(torch.nn, cell)(H, H).cuda()
                ours = getattr(pyrnn, cell)(H, H).cuda()
                ours.load_state_dict(ref.state_dict())
                x = torch.randn(args.T, B, H, device="cuda")
                row = []
                for fn_t, fn_p in zip(step_fns(ref, x), step_fns(ours, x)):
                    t, q = time_ms(fn_t) * 1e3 / args.T, time_ms(fn_p) * 1e3 / args.T
                    row += [t, q, t / q]
                print(f"{cell} H={H} B={B:<4d}".ljust(24) + " {:12.1f} {:8.1f} {:5.2f}x {:12.1f} {:8.1f} {:5.2f}x".format(*row))


if __name__ == "__main__":
    main()
