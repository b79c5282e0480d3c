"""Epoch-load time of SHD: tonic's per-sample HDF5 reads against the dense cache (sbnn.data.shd_dense).

Writes a full-size generated SHD training file (8156 samples, the real training set's size) in
a temporary folder, then times one pass over the training loader (batch 32, no model):
``cache=False`` (tonic's SHD opens the file for every sample), the dense cache's first pass
(built from the file) and its later passes (memory-mapped).

    OMP_NUM_THREADS=1 python benchmarks/shd_load.py [--spikes 1000 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _epoch(dm) -> float:
    start = time.perf_counter()
    for _ in dm.train_dataloader():
        pass
    return time.perf_counter() - start


def main(argv=None) -> dict:
    from sbnn.data import SHDDataModule
    from sbnn.data._fixtures import write_shd_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8156)
    parser.add_argument("--spikes", type=int, nargs=2, default=(1000, 3000), help="range of spikes per sample")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "SHD"
        folder.mkdir()
        for split, n in (("train", args.n), ("test", 64)):
            write_shd_file(folder / f"shd_{split}.h5", np.arange(n) % 20, spikes=tuple(args.spikes))
            (folder / f"shd_{split}.h5.zip").touch()
        plain = SHDDataModule(root=tmp, cache=False)
        plain.setup()
        t_plain = _epoch(plain)
        start = time.perf_counter()
        dense = SHDDataModule(root=tmp, cache=True)
        dense.setup()
        t_build = time.perf_counter() - start
        t_first = _epoch(dense)
        t_dense = _epoch(dense)
    result = dict(n_train=len(plain.train_set), tonic_epoch_s=t_plain, dense_build_s=t_build, dense_epoch_s=t_dense,
                  dense_first_epoch_s=t_first, ratio=t_plain / t_dense)
    print(result)
    return result


if __name__ == "__main__":
    main()
