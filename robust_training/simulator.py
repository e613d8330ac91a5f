"""Byzantine-robust DGD with P workers in one process: Draco's codes or a robust aggregator at the PS.

One round, as a cluster would run it:
1. The training data is split once into the code's partitions (IID or not); partition p is held by
   every worker the code assigns it to. Each partition's update over one sync period (tau local steps
   from the global model, mini-batches seeded by round and partition) is the coded unit. The
   simulator computes each partition once, because its replicas would compute the same bits.
2. Each update is scaled by P |D_p| / |D|, so the plain mean of the messages is DGD's size-weighted
   synchronisation and the codes' exact sum divided by P is the same step.
3. Worker w sends `code.encode(w, its partitions' updates)` (uncoded: its one partition's update);
   the adversaries' messages are then corrupted by the attack (for the cyclic code: the coded message).
   A data attack (label flipping) instead has each adversary compute its partitions on poisoned data
   and send their honest encoding.
4. The PS decodes the exact sum (`code.decode`) or aggregates the messages (`aggregator(messages, f=s)`)
   and steps.

The two halves are reusable so that a runner with real processes trains the same model: a worker's
message from only its own partitions (`worker_message`) and the PS's attack-decode-step
(`Simulator.server_step`); `Simulator.run(play_round=...)` plays another runner's rounds through this
loop (robust_training.runners.torch_distributed).

Time model (docs/architecture.md §5): a round lasts the slowest worker's measured compute (its partitions' local
updates plus its encoding) + the PS's measured decode/aggregate + the modelled transfer, never the sum
of all workers' compute -- unless the workers share `cores` cores of one host (`--cores`, as the local
torch and MQTT runners do), where compute is at least the sum over the cores (`shared_compute_s`).
Transfer (robust_training.time_model): each worker has its own link of `bandwidth_bps` to the PS and
the links run in parallel, so a round moves one model down and one message up per link:
(model_bytes + message_bytes) * 8 / bandwidth_bps; plus, with `relay_bps`, the P exchanges passing one
after another through a broker, P (model_bytes + message_bytes) * 8 / relay_bps, and 2 P `message_s`
for the PS's messages' fixed cost (both calibrated by bench/transfer_calibration.py). Compute of replicated partitions is charged to every worker that holds them (measured
once, charged r times), which is Draco's price for exactness.
All partitions are computed in one pass (vectorised with torch.func.vmap for the torch networks);
the pass is timed as a whole and each partition is charged its share by batch size.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from robust_training.adaptive_tau import AdaptiveTau, TauEstimates
from robust_training.aggregators import Aggregator, make_aggregator
from robust_training.aggregators.base import finite_rows
from robust_training.attacks import Attack, DataAttack, choose_adversaries, make_attack
from robust_training.checkpoint import Checkpointer, Snapshot, find_generators, generator_states, restore_generators
from robust_training.codes import Code, make_code
from robust_training.data import Dataset, split_dataset
from robust_training.dgd import PartitionUpdates, batch_rng, check_step_settings, local_updates, size_weights
from robust_training.errors import TrainingError
from robust_training.losses import Objective
from robust_training.time_model import TransferModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides a run; with the same config and data a run is bit-for-bit repeatable."""

    n_workers: int
    rounds: int
    lr: float
    tau: int = 1
    batch_size: int | None = None      # per partition and local step; None = full local gradient
    code: str = "none"
    redundancy: int = 1
    aggregator: str = "mean"
    n_adversaries: int = 0
    attack: str = "reverse"
    redraw_adversaries: bool = True    # Draco re-draws the adversaries every round
    split: str = "iid"
    unequal_sizes: bool = False
    dirichlet_alpha: float = 0.5
    adaptive_tau: bool = False
    tau_max: int = 20
    bandwidth_bps: float = 1e9
    relay_bps: float | None = None     # a broker every message crosses (robust_training.time_model); None = none
    message_s: float = 0.0             # fixed cost of one message at the PS
    cores: int | None = None           # cores the P workers share (one host); None = a core each (P devices)
    seed: int = 0
    eval_every: int = 1
    target_accuracy: float | None = None  # stop once the test accuracy reaches it

    def validate(self) -> None:
        check_step_settings(self.lr, self.tau, self.batch_size)
        if self.n_workers < 1:
            raise TrainingError(f"training needs at least one worker, got {self.n_workers}.")
        if self.rounds < 1:
            raise TrainingError(f"training needs at least one round, got {self.rounds}.")
        if not 0 <= self.n_adversaries < self.n_workers:
            raise TrainingError(f"the number of adversaries must lie in [0, {self.n_workers - 1}] for "
                                f"{self.n_workers} workers, got {self.n_adversaries}.")
        transfer_problem = self.transfer_model().problem()
        if transfer_problem is not None:
            raise TrainingError(transfer_problem)
        if self.cores is not None and self.cores < 1:
            raise TrainingError(f"the workers need at least one core, got {self.cores}.")
        if self.eval_every < 1:
            raise TrainingError(f"evaluation must happen every >= 1 rounds, got {self.eval_every}.")
        if self.code == "none" and self.redundancy != 1:
            raise TrainingError("a redundancy above 1 needs a code (--code repetition or cyclic).")
        if self.unequal_sizes and self.split != "iid":
            raise TrainingError(f"unequal local data sizes apply to the IID split only; a {self.split} split "
                                "draws its own sizes (drop --unequal or --non-iid).")
        if self.code != "none" and self.aggregator != "mean":
            raise TrainingError("a code decodes the exact sum, so --aggregator applies only with --code none.")

    def transfer_model(self) -> TransferModel:
        return TransferModel(self.bandwidth_bps, self.relay_bps, self.message_s)

    def build(self) -> tuple[Code | None, Aggregator | None, Attack | DataAttack | None]:
        """The code (or the aggregator) and the attack this config names; bad names and sizes raise."""
        code = make_code(self.code, self.n_workers, self.redundancy, seed=self.seed)
        if code is not None and self.n_adversaries > code.max_adversaries:
            raise TrainingError(f"a {self.code} code with redundancy {self.redundancy} cannot decode "
                                f"{self.n_adversaries} adversaries: it needs redundancy >= "
                                f"{2 * self.n_adversaries + 1} (r >= 2s + 1).")
        aggregator = make_aggregator(self.aggregator) if code is None else None
        if aggregator is not None:  # Krum's n > 2f + 2, the trimmed mean's n > 2f, ...: before any data loads
            aggregator.check_feasible(self.n_workers, self.n_adversaries)
        attack = make_attack(self.attack) if self.n_adversaries else None
        return code, aggregator, attack


