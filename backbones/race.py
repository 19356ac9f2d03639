"""Successive halving over (backbone, learning rate) pairs: its arithmetic, and its state kept by Optuna.

The rule is synchronous: every pair still in the race trains to the rung's epoch count, then the best 1/eta by
validation top-1 go on to a rung eta times longer, each continuing from where it stopped. Optuna keeps the state:
one trial per pair, its validation top-1 at each rung as an intermediate value, pruned when it leaves; in an SQLite
file by default, so a killed race resumes where it was and makes the same decisions.

Why not Optuna's own SuccessiveHalvingPruner: it is asynchronous (ASHA). A trial is judged against the trials that
reached the rung before it, which suits many workers; one process running the pairs in turn would promote the
first pairs whatever their scores. The synchronous rule is `survivors` below.

Several workers may share one race (the same --out, and --storage where they run on several machines): each trains
the pairs no other worker holds, and every worker waits for the rung's last score before the same rule decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import optuna

from backbones.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the race prints its own lines
SQLITE_WAIT_SECONDS = 60  # how long a worker's write to the race's SQLite file waits for another worker's


@dataclass(frozen=True)
class Pair:
    """One contestant: a backbone and the AdamW learning rate it trains with."""

    model: str
    lr: float

    @property
    def name(self) -> str:
        return f"{self.model.replace(':', '_')}-lr{self.lr:g}"


@dataclass(frozen=True)
class Rung:
    index: int
    epochs: int  # each pair's epochs in total at the end of the rung
    pairs: int  # how many pairs train in it


def keep_count(pairs: int, eta: int, floor: int) -> int:
    """How many of `pairs` go on: the best 1/eta, but never fewer than `floor` (the finalists) while there are."""
    return max(pairs // eta, min(floor, pairs))


def survivors(scores: Sequence[float], eta: int, floor: int) -> list[int]:
    """Indices of the pairs that go on, best first; equal scores keep the earlier pair (the better ranked)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[: keep_count(len(scores), eta, floor)])


def next_rung(previous: Rung | None, alive: int, eta: int, min_epochs: int, floor: int) -> Rung | None:
    """The rung after `previous` for `alive` pairs, or None once no more than `floor` are left: they are all
    finalists, and the confirmation trains them."""
    if previous is None:
        return Rung(0, min_epochs, alive)
    if alive <= floor:
        return None
    return Rung(previous.index + 1, previous.epochs * eta, alive)


def plan(pairs: int, eta: int, min_epochs: int, budget: float, floor: int) -> list[Rung]:
    """The rungs a race of `pairs` runs within `budget` epochs (state carries over, so a rung costs only the
    epochs it adds), assuming no pair stops early. The race itself decides rung by rung with what is left."""
    rungs, spent, rung, alive = [], 0, None, pairs
    while (rung := next_rung(rung, alive, eta, min_epochs, floor)) is not None:
        cost = rung.pairs * (rung.epochs - (rungs[-1].epochs if rungs else 0))
        if spent + cost > budget:
            break
        rungs.append(rung)
        spent += cost
        alive = keep_count(rung.pairs, eta, floor)
    return rungs


