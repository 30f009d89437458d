"""One line per CUDA attention kernel path: relative errors of out / lse /
dq / dk / dv against the float64 reference, so a GPU session sees at a glance
which kernel is wrong before reading the test log (scripts/gpu_check.sh runs it).

Paths: tensor-core forward + backward (fp16/bf16, head dims 64, 128, 256: the
backward with 8 warps), CUDA-core everything (fp32, fp64,
and fp16 with a head dim that is not a multiple of 8); each with causal
bottom-right + a float mask + GQA, and with dropout against the CPU kernel.
"""

import os

import torch

os.environ.setdefault("PYDL_EXPERIMENTAL_CUDA", "1")
# A fallback would run pydl.reference and report near-zero errors: refuse it.
os.environ.setdefault("PYDL_STRICT", "1")
import pydl  # noqa: F401
from pydl import reference
from pydl.nn.functional import scaled_dot_product_attention as sdpa


def rel(a, b):
    a, b = a.double(), b.double()
    finite = torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), finite):
        return float("nan")
    return ((a - b)[finite].norm() / b[finite].norm().clamp_min(1e-30)).item()


def run(dtype, E, Ev, L=130, S=200, causal="bottom_right", masked=True):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).cuda()
    q, k, v = r(2, 4, L, E), r(2, 2, S, E), r(2, 2, S, Ev)
    mask = r(L, S) if masked else None
    grad = r(2, 4, L, Ev)
    kw = {"is_causal": causal is not None, "causal_alignment": causal or "top_left",
          "enable_gqa": True}
    results = []
    for x, m, fn in (((q, k, v), mask, lambda *a: reference.scaled_dot_product_attention(
                         *a, return_lse=True, **kw)),
                     ((q.to(dtype), k.to(dtype), v.to(dtype)),
                      None if mask is None else mask.to(dtype),
                      lambda *a: sdpa(*a, return_lse=True, **kw))):
        leaves = [t.detach().requires_grad_() for t in x]
        out, lse = fn(*leaves, m)
        grads = torch.autograd.grad((out.double() * grad).sum(), leaves)
        results.append((out, lse, *grads))
    errs = [rel(a, b) for a, b in zip(results[1], results[0])]
    names = ("out", "lse", "dq", "dk", "dv")
    return "  ".join(f"{n} {e:.1e}" for n, e in zip(names, errs))


def dropout_vs_cpu(dtype):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 32, generator=g, dtype=dtype) for _ in range(3))
    outs = []
    for dev in ("cpu", "cuda"):
        seed = torch.tensor([123456789], device=dev)
        out, _ = torch.ops.pydl.attention(q.to(dev), k.to(dev), v.to(dev), None, seed, 0.3,
                                          False, False, 0.2)
        outs.append(out.cpu())
    # The same seed drops the same weights on both: the outputs agree to rounding.
    return f"dropout vs CPU ({dtype}): out rel {rel(outs[1], outs[0]):.1e}"


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    paths = [
        ("tc fwd + tc bwd  fp16 E64", torch.float16, 64, 64),
        ("tc fwd + tc bwd  bf16 E128/Ev64", torch.bfloat16, 128, 64),
        ("tc fwd + tc bwd  fp16 E40", torch.float16, 40, 40),
        ("tc fwd + tc bwd 8 warps bf16 E256", torch.bfloat16, 256, 256),
        ("simt             fp16 E12/Ev20", torch.float16, 12, 20),
        ("simt             fp32 E64", torch.float32, 64, 64),
        ("simt             fp64 E80", torch.float64, 80, 80),
    ]
    for name, dtype, E, Ev in paths:
        for causal, masked in ((None, False), ("bottom_right", True)):
            try:
                line = run(dtype, E, Ev, causal=causal, masked=masked)
                torch.cuda.synchronize()  # a kernel fault shows up here, on its own path
            except Exception as e:  # noqa: BLE001  report and go on to the next path
                line = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:100]}"
                if any(m in str(e) for m in ("CUDA error", "illegal", "device-side assert",
                                             "misaligned address", "launch failure")):
                    # A device fault poisons the context: every later path would
                    # fail the same way and say nothing about its own kernel.
                    print(f"{name:34s} {line}\nstopping: the CUDA context is lost", flush=True)
                    raise SystemExit(1)
            print(f"{name:34s} {'causal+mask' if masked else 'plain':11s} {line}", flush=True)
    for dtype in (torch.float32, torch.float64):
        print(dropout_vs_cpu(dtype))
    torch.cuda.synchronize()
