"""Event-driven kernels against dense and sparse torch, the bandwidth bound, and the deployed model.

One process, one thread (``torch.set_num_threads(1)``, one Numba thread), everything measured in
the same run so the ratios are meaningful on a shared machine (absolute numbers are not):

(a) synaptic events per second of the packed (1 bit/weight) and int8 kernels at 1 %, 5 %, 20 %
    input activity on 700→256, 256→256 and 4096→4096 layers; a "synaptic event" is one
    (active input, output) pair, i.e. ``events · fan_out``. The input is ``R`` rows of spikes
    (time steps × samples: ``R = T·B = 100 × 32`` for the SHD-sized layers, 256 for 4096→4096);
(b) the same product as a dense float32 ``torch`` matmul ``x @ Wᵀ`` and as ``torch.sparse``
    (CSR ``x`` times dense ``Wᵀ``), counted with the same number of synaptic events, and the
    kernels' speed-up over each;
(c) the memory-bandwidth bound: a streaming read of a 256 MiB array gives bytes/s; a kernel that
    reads one weight row per event cannot exceed ``bandwidth / bytes per synapse`` (1/8 byte
    packed, 1 byte int8) synaptic events/s; the table gives each kernel's fraction of it (above
    1 when the rows stay in cache);
(d) end to end: an exported SHD-sized ``SpikingMLP`` (700→256→20, T = 100, 5 % input activity)
    per sample in the engine against the PyTorch ``mode`` forward (batch 1 and batch 32), and
    the deployed file's size against the float32 state dict.

Usage::

    nice python benchmarks/kernels.py            # ~1-2 min on a shared 2-core box
    python benchmarks/kernels.py --quick         # fewer repetitions
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch

from sbnn import evaluation, export
from sbnn.kernels import _kernels as K
from sbnn.kernels import api
from sbnn.models import SpikingMLP

LAYERS = [(700, 256, 3200), (256, 256, 3200), (4096, 4096, 256)]
RATES = [0.01, 0.05, 0.20]


def best_time(fn, reps: int) -> float:
    """Minimum wall time of ``reps`` calls after one warm-up call (min: least disturbed by others)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth(reps: int) -> float:
    """Bytes/s of a streaming read of a 256 MiB array (best of Numba loop and NumPy sum)."""
    a = np.ones(32 << 20, dtype=np.uint64)
    t = min(best_time(lambda: K.stream_sum(a), reps), best_time(lambda: a.sum(), reps))
    return a.nbytes / t


def layer_rows(n_in: int, n_out: int, rows: int, rate: float, reps: int, bw: float, rng) -> dict:
    sign = rng.choice(np.array([-1, 1], np.int8), size=(n_out, n_in))
    packed, int8 = api.dense_rows(sign, "packed"), api.dense_rows(sign, "int8")
    x = (rng.random((rows, n_in)) < rate).astype(np.uint8)
    ev = api.events_from_dense(x)
    xt = torch.from_numpy(x.astype(np.float32))
    w = torch.from_numpy(sign.astype(np.float32))
    wt = w.T.contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        xs = xt.to_sparse_csr()
        t_sparse = best_time(lambda: xs @ wt, reps)
    t_packed = best_time(lambda: K.linear_packed(ev.ptr, ev.idx, packed.rows, n_out, 1), reps)
    t_int8 = best_time(lambda: K.linear_int8(ev.ptr, ev.idx, int8.rows, 1), reps)
    t_dense = best_time(lambda: torch.mm(xt, wt), reps)
    syn = ev.n_events * n_out
    return {
        "packed": syn / t_packed, "int8": syn / t_int8, "dense": syn / t_dense, "sparse": syn / t_sparse,
        "bound_packed": 8 * bw, "bound_int8": bw,
    }