class RaceState:
    """The race as an Optuna study: one trial per pair, created once, in the pairs' order. `lock` is held while a
    decision every worker shares is taken (the trials' creation, `remember`), so that only one worker takes it."""

    def __init__(
        self, storage: str, name: str, pairs: list[Pair], identity: str, lock: AbstractContextManager | None = None
    ) -> None:
        self.lock = lock or nullcontext()
        with self.lock:
            self._open(storage, name, pairs, identity)

    def _open(self, storage: str, name: str, pairs: list[Pair], identity: str) -> None:
        try:
            # several workers write one SQLite file: a write waits for another's rather than failing at once
            wait = {"connect_args": {"timeout": SQLITE_WAIT_SECONDS}} if storage.startswith("sqlite") else {}
            self.study = optuna.create_study(
                study_name=name,
                storage=optuna.storages.RDBStorage(storage, engine_kwargs=wait),
                direction="maximize",
                load_if_exists=True,
            )
        except Exception as err:  # SQLAlchemy raises many types for a bad URL or an unreadable file
            driver = (
                " SQLAlchemy lacks the database's driver: install it (PostgreSQL: pip install 'psycopg[binary]'; "
                "MySQL: pip install mysqlclient)."
                if isinstance(err, ImportError)
                else ""
            )
            raise UserError(
                f"The race's Optuna storage {storage} cannot be opened ({type(err).__name__}: {err}).{driver} Pass a "
                "writable SQLite file (sqlite:///path/race.db) or a database URL with --storage."
            ) from err
        saved = self.study.user_attrs.get("data")
        if saved is None:
            self.study.set_user_attr("data", identity)
        elif saved != identity:
            raise UserError(
                f"The race study '{name}' in {storage} was run on other data or another split, so its scores do "
                "not compare with this one's. Give a new --out (or --storage)."
            )
        self.pairs = pairs
        self.trials = self._trials()

    def _trials(self) -> list[int]:
        """Each pair's trial number, creating the missing ones (all of them on a first start)."""
        known = {
            (t.params["model"], t.params["lr"]): t.number
            for t in self.study.get_trials(deepcopy=False)
            if t.state != optuna.trial.TrialState.WAITING
        }
        extra = set(known) - {(p.model, p.lr) for p in self.pairs}
        if extra:
            raise UserError(
                f"The race study '{self.study.study_name}' holds other pairs ({sorted(extra)[0]} ...): it was "
                "started with other --models, --keep or --lr-grid. Rerun it with those, or give a new --out."
            )
        models = sorted({p.model for p in self.pairs})
        rates = sorted({p.lr for p in self.pairs})
        for pair in self.pairs:
            if (pair.model, pair.lr) in known:
                continue
            self.study.enqueue_trial({"model": pair.model, "lr": pair.lr}, skip_if_exists=True)
            trial = self.study.ask()
            trial.suggest_categorical("model", models)
            trial.suggest_categorical("lr", rates)
            known[(pair.model, pair.lr)] = trial.number
        return [known[(p.model, p.lr)] for p in self.pairs]

    def frozen(self, index: int) -> optuna.trial.FrozenTrial:
        return self.study.get_trials(deepcopy=False)[self.trials[index]]

    def score(self, index: int, rung: Rung) -> float | None:
        """The pair's validation top-1 at the end of `rung`, if it got there."""
        return self.frozen(index).intermediate_values.get(rung.epochs)

    def record(self, index: int, rung: Rung, top1: float, epochs: int, seconds: float) -> None:
        """The pair's validation top-1 at the end of `rung`, and its epochs and seconds in all so far."""
        trial = optuna.trial.Trial(self.study, self.frozen(index)._trial_id)
        trial.set_user_attr("spent", {"epochs": epochs, "seconds": seconds})
        trial.report(top1, rung.epochs)  # last: a pair with a score at a rung has its cost recorded

    def spent(self, index: int) -> tuple[int, float]:
        """(epochs, seconds) the pair has trained in all."""
        spent = self.frozen(index).user_attrs.get("spent", {"epochs": 0, "seconds": 0.0})
        return spent["epochs"], spent["seconds"]

    def leave(self, index: int) -> None:
        if self.frozen(index).state == optuna.trial.TrialState.RUNNING:
            self.study.tell(self.trials[index], state=optuna.trial.TrialState.PRUNED)

    def finish(self, index: int, top1: float) -> None:
        if self.frozen(index).state == optuna.trial.TrialState.RUNNING:
            self.study.tell(self.trials[index], top1)

    def remember(self, key: str, decide: Callable[[], object]):
        """A decision taken once and kept (whether a rung runs, the confirmation's epochs), so that a resumed race
        repeats it even where it rested on measured seconds."""
        with self.lock:
            attrs = self.study.user_attrs
            if key in attrs:
                return attrs[key]
            value = decide()
            self.study.set_user_attr(key, value)
            return value
