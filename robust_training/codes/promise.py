"""The codes' promise beyond what they correct, checked from the outside (tests and benchmarks).

A decode that returns instead of raising DecodeError must be explained by the messages it kept: its
flagged set is one the code could correct beside the erased (missing) workers, none of them erased, the
unflagged messages that arrived are the encoding of some partition
updates to within the tolerance, and the returned total is those updates' sum. "Within the tolerance" is
judged row by row, each row relative to the larger of its own norm and the typical row (RTOL_FACTOR times
rtol, plus rounding): rows are rescaled by that before the fit, which changes no consistency (R = W G iff
D R = D W G) but keeps a few huge kept rows from vouching, through their own float64 rounding, for the
honest-scale rows beside them. The typical row is the larger of the honest rows' median and the kept
rows' median: when adversaries are most of the kept rows, their scale is the scale of the codeword the
kept rows claim, and nothing but that codeword is left to judge them by (the codes say so too). It uses nothing but the encoding matrix, so it judges every registered
code the same way and none of their decoders' internals.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from robust_training.codes.base import Code

#: Slack of the check over the codes' own tolerances (rtol factor, and rounding in units of eps).
RTOL_FACTOR = 100.0
ROUNDING_ULPS = 32.0
_EPS = float(np.finfo(np.float64).eps)


def unexplained(code: Code, received: np.ndarray, flagged: list[int], total: np.ndarray,
                honest: np.ndarray, erased: Iterable[int] = ()) -> str | None:
    """Why the decode (flagged, total) of `received` with `erased` rows missing breaks the promise, or
    None when it keeps it (the erased rows' content is never read).

    `honest`: the honest messages (known to a test, not to the decoder), for the typical honest row.
    """
    missing = sorted(set(erased))
    if set(flagged) & set(missing):
        return f"flagged {flagged} includes erased workers {missing}"
    if not code.correctable(flagged, missing):
        return f"flagged {flagged} is more than the code corrects beside the erased {missing}"
    kept = np.setdiff1d(np.arange(code.n_workers), [*flagged, *missing])
    honest = np.delete(honest, missing, axis=0) if missing else honest
    with np.errstate(over="ignore"):
        kept_norms = np.linalg.norm(received[kept], axis=1)
    typical = max(float(np.median(np.linalg.norm(honest, axis=1))), float(np.median(kept_norms))) or 1.0
    rescale = 1.0 / np.maximum(kept_norms, typical)
    unscaled = code.encoding_matrix[kept]
    rank = int(np.linalg.matrix_rank(unscaled)) if unscaled.size else 0  # rescaling rows does not change it
    weights = unscaled * rescale[:, None]
    rows = received[kept] * rescale[:, None]
    left, _, _ = np.linalg.svd(weights, full_matrices=True)  # orthonormal: rounding ~ eps |rows|
    residual = float(np.linalg.norm(left[:, rank:].T @ rows))
    allowance = (RTOL_FACTOR * code.rtol + ROUNDING_ULPS * _EPS) * np.sqrt(kept.size)
    if not residual <= allowance:
        return f"the kept messages are off the code by {residual:.3g} > {allowance:.3g} (relative, per row)"
    updates, *_ = np.linalg.lstsq(unscaled, received[kept], rcond=None)
    explained = updates.sum(axis=0)
    gap = float(np.linalg.norm(total - explained))
    summed = float(np.linalg.norm(received[kept]))  # a sum of rows is exact only to eps times the rows
    if not gap <= (1e4 * allowance * float(np.linalg.norm(honest)) + 1e-9 * float(np.linalg.norm(explained))
                   + 1e3 * _EPS * summed):
        return f"the total is {gap:.3g} away from the sum of the updates the kept messages encode"
    return None
