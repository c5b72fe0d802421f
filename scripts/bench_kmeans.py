"""Benchmark the clustering engine against peer K-means implementations, side by side.

Issue 4 "Speed": 10,000 × 4,096 float32 items, k = 100, 20 iterations from the same initial
centres. Rows: this engine's K-means, ACK-means batched and sequential (paper order), and the
peers that are importable here (faiss, scikit-learn, scipy's kmeans2 — missing ones are listed
as "not installed"). Columns: time per iteration and agreement of labels (ARI) with this engine's
K-means. Each run is timed once end to end (initial step + loop iterations), divided by the
number of assignment passes it made.

    python scripts/bench_kmeans.py            # the benchmark size
    python scripts/bench_kmeans.py --quick    # 2,000 × 512, k = 20, 5 iterations (smoke test)
    python scripts/bench_kmeans.py --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np
import torch

from ackmeans_torch.cluster.engine import ConvergenceWarning, SquaredEuclidean, fit_clusters
from ackmeans_torch.cluster.init import init_random_items
from ackmeans_torch.cluster.penalties import NoPenalty, QuadraticPenalty
from ackmeans_torch.eval.metrics import adjusted_rand_index


def make_data(n: int, dim: int, k: int, seed: int) -> torch.Tensor:
    """k Gaussian centres in dim dimensions with noise of the same scale (overlapping classes)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    return centres[labels] + torch.randn(n, dim, generator=g)


def run_engine(x, init, rule, iters, batch_size):
    g = torch.Generator().manual_seed(0)
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit_clusters(SquaredEuclidean(x), init.clone(), rule=rule, max_iter=iters - 1,
                              sigma0=0.0, batch_size=batch_size, generator=g)
    if x.is_cuda:
        torch.cuda.synchronize()
    passes = result.n_iter + 1
    return (time.perf_counter() - t0) / passes, result.labels.cpu().numpy(), passes


def run_scipy(x, init, iters):
    from scipy.cluster.vq import kmeans2

    t0 = time.perf_counter()
    _, labels = kmeans2(x.cpu().numpy(), init.cpu().numpy(), iter=iters, minit="matrix")
    return (time.perf_counter() - t0) / iters, labels, iters


def run_faiss(x, init, iters):
    import faiss

    xn = x.cpu().numpy()
    km = faiss.Kmeans(xn.shape[1], init.shape[0], niter=iters, verbose=False)
    t0 = time.perf_counter()
    km.train(xn, init_centroids=init.cpu().numpy())
    _, labels = km.index.search(xn, 1)
    # faiss stops early once the objective stops changing: divide by the iterations it ran
    # (one objective value each), not by niter
    done = max(len(km.obj), 1)
    return (time.perf_counter() - t0) / done, labels[:, 0], done


def run_sklearn(x, init, iters):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=init.shape[0], init=init.cpu().numpy(), n_init=1, max_iter=iters,
                tol=0.0, algorithm="lloyd")
    t0 = time.perf_counter()
    km.fit(x.cpu().numpy())
    return (time.perf_counter() - t0) / max(km.n_iter_, 1), km.labels_, km.n_iter_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small problem for a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ack-batch", type=int, default=256,
                        help="batch size of the batched ACK-means row")
    parser.add_argument("--no-sequential", action="store_true",
                        help="skip the (slow, Python-loop) sequential ACK-means row")
    args = parser.parse_args()
    n, dim, k, iters = (2000, 512, 20, 5) if args.quick else (10_000, 4096, 100, 20)
    x = make_data(n, dim, k, seed=0).to(args.device)
    init = init_random_items(SquaredEuclidean(x), k, generator=torch.Generator().manual_seed(1))
    print(f"# {n} x {dim} float32, k={k}, {iters} iterations, device={x.device}, "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}")

    run_engine(x, init, NoPenalty(), 1, 1)  # warm-up: BLAS threads, allocator
    rows = []
    t_km, ref, p = run_engine(x, init, NoPenalty(), iters, 1)
    rows.append(("engine K-means", t_km, p, 1.0))
    t, lab, p = run_engine(x, init, QuadraticPenalty(beta=0.5), iters, args.ack_batch)
    rows.append((f"engine ACK-means (batch {args.ack_batch})", t, p, adjusted_rand_index(lab, ref)))
    ack_batched = lab
    if not args.no_sequential:
        t, lab, p = run_engine(x, init, QuadraticPenalty(beta=0.5), iters, 1)
        rows.append(("engine ACK-means (sequential)", t, p, adjusted_rand_index(lab, ref)))
        print(f"# ARI(batched ACK, sequential ACK) = {adjusted_rand_index(ack_batched, lab):.4f}")
    for name, module, fn in [("faiss K-means", "faiss", run_faiss),
                             ("scikit-learn KMeans (lloyd)", "sklearn", run_sklearn),
                             ("scipy kmeans2", "scipy", run_scipy)]:
        if importlib.util.find_spec(module) is None:
            rows.append((name, float("nan"), 0, float("nan")))
            continue
        t, lab, p = fn(x, init, iters)
        rows.append((name, t, p, adjusted_rand_index(np.asarray(lab), ref)))

    print(f"| {'method':<34} | {'s/iter':>8} | {'vs engine K-means':>17} | {'passes':>6} | "
          f"{'ARI vs engine K-means':>21} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 19}|{'-' * 8}|{'-' * 23}|")
    for name, t, p, ari in rows:
        if p == 0:
            print(f"| {name:<34} | {'not installed':>50} | {'':>21} |")
            continue
        print(f"| {name:<34} | {t:8.3f} | {t / t_km:16.2f}x | {p:6d} | {ari:21.4f} |")


if __name__ == "__main__":
    main()
