"""kNN queries per second: gjp's exact chunked search against scikit-learn's
NearestNeighbors (what the original GeoJEPA used), on the same random data, in one run.

    python benchmarks/bench_knn.py [--rows 1000000] [--dim 384] [--queries 64] [--k 8]

Also reports the peak memory of each (ru_maxrss deltas are not separable in one process,
so gjp's search memory is bounded by construction: one chunk of distances at a time).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from gjp.evaluate.knn import search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    queries = np.arange(args.queries) * (args.rows // args.queries)
    print(f"{args.rows:,} × {args.dim} float32 ({data.nbytes / 2**30:.2f} GiB), {args.queries} queries, k = {args.k}")

    for metric in ("cosine", "euclidean"):
        search(data[:1000], data[:2], args.k, metric)  # warm-up
        start = time.perf_counter()
        ours, _ = search(data, data[queries], args.k, metric, exclude=queries)
        gjp_s = time.perf_counter() - start

        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=args.k + 1, algorithm="brute", metric=metric).fit(data)
        start = time.perf_counter()
        _, theirs = nn.kneighbors(data[queries])
        sk_s = time.perf_counter() - start
        theirs = np.array([[j for j in row if j != q][:args.k] for row, q in zip(theirs, queries)])
        agree = float((np.sort(ours, axis=1) == np.sort(theirs, axis=1)).all(axis=1).mean())
        print(f"{metric}: gjp {args.queries / gjp_s:,.1f} queries/s, sklearn {args.queries / sk_s:,.1f} queries/s "
              f"({sk_s / gjp_s:.1f}× faster); same neighbours for {agree:.0%} of queries")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
