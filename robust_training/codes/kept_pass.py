"""One pass over the messages for the rows a decode keeps: their sum, their residual and their norms.

A decode that has chosen the rows H to keep must, on every one of the d columns, form the sum a_H^T R_H
and check the q - 1 parity combinations C R_H that vanish on codewords (issue 8: an adversary who knows
the decoder's seed can hide a deviation from anything less). At n = 45, d = 1e6 the messages are 360 MB,
so that is memory traffic plus q |H| multiply-adds per column. numpy has no fused form of it: a BLAS
product of a (q, |H|) matrix with a (|H|, d) block packs the block and then runs kernels made for large
inner dimensions (|H| <= 45 here), and the norms are a second pass. Measured on this machine (2 cores,
loaded by other jobs; CPU time of one thread, best of 7): q = 11, |H| = 35 took 57 ms with blocked
OpenBLAS plus 15 ms of norms, 32 ms with this kernel; a plain mean of the 45 rows takes 13 ms.

The kernel (numba, one thread, compiled at the first pass of a process, from an on-disk cache after the
first time) walks column blocks of
BLOCK_COLUMNS, small enough that the block's kept rows stay in L2 while every combination row reads
them; within a block it accumulates ROW_TILE message rows into COMBINATION_TILE output rows at a time,
so each load of a message value feeds 4 multiply-adds and each accumulator load/store 8. Removed rows
are never read (a forged 1e300 row cannot reach the residual, not even through rounding), and the
arithmetic order is fixed, so the result is a function of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from robust_training.codes.cyclic_fit import frobenius, row_norms

#: Message rows and combination rows per tile of the kernel, which is written out for these sizes
#: (measured: 8 x 4 beat 4 x 4, 4 x 8, 8 x 2 and 6 x 4 by 5-20 %).
ROW_TILE = 8
COMBINATION_TILE = 4
#: Columns per block: 45 rows x 512 float64 = 184 kB, within one core's L2 (1 MB here) with the accumulators.
BLOCK_COLUMNS = 512
#: Sums of squares outside [this, inf) are recomputed with rescaled combinations (no precision is lost
#: above it; below it squares of 1e-145 underflow).
_SMALLEST_SAFE_SQUARE = 1e-290


@dataclass(frozen=True)
class KeptPass:
    """What one pass over the kept rows gives: the last combination row (the sum), the Frobenius norm of
    the other rows (the residual), the kept rows' 2-norms (in `kept` order), and the residual's sum of
    squares per block of BLOCK_COLUMNS columns (where a failed check found its deviations)."""

    total: np.ndarray
    residual: float
    norms: np.ndarray
    block_squares: np.ndarray

    def worst_columns(self, n_blocks: int) -> np.ndarray:
        """The columns of the `n_blocks` blocks with the largest residual (ties: the first), sorted."""
        order = np.argsort(-np.nan_to_num(self.block_squares, nan=np.inf), kind="stable")[:n_blocks]
        starts = np.sort(order) * BLOCK_COLUMNS
        columns = (starts[:, None] + np.arange(BLOCK_COLUMNS)).reshape(-1)
        return columns[columns < self.total.size]


def kept_rows_pass(messages: np.ndarray, kept: np.ndarray, combination: np.ndarray) -> KeptPass:
    """combination (q, |kept|) applied to messages[kept] (|kept|, d): row q - 1 is returned whole, rows
    0..q-2 only as their Frobenius norm. Non-finite kept rows give a non-finite residual."""
    rows = np.ascontiguousarray(messages, dtype=np.float64)
    kept = np.asarray(kept, dtype=np.int64)
    total = np.zeros(rows.shape[1])
    block_squares = np.zeros(-(-rows.shape[1] // BLOCK_COLUMNS))
    if kept.size == 0:
        return KeptPass(total, 0.0, np.zeros(0), block_squares)
    tiled, padded_rows = _tiled(combination, kept)
    norm_squares = _compiled_pass()(rows, padded_rows, kept.size, tiled, total, block_squares)
    squares = float(np.sum(block_squares))
    norms = row_norms(rows, norm_squares, kept)
    if np.isfinite(squares) and (squares == 0.0 or squares >= _SMALLEST_SAFE_SQUARE):
        return KeptPass(total, float(np.sqrt(squares)), norms, block_squares)
    residual = _rescaled_residual(rows, padded_rows, kept.size, tiled, norms)
    return KeptPass(total, residual, norms, block_squares)


def _rescaled_residual(rows: np.ndarray, padded_rows: np.ndarray, n_kept: int, tiled: np.ndarray,
                       norms: np.ndarray) -> float:
    """The residual again with the checks scaled by a power of two near 1 / (largest kept norm), so that
    neither its squares overflow (rows near 1e200) nor underflow (rows near 1e-150); exact rescaling."""
    largest = float(np.max(norms))
    if largest == 0.0 or not np.isfinite(largest):
        return largest
    scale = float(2.0 ** -np.frexp(largest)[1])
    checks = tiled.copy()
    checks[1:] *= scale
    block_squares = np.zeros(-(-rows.shape[1] // BLOCK_COLUMNS))
    _compiled_pass()(rows, padded_rows, n_kept, checks, np.zeros(rows.shape[1]), block_squares)
    squares = float(np.sum(block_squares))
    if np.isfinite(squares) and squares > 0.0:
        return float(np.sqrt(squares)) / scale
    return frobenius(np.array([squares])) / scale


def _tiled(combination: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The combination with the sum row first and zero rows/columns up to whole tiles, and the kept row
    ids padded by repeating the first (a zero coefficient reads it again, from cache)."""
    n_combinations, n_kept = combination.shape
    height = -(-n_combinations // COMBINATION_TILE) * COMBINATION_TILE
    width = -(-n_kept // ROW_TILE) * ROW_TILE
    tiled = np.zeros((height, width))
    tiled[0, :n_kept] = combination[-1]
    tiled[1:n_combinations, :n_kept] = combination[:-1]
    padded_rows = np.concatenate([kept, np.full(width - n_kept, kept[0], dtype=np.int64)])
    return tiled, padded_rows


@cache
def _compiled_pass():
    """`_pass` compiled by numba (from its on-disk cache after the first time). Imported here, not at
    module level: importing numba takes ~0.4 s, and the CLI imports the codes at start-up."""
    import numba

    return numba.njit(fastmath={"contract"}, error_model="numpy", boundscheck=False, cache=True, nogil=True)(_pass)


def _pass(rows, padded_rows, n_kept, tiled, total, block_squares):  # pragma: no cover - numba; tested via callers
    """Row 0 of tiled @ rows[padded_rows] into `total`, the sums of squares of rows 1.. per column block
    into `block_squares`; returns the kept rows' sums of squares."""
    n_padded = padded_rows.size
    height = tiled.shape[0]
    dimension = rows.shape[1]
    block = BLOCK_COLUMNS
    accumulators = np.zeros((height, block))
    row_lanes = np.zeros((n_kept, block))
    residual_lanes = np.zeros(block)
    for start in range(0, dimension, block):
        width = min(block, dimension - start)
        for j in range(width):
            residual_lanes[j] = 0.0
        for group in range(0, height, 4):
            a0 = accumulators[group]
            a1 = accumulators[group + 1]
            a2 = accumulators[group + 2]
            a3 = accumulators[group + 3]
            for j in range(width):
                a0[j] = 0.0
                a1[j] = 0.0
                a2[j] = 0.0
                a3[j] = 0.0
            for first in range(0, n_padded, 8):
                x0 = rows[padded_rows[first], start:start + width]
                x1 = rows[padded_rows[first + 1], start:start + width]
                x2 = rows[padded_rows[first + 2], start:start + width]
                x3 = rows[padded_rows[first + 3], start:start + width]
                x4 = rows[padded_rows[first + 4], start:start + width]
                x5 = rows[padded_rows[first + 5], start:start + width]
                x6 = rows[padded_rows[first + 6], start:start + width]
                x7 = rows[padded_rows[first + 7], start:start + width]
                c00 = tiled[group, first + 0]
                c01 = tiled[group, first + 1]
                c02 = tiled[group, first + 2]
                c03 = tiled[group, first + 3]
                c04 = tiled[group, first + 4]
                c05 = tiled[group, first + 5]
                c06 = tiled[group, first + 6]
                c07 = tiled[group, first + 7]
                c10 = tiled[group + 1, first + 0]
                c11 = tiled[group + 1, first + 1]
                c12 = tiled[group + 1, first + 2]
                c13 = tiled[group + 1, first + 3]
                c14 = tiled[group + 1, first + 4]
                c15 = tiled[group + 1, first + 5]
                c16 = tiled[group + 1, first + 6]
                c17 = tiled[group + 1, first + 7]
                c20 = tiled[group + 2, first + 0]
                c21 = tiled[group + 2, first + 1]
                c22 = tiled[group + 2, first + 2]
                c23 = tiled[group + 2, first + 3]
                c24 = tiled[group + 2, first + 4]
                c25 = tiled[group + 2, first + 5]
                c26 = tiled[group + 2, first + 6]
                c27 = tiled[group + 2, first + 7]
                c30 = tiled[group + 3, first + 0]
                c31 = tiled[group + 3, first + 1]
                c32 = tiled[group + 3, first + 2]
                c33 = tiled[group + 3, first + 3]
                c34 = tiled[group + 3, first + 4]
                c35 = tiled[group + 3, first + 5]
                c36 = tiled[group + 3, first + 6]
                c37 = tiled[group + 3, first + 7]
                for j in range(width):
                    v0 = x0[j]
                    v1 = x1[j]
                    v2 = x2[j]
                    v3 = x3[j]
                    v4 = x4[j]
                    v5 = x5[j]
                    v6 = x6[j]
                    v7 = x7[j]
                    a0[j] += (c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3
                              + c04 * v4 + c05 * v5 + c06 * v6 + c07 * v7)
                    a1[j] += (c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3
                              + c14 * v4 + c15 * v5 + c16 * v6 + c17 * v7)
                    a2[j] += (c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3
                              + c24 * v4 + c25 * v5 + c26 * v6 + c27 * v7)
                    a3[j] += (c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3
                              + c34 * v4 + c35 * v5 + c36 * v6 + c37 * v7)
        for index in range(n_kept):
            x = rows[padded_rows[index], start:start + width]
            lanes = row_lanes[index]
            for j in range(width):
                lanes[j] += x[j] * x[j]
        for combination in range(1, height):
            values = accumulators[combination]
            for j in range(width):
                residual_lanes[j] += values[j] * values[j]
        block_squares[start // block] = residual_lanes[:width].sum()
        values = accumulators[0]
        for j in range(width):
            total[start + j] = values[j]
    return row_lanes.sum(axis=1)