@dataclass
class RoundRecord:
    """One round as the PS saw it; times are seconds, `elapsed_s` the modelled wall time so far."""

    round: int
    tau: int
    batch_loss: float          # size-weighted loss of the partitions' first batches at the round's start model
    test_accuracy: float | None
    compute_s: float
    aggregate_s: float
    transfer_s: float
    elapsed_s: float
    adversaries: list[int]
    flagged: list[int]
    transfer_bytes: int = 0    # model down and message up over every link (modelled, or counted by a runner)

    @property
    def round_s(self) -> float:
        return self.compute_s + self.aggregate_s + self.transfer_s


@dataclass
class _Loop:
    """What `Simulator.run` carries from one round to the next (and a checkpoint keeps)."""

    params: np.ndarray
    tau: int
    records: list[RoundRecord] = field(default_factory=list)
    budget_s: float | None = None      # adaptive tau's time budget, fixed after round 1
    adversaries: list[int] = field(default_factory=list)


class HonestUpdatesDiverged(Exception):
    """The honest workers' own updates became non-finite (the learning rate is too large)."""


@dataclass
class SimulationResult:
    """The trained model and the run's history."""

    params: np.ndarray
    records: list[RoundRecord]
    partition_sizes: list[int]
    train_loss: float          # of the final model on the whole training set
    tau_estimates: list[TauEstimates] = field(default_factory=list)
    diverged: bool = False     # stopped because the honest updates or the model became non-finite

    @property
    def flagged(self) -> list[int]:
        """Every worker the code found adversarial in some round."""
        return sorted({worker for record in self.records for worker in record.flagged})

    @property
    def seconds(self) -> float:
        return self.records[-1].elapsed_s if self.records else 0.0

    def last_evaluated(self) -> RoundRecord:
        return next(r for r in reversed(self.records) if r.test_accuracy is not None)

    def history(self) -> list[dict]:
        return [asdict(record) for record in self.records]


