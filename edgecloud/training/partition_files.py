"""A run's partitions as files: `edgecloud train-data export` writes them, `train-worker --data-dir` reads them.

One file per partition, `D/partition-<p>.npz`, holding two arrays: `x` (rows of float features) and
`y` (integer labels). A device gets the files of the partitions it holds (its code assignment), so it
needs neither the whole data set nor the package that ships it. Nothing from a user's file is
trusted: it is read with `allow_pickle=False` and checked in two steps, each failure a
PartitionFileError (one `error:` line, exit 2, from the CLI):

- at start-up (`check_data_dir`), before connecting: every partition file's array headers only
  (names, dtypes, dimensions, equal lengths, the size cap on what loading would allocate), read from
  the zip without loading data;
- on the server's job (`load_partition`), for the partitions this worker holds: the feature count the
  model expects, finite features, labels within the data set's classes, and the size the server's
  split gives that partition (so a folder exported with another seed or node count is refused).
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgecloud.errors import EdgecloudError
from robust_training.data import Dataset

FILE_PATTERN = re.compile(r"partition-(0|[1-9][0-9]*)\.npz")
ARRAYS = ("x", "y")
MAX_PARTITION_BYTES = 2**31  # x and y uncompressed: MNIST's whole training set as float64 is 25 MB


class PartitionFileError(EdgecloudError):
    """A data folder or partition file that a worker cannot train on."""


def partition_path(directory: Path, partition: int) -> Path:
    return directory / f"partition-{partition}.npz"


def write_partitions(directory: Path, partitions: Sequence[Dataset]) -> list[Path]:
    """Write every partition as `partition-<p>.npz` (float64 x, int64 y) into `directory` (created)."""
    paths = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for index, partition in enumerate(partitions):
            path = partition_path(directory, index)
            with path.open("wb") as file:  # a file object: numpy would append .npz to a bare path silently
                np.savez(file, x=np.asarray(partition.features, dtype=np.float64),
                         y=np.asarray(partition.labels, dtype=np.int64))
            paths.append(path)
    except OSError as error:
        raise PartitionFileError(f"cannot write the partitions into {directory}: "
                                 f"{(error.strerror or str(error)).lower()}.") from None
    return paths


def check_data_dir(directory: Path) -> list[Path]:
    """The folder's partition files, each one's headers checked (see the module docstring)."""
    if not directory.exists():
        raise PartitionFileError(f"--data-dir {directory} does not exist.")
    if not directory.is_dir():
        raise PartitionFileError(f"--data-dir {directory} is not a directory.")
    try:
        files = sorted(path for path in directory.iterdir() if FILE_PATTERN.fullmatch(path.name))
    except OSError as error:
        raise PartitionFileError(f"--data-dir {directory}: cannot list it ({error.strerror or error}).") from None
    if not files:
        raise PartitionFileError(f"--data-dir {directory} holds no partition-<p>.npz file (write them with "
                                 "`edgecloud train-data export`).")
    for path in files:
        _check_headers(path)
    return files


def _check_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of x and y from their .npy headers, without reading the arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            expected = {f"{name}.npy" for name in ARRAYS}
            if set(members) != expected:
                found = ", ".join(sorted(members)) or "nothing"
                raise PartitionFileError(f"{path} must hold exactly the arrays x and y, found {found}.")
            headers = {name: _header(archive, f"{name}.npy", path) for name in ARRAYS}
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise PartitionFileError(f"{path} is not a readable .npz file ({error}).") from None
    (x_shape, x_dtype), (y_shape, y_dtype) = headers["x"], headers["y"]
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())  # what loading allocates
    if total > MAX_PARTITION_BYTES:
        raise PartitionFileError(f"{path} holds {total:,} bytes of arrays, more than the {MAX_PARTITION_BYTES:,} "
                                 "a partition may hold.")
    if x_dtype.kind != "f" or len(x_shape) != 2:
        raise PartitionFileError(f"{path}: x must be a 2-D float array (rows of features), got {x_dtype} of "
                                 f"shape {x_shape}.")
    if y_dtype.kind not in "iu" or len(y_shape) != 1:
        raise PartitionFileError(f"{path}: y must be a 1-D integer array (labels), got {y_dtype} of shape {y_shape}.")
    if x_shape[0] != y_shape[0] or x_shape[0] == 0:
        raise PartitionFileError(f"{path}: x has {x_shape[0]} rows and y {y_shape[0]} labels; they must be equal "
                                 "and at least 1.")
    return headers


def _header(archive: zipfile.ZipFile, member: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with archive.open(member) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f"npy format version {version[0]}.{version[1]}")
        except ValueError as error:
            raise PartitionFileError(f"{path}: {member} is not a plain .npy array ({error}).") from None
    if dtype.hasobject or dtype.fields is not None:
        raise PartitionFileError(f"{path}: {member} holds objects or records ({dtype}); x and y are plain numbers.")
    return tuple(shape), dtype


def load_partition(directory: Path, partition: int, layout: Dataset, size: int) -> Dataset:
    """Partition `partition` of the run, read from `directory` and checked against the data set's
    `layout` (features, classes) and the `size` the server's split gives it."""
    path = partition_path(directory, partition)
    if not path.is_file():
        raise PartitionFileError(f"--data-dir {directory} has no {path.name}, which this worker holds in this run.")
    _check_headers(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            features, labels = arrays["x"], arrays["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise PartitionFileError(f"{path} is not a readable .npz file ({error}).") from None
    if features.shape[1] != layout.n_features:
        raise PartitionFileError(f"{path}: x has {features.shape[1]} features per row; the model expects "
                                 f"{layout.n_features}.")
    if len(labels) != size:
        raise PartitionFileError(f"{path} has {len(labels)} rows; the server's split gives partition {partition} "
                                 f"{size} (export the folder with the run's --nodes, --code, --redundancy, split "
                                 "and --seed).")
    if not np.all(np.isfinite(features)):
        raise PartitionFileError(f"{path}: x holds NaN or infinite values.")
    if labels.min() < 0 or labels.max() >= layout.n_classes:
        raise PartitionFileError(f"{path}: labels must lie in 0..{layout.n_classes - 1}, found "
                                 f"{labels.min()}..{labels.max()}.")
    return Dataset(features.astype(np.float64), labels.astype(np.int64), layout.n_classes, layout.image_shape)
