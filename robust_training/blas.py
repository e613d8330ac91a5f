"""One BLAS thread for the thin matrix products of the decodes and the pairwise distances.

(The cyclic decode's pass over the kept rows is not BLAS but a one-thread numba kernel,
`robust_training.codes.kept_pass`; what stays BLAS there is the locator's small products and the
projections of its fallback path.)

The decodes' products are thin (45 rows by a million columns): memory-bound, so a second thread gains
little on an idle machine, while under CPU contention OpenBLAS's threads wait for each other at every
product (docs/architecture.md §7: 2 cores shared by several processes). Measured at n = 45, d = 1e6 under load: a
projection in 123 blocks took 0.60 s with 2 threads against 0.076 s with one (bench/cyclic_exactness.py
--timing measures the decode itself).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache

from threadpoolctl import ThreadpoolController


@cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded BLAS libraries once (a few ms)


def one_blas_thread() -> AbstractContextManager:
    """Context in which numpy's BLAS runs single-threaded (the previous setting is restored after)."""
    return _controller().limit(limits=1, user_api="blas")