RoundPlayer = Callable[[np.ndarray, int, int, list[int], float, bool], tuple[np.ndarray, PartitionUpdates | None,
                                                                          RoundRecord]]


def shared_compute_s(worker_s: Sequence[float], cores: int | None) -> float:
    """A round's compute phase: the slowest worker when each has its own core, and when P workers share
    `cores` no less than their total work spread over those cores (the optimal preemptive makespan,
    max(longest, total / cores); the OS's fair sharing of equal jobs attains it). On one host that is
    what the torch and MQTT runners' slowest worker measures: 16 workers on 2 cores wait 8x their own work."""
    longest = float(max(worker_s))
    return longest if cores is None else max(longest, float(sum(worker_s)) / cores)


def held_partitions(code: Code | None, worker: int) -> list[int]:
    """The partitions a worker computes: the code's assignment, or uncoded its own one."""
    return [worker] if code is None else code.partitions_of(worker)


def worker_message(objective: Objective, config: SimulationConfig, code: Code | None, message_scale: np.ndarray,
                   worker: int, partitions: Mapping[int, Dataset], params: np.ndarray, round_index: int,
                   tau: int) -> tuple[np.ndarray, np.ndarray]:
    """What one worker sends in one round, from only the partitions it holds: their updates (batches
    seeded by round and partition, so every replica draws the same), scaled by P |D_p| / |D| and encoded.
    Returns the message and the partitions' start losses, in `held_partitions` order."""
    held = held_partitions(code, worker)
    rngs = [batch_rng(config.seed, round_index, p) for p in held]
    updates = local_updates(objective, params, [partitions[p] for p in held], config.lr, tau, config.batch_size, rngs)
    scaled = updates.deltas * message_scale[held][:, None]
    return (scaled[0] if code is None else code.encode(worker, scaled)), updates.start_losses


def partition_scale(partition_sizes: Sequence[int]) -> np.ndarray:
    """P |D_p| / |D| per partition: what each update is scaled by (step 2 of the module docstring); a
    worker holding only its own partitions computes it from the sizes the server sends."""
    return len(partition_sizes) * size_weights(partition_sizes)


def split_partitions(train: Dataset, config: SimulationConfig, code: Code | None) -> list[Dataset]:
    """The run's partitions of `train`: one per worker uncoded, the code's count otherwise; the one
    definition of the split, shared by the simulator and `edgecloud train-data export`."""
    n_partitions = config.n_workers if code is None else code.n_partitions
    return split_dataset(train, n_partitions, config.split, seed=config.seed, unequal=config.unequal_sizes,
                         alpha=config.dirichlet_alpha)