def end_to_end(reps: int, rng) -> dict:
    torch.manual_seed(0)
    net = SpikingMLP(700, (256,), 20, binary_input=True)
    x32 = torch.from_numpy((rng.random((100, 32, 700)) < 0.05).astype(np.float32))
    net.calibrate(x32)
    with tempfile.TemporaryDirectory() as tmp:
        path = export.save(net, os.path.join(tmp, "shd.sbnn"))
        size = path.stat().st_size
        torch_file = os.path.join(tmp, "state.pt")
        torch.save(net.state_dict(), torch_file)
        torch_size = os.path.getsize(torch_file)
        packed, int8 = export.load(path, "packed"), export.load(path, "int8")
    x1 = x32[:, :1]
    x1n, x32n = x1.numpy().astype(np.uint8), x32.numpy().astype(np.uint8)
    out = {"size": size, "state_dict": export.state_dict_nbytes(net), "torch_save": torch_size}
    with evaluation(net, "mode"), torch.no_grad():
        out["torch_b1"] = best_time(lambda: net(x1), reps)
        out["torch_b32"] = best_time(lambda: net(x32), reps) / 32
    out["packed_b1"] = best_time(lambda: packed.run(x1n), reps)
    out["packed_b32"] = best_time(lambda: packed.run(x32n), reps) / 32
    out["int8_b1"] = best_time(lambda: int8.run(x1n), reps)
    out["int8_b32"] = best_time(lambda: int8.run(x32n), reps) / 32
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    args = parser.parse_args()
    reps = 3 if args.quick else 7
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    rng = np.random.default_rng(0)
    with api.threads(1):
        bw = bandwidth(reps)
        rows = [(f"{i}→{o}", r, layer_rows(i, o, n, r, reps, bw, rng)) for i, o, n in LAYERS for r in RATES]
        e2e = end_to_end(reps, rng)
    print(f"# sbnn kernels benchmark — {platform.processor() or platform.machine()}, 1 thread, "
          f"torch {torch.__version__}; streaming read {bw / 1e9:.1f} GB/s")
    head = ("layer", "act.", "packed", "int8", "dense", "sparse", "packed/dense", "int8/dense",
            "packed/sparse", "int8/sparse", "packed/bound", "int8/bound")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, rate, r in rows:
        cells = [name, f"{100 * rate:.0f} %"] + [f"{r[k] / 1e9:.2f}" for k in ("packed", "int8", "dense", "sparse")]
        cells += [f"{r['packed'] / r['dense']:.1f}×", f"{r['int8'] / r['dense']:.1f}×",
                  f"{r['packed'] / r['sparse']:.1f}×", f"{r['int8'] / r['sparse']:.1f}×",
                  f"{r['packed'] / r['bound_packed']:.2f}", f"{r['int8'] / r['bound_int8']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print("(synaptic events per second in G/s; bound = streaming-read bandwidth / bytes per synapse)")
    print()
    print("| end to end: SHD-sized 700→256→20, T = 100, 5 % input | per sample, batch 1 | per sample, batch 32 |")
    print("|---|---|---|")
    print(f"| PyTorch `mode` forward | {1e3 * e2e['torch_b1']:.3f} ms | {1e3 * e2e['torch_b32']:.3f} ms |")
    for k in ("packed", "int8"):
        print(f"| engine, {k} | {1e3 * e2e[k + '_b1']:.3f} ms ({e2e['torch_b1'] / e2e[k + '_b1']:.1f}× faster) | "
              f"{1e3 * e2e[k + '_b32']:.3f} ms ({e2e['torch_b32'] / e2e[k + '_b32']:.1f}× faster) |")
    print(f"| size: deployed file {e2e['size']:,} B; float32 state dict {e2e['state_dict']:,} B "
          f"({e2e['state_dict'] / e2e['size']:.1f}× smaller), torch.save file {e2e['torch_save']:,} B "
          f"({e2e['torch_save'] / e2e['size']:.1f}×) | | |")


if __name__ == "__main__":
    main()
