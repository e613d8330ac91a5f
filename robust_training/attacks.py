"""Byzantine attacks on the messages a parameter server receives, and who the adversaries are.

An attack rewrites the adversarial rows of an (n, d) float64 message array and leaves the others alone.
It acts on whatever the workers send: raw updates for plain aggregation, coded messages for the cyclic
code (as in Draco), replicas for the repetition code. Attacks that need honest statistics (ALIE, IPM,
mimic) compute them from the non-adversarial rows; adversaries are omniscient about those, as in the
papers. Label flipping is the exception: it corrupts the adversaries' training data, not their messages
(`DataAttack`), so an adversarial worker sends an honest computation on poisoned labels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from robust_training.data import Dataset
from robust_training.errors import TrainingError


class Attack(ABC):
    """One verb: replace the adversaries' messages."""

    def apply(self, messages: np.ndarray, adversaries: list[int], rng: np.random.Generator) -> np.ndarray:
        """A copy of `messages` with the rows in `adversaries` replaced by this attack's messages."""
        attacked = np.array(messages, dtype=np.float64, copy=True)
        if attacked.ndim != 2:
            raise TrainingError(f"an attack needs an (n, d) message array, got shape {attacked.shape}.")
        rows = np.asarray(sorted(set(adversaries)), dtype=int)
        if rows.size and (rows.min() < 0 or rows.max() >= attacked.shape[0]):
            raise TrainingError(f"adversary ids {rows.tolist()} fall outside 0..{attacked.shape[0] - 1}.")
        if rows.size:
            attacked[rows] = self._forge(attacked, rows, rng)
        return attacked

    @abstractmethod
    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The (len(adversaries), d) messages the adversaries send instead of their true ones."""


def _honest_rows(messages: np.ndarray, adversaries: np.ndarray) -> np.ndarray:
    """The rows not in `adversaries`; all rows when every worker is adversarial (nothing honest to read)."""
    honest_mask = np.ones(messages.shape[0], dtype=bool)
    honest_mask[adversaries] = False
    return messages[honest_mask] if honest_mask.any() else messages


@dataclass
class ReverseGradient(Attack):
    """Send -scale times the true message (Draco's reference attack, scale 100)."""

    scale: float = 100.0

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return -self.scale * messages[adversaries]


@dataclass
class Constant(Attack):
    """Send the same constant in every coordinate (Draco's reference attack, -100)."""

    value: float = -100.0

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.full((len(adversaries), messages.shape[1]), self.value)


@dataclass
class GaussianNoise(Attack):
    """Send the true message plus i.i.d. N(0, std^2) noise in every coordinate."""

    std: float = 1.0

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return messages[adversaries] + rng.normal(0.0, self.std, size=(len(adversaries), messages.shape[1]))


@dataclass
class SignFlip(Attack):
    """Send the negated true message."""

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return -messages[adversaries]


@dataclass
class ALIE(Attack):
    """"A little is enough" (Baruch et al., NeurIPS 2019): every adversary sends mean + z * std.

    Mean and std are coordinate-wise over the honest rows. z=None uses the paper's z_max: with n workers
    and f adversaries, s = floor(n / 2 + 1) - f honest workers must be swayed, and
    z_max = Phi^{-1}((n - s) / n), the largest shift that stays within the honest spread for enough
    workers that distance-based defences do not reject it. When that is not positive (f too small for
    the formula) z = 1.0 is used.
    """

    z: float | None = None

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        reference = _honest_rows(messages, adversaries)
        shift = self.z if self.z is not None else alie_z_max(messages.shape[0], len(adversaries))
        forged = reference.mean(axis=0) + shift * reference.std(axis=0)
        return np.broadcast_to(forged, (len(adversaries), messages.shape[1]))


def alie_z_max(n_workers: int, n_adversaries: int) -> float:
    """The ALIE paper's z_max for n workers and f adversaries (1.0 where the formula gives z <= 0)."""
    n_swayed = math.floor(n_workers / 2 + 1) - n_adversaries
    quantile = (n_workers - n_swayed) / n_workers
    if not 0.5 < quantile < 1.0:
        return 1.0
    return NormalDist().inv_cdf(quantile)


@dataclass
class InnerProductManipulation(Attack):
    """IPM (Xie, Koyejo & Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner product
    manipulation", UAI 2019): every adversary sends -epsilon times the honest mean.

    Its defining property: with f adversaries among n, the plain mean becomes
    ((n - f) - epsilon f) / n times the honest mean, so its inner product with the true direction turns
    negative once epsilon > (n - f) / f. Small epsilon (the paper's 0.1) stays close enough to the honest
    rows to pass distance-based filters while still shrinking the step; 2.0 is ByzFL's default.
    """

    epsilon: float = 2.0

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        forged = -self.epsilon * _honest_rows(messages, adversaries).mean(axis=0)
        return np.broadcast_to(forged, (len(adversaries), messages.shape[1]))


@dataclass
class Mimic(Attack):
    """Mimic (Karimireddy, He & Jaggi, "Byzantine-robust learning on heterogeneous datasets via
    bucketing", ICLR 2022): every adversary copies one honest worker's message.

    Nothing it sends is an outlier, so no filter can reject it; under heterogeneous data it
    over-represents that worker's distribution. `target` indexes the honest workers in id order (0: the
    lowest honest id), as ByzFL's `epsilon` does.
    """

    target: int = 0

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        honest = _honest_rows(messages, adversaries)
        if not 0 <= self.target < honest.shape[0]:
            raise TrainingError(f"mimic's target must index one of the {honest.shape[0]} honest workers, "
                                f"got {self.target}.")
        return np.broadcast_to(honest[self.target], (len(adversaries), messages.shape[1]))


class Infinity(Attack):
    """Send +inf in every coordinate (ByzFL's `Inf` attack; Gonzalez et al., "ByzFL: research framework
    for robust federated learning", 2025): a row no finite arithmetic survives, so a defence must
    recognise it before it computes anything with it."""

    def _forge(self, messages: np.ndarray, adversaries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.full((len(adversaries), messages.shape[1]), np.inf)


class DataAttack(ABC):
    """Corrupts an adversary's training data; the adversary then computes and sends honestly."""

    @abstractmethod
    def poison(self, data: Dataset) -> Dataset:
        """The data an adversarial worker trains on instead of `data`."""


class LabelFlipping(DataAttack):
    """Label flipping (Tolpegin, Truex, Gursoy & Liu, "Data poisoning attacks against federated learning
    systems", ESORICS 2020): an adversary trains on label C - 1 - y instead of y (C classes), the
    mapping ByzFL uses. The message is an honest computation on poisoned data, so it has an honest
    update's scale and structure."""

    def poison(self, data: Dataset) -> Dataset:
        return Dataset(data.features, data.n_classes - 1 - data.labels, data.n_classes, data.image_shape)


#: Attacks that replace each adversary's message by one that differs from its own honest message, so a
#: code must flag every adversary.
ATTACKS: dict[str, Callable[..., Attack]] = {
    "reverse": ReverseGradient,
    "constant": Constant,
    "gaussian": GaussianNoise,
    "alie": ALIE,
    "signflip": SignFlip,
    "ipm": InnerProductManipulation,
    "infinity": Infinity,
}
#: Message attacks that send another worker's honest message: an adversary that copies a replica of its
#: own partition sends exactly its honest message, which no decoder should (or can) flag.
COPYING_ATTACKS: dict[str, Callable[..., Attack]] = {
    "mimic": Mimic,
}
#: Attacks on the adversaries' training data.
DATA_ATTACKS: dict[str, Callable[..., DataAttack]] = {
    "labelflip": LabelFlipping,
}
#: Every name `make_attack` accepts, in the order the CLI lists them.
ATTACK_NAMES: tuple[str, ...] = (*ATTACKS, *COPYING_ATTACKS, *DATA_ATTACKS)


def make_attack(name: str, **parameters: float) -> Attack | DataAttack:
    """The attack for a CLI name, with its parameters (e.g. scale=10 for "reverse")."""
    if name in ATTACKS:
        return ATTACKS[name](**parameters)
    if name in COPYING_ATTACKS:
        return COPYING_ATTACKS[name](**parameters)
    if name in DATA_ATTACKS:
        return DATA_ATTACKS[name](**parameters)
    raise TrainingError(f"unknown attack {name!r}; choose one of {', '.join(ATTACK_NAMES)}.")


def choose_adversaries(n: int, s: int, rng: np.random.Generator) -> list[int]:
    """s distinct worker ids out of n, sorted, drawn uniformly."""
    if not 0 <= s <= n:
        raise TrainingError(f"cannot choose {s} adversaries among {n} workers.")
    return sorted(int(worker) for worker in rng.choice(n, size=s, replace=False))


@dataclass(frozen=True)
class AdversarySchedule:
    """Which workers are adversarial in each round: the same set every round, or re-drawn per round.

    Deterministic by seed: round t's set depends only on (seed, t), so a run can be replayed and two
    runs that differ only in their defence face the same adversaries.
    """

    n: int
    s: int
    redraw: bool
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.s <= self.n:
            raise TrainingError(f"cannot choose {self.s} adversaries among {self.n} workers.")

    def for_round(self, t: int) -> list[int]:
        key = [self.seed, t] if self.redraw else [self.seed]
        return choose_adversaries(self.n, self.s, np.random.default_rng(key))