class Simulator:
    """Runs `SimulationConfig` on one objective and one train/test split."""

    def __init__(self, objective: Objective, train: Dataset, test: Dataset, config: SimulationConfig) -> None:
        config.validate()
        self.code, self.aggregator, self.attack = config.build()
        self.objective = objective
        self.train = train
        self.test = test
        self.config = config
        self.partitions = split_partitions(train, config, self.code)
        self.partition_sizes = [len(p) for p in self.partitions]
        self.size_weights = size_weights(self.partition_sizes)
        self.message_scale = partition_scale(self.partition_sizes)
        self.adversary_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
        init_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2]))
        self.params0 = objective.initial_params(train.features, init_rng)

    def run(self, on_round: Callable[[RoundRecord], None] | None = None,
            play_round: RoundPlayer | None = None, checkpoints: Checkpointer | None = None,
            record_type: type[RoundRecord] = RoundRecord) -> SimulationResult:
        """Train for `config.rounds` rounds (fewer if the target accuracy is reached or the model diverges).

        `play_round` replaces the in-process round (`_play_round`'s signature) so that a runner with real
        worker processes (robust_training.runners) shares this loop: adversary draws, stopping, records,
        checkpoints. With `checkpoints` the loop's whole state is written every K rounds and, when
        resuming, read back first: the rounds after it are the ones an uninterrupted run plays.
        `record_type` is what `play_round` records (a runner's RoundRecord subclass), read back as such.
        """
        config = self.config
        play_round = play_round or self._play_round
        controller = AdaptiveTau(config.tau, max(config.tau_max, config.tau)) if config.adaptive_tau else None
        identity = self.identity() if checkpoints is not None else {}
        snapshot = checkpoints.load(identity) if checkpoints is not None else None
        loop = (self._restore(snapshot, controller, record_type) if snapshot is not None
                else _Loop(self.params0.copy(), config.tau))
        diverged = False
        while not self._finished(loop.records):
            round_index = len(loop.records)
            if round_index == 0 or config.redraw_adversaries:
                loop.adversaries = self._draw_adversaries()
            elapsed_s = loop.records[-1].elapsed_s if loop.records else 0.0
            try:
                new_params, updates, record = play_round(loop.params, round_index, loop.tau, loop.adversaries,
                                                         elapsed_s, controller is not None)
            except HonestUpdatesDiverged:
                logger.warning("the honest updates diverged to non-finite values in round %d; stopping",
                               round_index + 1)
                diverged = True
                break
            loop.records.append(record)
            if on_round is not None:
                on_round(record)
            if controller is not None:
                if loop.budget_s is None:  # Wang et al. plan against a budget: this run's rounds at round 1's pace
                    loop.budget_s = config.rounds * record.round_s
                loop.tau = controller.observe(loop.params, updates, self.partition_sizes, config.lr, loop.budget_s,
                                              record.compute_s / record.tau, record.aggregate_s + record.transfer_s)
            loop.params = new_params
            if not np.all(np.isfinite(loop.params)):
                logger.warning("the model diverged to non-finite values in round %d; stopping", record.round)
                diverged = True
                break
            if checkpoints is not None and checkpoints.due(record.round):
                checkpoints.save(self._snapshot(loop, controller), identity)
        train_loss = self.objective.loss(loop.params, self.train.features, self.train.labels)
        return SimulationResult(loop.params, loop.records, self.partition_sizes, train_loss,
                                controller.log if controller is not None else [], diverged)

    def _finished(self, records: list[RoundRecord]) -> bool:
        """All rounds played, or the last one reached the target accuracy (also right after a resume)."""
        target = self.config.target_accuracy
        return len(records) >= self.config.rounds or bool(
            records and target is not None and records[-1].test_accuracy is not None
            and records[-1].test_accuracy >= target)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed by it: the config, the data, the
        objective (its type, scalar settings and torch architecture) and the initial model."""
        data = hashlib.sha256()
        for array in (self.train.features, self.train.labels, self.test.features, self.test.labels):
            data.update(np.ascontiguousarray(array))
        model = hashlib.sha256(np.ascontiguousarray(self.params0)).hexdigest()
        objective = self.objective
        settings = {name: value for name, value in vars(objective).items()
                    if isinstance(value, (bool, int, float, str))}
        return {"config": asdict(self.config), "data_sha256": data.hexdigest(), "initial_model_sha256": model,
                "objective": {"type": f"{type(objective).__module__}.{type(objective).__qualname__}", **settings,
                              "architecture": str(getattr(objective, "module", ""))}}

    def _generators(self) -> dict[str, np.random.Generator]:
        """Every generator the loop draws from: the adversaries' and the attack's, and any a code or an
        aggregator keeps (bucketing's shuffle). Mini-batches are seeded per round and hold no state."""
        return {"adversaries": self.adversary_rng, **find_generators(self.code, "code"),
                **find_generators(self.aggregator, "aggregator"), **find_generators(self.attack, "attack")}

    def _snapshot(self, loop: _Loop, controller: AdaptiveTau | None) -> Snapshot:
        arrays = {"params": loop.params}
        tau_state = None
        if controller is not None:
            tau_arrays, tau_state = controller.state()
            arrays.update({f"tau_{name}": value for name, value in tau_arrays.items()})
        return Snapshot(len(loop.records), arrays, {
            "records": [asdict(record) for record in loop.records], "tau": loop.tau, "budget_s": loop.budget_s,
            "adversaries": loop.adversaries, "generators": generator_states(self._generators()),
            "adaptive_tau": tau_state})

    def _restore(self, snapshot: Snapshot, controller: AdaptiveTau | None,
                 record_type: type[RoundRecord] = RoundRecord) -> _Loop:
        """The loop state `_snapshot` wrote, checked against this run's shapes before use."""
        state, n_workers = snapshot.state, self.config.n_workers
        try:
            records = [record_type(**record) for record in state["records"]]
            loop = _Loop(snapshot.array("params", self.params0.shape).copy(), int(state["tau"]), records,
                         None if state["budget_s"] is None else float(state["budget_s"]),
                         [int(worker) for worker in state["adversaries"]])
            generators, tau_state = state["generators"], state["adaptive_tau"]
        except (KeyError, TypeError, ValueError) as error:
            raise TrainingError(f"the checkpoint's loop state is malformed ({error}).") from None
        if len(records) != snapshot.round or not all(0 <= worker < n_workers for worker in loop.adversaries):
            raise TrainingError(f"the checkpoint's loop state is inconsistent: {len(records)} records for round "
                                f"{snapshot.round}, adversaries {loop.adversaries} of {n_workers} workers.")
        restore_generators(self._generators(), generators)
        if controller is not None:
            n_partitions, d = len(self.partitions), self.params0.size
            shapes = {"models": (n_partitions, d), "grads": (n_partitions, d), "losses": (n_partitions,)}
            held = {name: snapshot.array(f"tau_{name}", shape) for name, shape in shapes.items()
                    if f"tau_{name}" in snapshot.arrays}
            controller.restore(held, tau_state)
        return loop

    def _play_round(self, params: np.ndarray, round_index: int, tau: int, adversaries: list[int],
                    elapsed_s: float, probe: bool) -> tuple[np.ndarray, PartitionUpdates, RoundRecord]:
        """One round: compute, encode, attack, decode or aggregate, step; returns the new global model."""
        config = self.config
        updates, partition_s = self._compute_partitions(params, round_index, tau, probe)
        if not finite_rows(updates.deltas).all():
            raise HonestUpdatesDiverged()  # no defence can make a step of that: the run has diverged
        # adaptive tau reads the unscaled deltas after the round; otherwise scale in place (no 360 MB copy)
        scaled = updates.deltas.copy() if probe else updates.deltas
        scaled *= self.message_scale[:, None]
        messages, worker_s = self._encode(scaled, partition_s)
        if isinstance(self.attack, DataAttack):
            self._send_poisoned(self.attack, messages, params, round_index, tau, adversaries)
        message_bytes = messages.shape[1] * messages.itemsize
        link_bytes = message_bytes + params.nbytes
        new_params, record = self.server_step(
            params, messages, adversaries,
            RoundRecord(round_index + 1, tau, float(self.size_weights @ updates.start_losses), None,
                        shared_compute_s(worker_s, config.cores), 0.0,
                        config.transfer_model().round_s(config.n_workers, params.nbytes, message_bytes), elapsed_s,
                        sorted(adversaries), [], link_bytes * config.n_workers))
        return new_params, updates, record

    def server_step(self, params: np.ndarray, messages: np.ndarray, adversaries: list[int],
                    record: RoundRecord, erased: Sequence[int] = ()) -> tuple[np.ndarray, RoundRecord]:
        """The PS's half of a round, shared by every runner: a model attack corrupts the adversaries'
        messages on arrival (it sees all of them, as an omniscient adversary would), then decode or
        aggregate, step, and evaluate. `record` arrives with the round's compute and transfer filled in
        and `elapsed_s` at the round's start; this adds the aggregate time, the flagged workers and
        the test accuracy. `erased` workers did not answer (a runner's deadline): their rows are never
        read, the attack forges among the messages that arrived, a code decodes around the erasures
        and an aggregator reduces the arrived rows. Whether the round is decodable at all is the
        caller's decision (`Code.correctable`, `Aggregator.feasibility_problem`)."""
        erased_ids = np.unique(np.asarray(erased, dtype=int))
        if self.attack is not None and not isinstance(self.attack, DataAttack):
            if not erased_ids.size:
                messages = self.attack.apply(messages, adversaries, self.adversary_rng)
            else:
                arrived = np.setdiff1d(np.arange(messages.shape[0]), erased_ids)
                messages = messages.copy()
                messages[arrived] = self.attack.apply(messages[arrived], np.flatnonzero(np.isin(arrived, adversaries)),
                                                      self.adversary_rng)
        started = time.perf_counter()
        step, flagged = self._combine(messages, erased_ids)
        record.aggregate_s = time.perf_counter() - started
        record.flagged = sorted(flagged)
        record.elapsed_s += record.round_s
        new_params = params + step
        if record.round % self.config.eval_every == 0 or record.round == self.config.rounds:
            record.test_accuracy = self.objective.accuracy(new_params, self.test.features, self.test.labels)
        return new_params, record

    def _compute_partitions(self, params: np.ndarray, round_index: int, tau: int,
                            probe: bool) -> tuple[PartitionUpdates, list[float]]:
        """Every partition's update and its compute time. A vectorised pass over all partitions is
        timed as a whole and shared out in proportion to the partitions' batch sizes."""
        config = self.config
        rngs = [batch_rng(config.seed, round_index, p) for p in range(len(self.partitions))]
        started = time.perf_counter()
        updates = local_updates(self.objective, params, self.partitions, config.lr, tau, config.batch_size, rngs,
                                probe)
        total_s = time.perf_counter() - started
        work = np.array([len(p) if config.batch_size is None else min(config.batch_size, len(p))
                         for p in self.partitions], dtype=np.float64)
        return updates, list(total_s * work / work.sum())

    def _send_poisoned(self, attack: DataAttack, messages: np.ndarray, params: np.ndarray, round_index: int,
                       tau: int, adversaries: list[int]) -> None:
        """Overwrite the adversaries' rows of `messages` with what they send after training their
        partitions on poisoned data (same batches as the honest replicas draw)."""
        for worker in adversaries:
            poisoned = {p: attack.poison(self.partitions[p]) for p in held_partitions(self.code, worker)}
            messages[worker] = worker_message(self.objective, self.config, self.code, self.message_scale, worker,
                                              poisoned, params, round_index, tau)[0]

    def _draw_adversaries(self) -> list[int]:
        if not self.config.n_adversaries:
            return []
        return list(choose_adversaries(self.config.n_workers, self.config.n_adversaries, self.adversary_rng))

    def _encode(self, scaled: np.ndarray, partition_s: list[float]) -> tuple[np.ndarray, list[float]]:
        """Each worker's message and its compute time: its partitions' updates plus its encoding.

        Uncoded, worker w's message is row w of `scaled` itself (attacks return a new array). Coded, all
        workers encode in one matrix product (`Code.encode_all`) whose time is shared out equally: each
        worker combines the same number (r) of vectors.
        """
        if self.code is None:
            return scaled, list(partition_s)
        started = time.perf_counter()
        messages = self.code.encode_all(scaled)
        encode_s = (time.perf_counter() - started) / self.config.n_workers
        return messages, [sum(partition_s[p] for p in self.code.partitions_of(w)) + encode_s
                          for w in range(self.config.n_workers)]

    def _combine(self, messages: np.ndarray, erased: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The PS's step: the decoded exact sum over P partitions / P, or the robust aggregate of the
        rows that arrived (all but `erased`)."""
        if self.code is None:
            rows = np.delete(messages, erased, axis=0) if erased.size else messages
            return self.aggregator(rows, self.config.n_adversaries), []
        decoded = self.code.decode(messages, erased)
        return decoded.total / self.code.n_partitions, list(decoded.flagged)
