"""Running under a launcher: `torchrun`, `accelerate launch`, Slurm's `srun` starting either.

flipgate has no scheduler of its own. A launcher starts the same command once per rank with
`WORLD_SIZE`, `RANK` and `LOCAL_RANK` (and `MASTER_ADDR`/`MASTER_PORT`) in the environment; each
rank takes every WORLD_SIZE-th case starting at its RANK (the same split as `--shard RANK/WORLD_SIZE`),
writes its share beside `--out`, and the ranks meet once at the end through torch.distributed
(gloo: the ranks exchange a status word, never tensors, so one CPU backend serves CPU and CUDA
runs alike). Rank 0 then joins the shares into `--out` with the merge code and removes them; the
other ranks exit 0 without writing `--out`.

Why a meeting at the end and not a scheduler: a case's rows do not depend on the other cases
(the oracle runs each case alone, captures are per case), so the ranks need no coordination
while they work, and the joined trace holds the same rows as a single-process run.

Failure: a rank whose work raises still comes to the meeting and reports its error; every rank
then exits non-zero naming it. A rank that dies outright (killed, out of memory) is noticed by
the launcher (torchrun stops the others) or, without one, by the meeting's timeout
(`FLIPGATE_DIST_TIMEOUT` seconds, default 1800): never a hang. Each rank's share keeps its
resumable parts, so the same command with `--resume` continues where it stopped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import FlipgateError, InputError

DEFAULT_TIMEOUT_S = 600.0


class RankFailed(FlipgateError):
    """Another rank failed (or never came): this rank's share may be fine, the run is not.

    Exit 2 (a peer's bad input or a lost peer), or 3 when the rank at fault hit an internal error."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.exit_code = 3 if code == 3 else 2


@dataclass(frozen=True)
class Launch:
    """This process's place in a launched run."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def shard(self) -> str:
        return f"{self.rank}/{self.world_size}"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share_path(self, out: str | os.PathLike, rank: int | None = None) -> Path:
        """Where rank `rank` (default: this one) writes its share of `out`."""
        out = Path(out)
        r = self.rank if rank is None else rank
        return out.with_name(f"{out.stem}.rank-{r}-of-{self.world_size}{out.suffix or '.safetensors'}")

    def share_paths(self, out: str | os.PathLike) -> list[Path]:
        return [self.share_path(out, r) for r in range(self.world_size)]

    def select(self, items: Sequence) -> list:
        """This rank's share of `items` (the `--shard RANK/WORLD_SIZE` split)."""
        return list(items[self.rank::self.world_size])


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment: {name}={raw!r} is not an integer (set by the launcher?)") from None


def from_env() -> Launch | None:
    """The launch this process is part of, or None when it runs alone (no WORLD_SIZE, or 1)."""
    world = _env_int("WORLD_SIZE")
    if world is None or world == 1:
        return None
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if world < 1:
        raise InputError(f"environment: WORLD_SIZE={world} must be at least 1")
    if rank is None:
        raise InputError(f"environment: WORLD_SIZE={world} but RANK is not set: start flipgate with "
                         "torchrun, accelerate launch or srun, which set both")
    if not 0 <= rank < world:
        raise InputError(f"environment: RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return Launch(rank=rank, world_size=world, local_rank=local if local is not None else rank)


def timeout_s() -> float:
    """How long the ranks wait for each other to join (FLIPGATE_DIST_TIMEOUT, seconds)."""
    return _env_seconds("FLIPGATE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)


def pin_device(launch: Launch, device: str) -> None:
    """One process per GPU: `--device cuda` means this rank's GPU (LOCAL_RANK). `--device auto` (one
    process per node, the model split over the node's GPUs by a device map) is left as it is."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            if launch.local_rank >= torch.cuda.device_count():
                raise InputError(f"LOCAL_RANK={launch.local_rank} but this node has "
                                 f"{torch.cuda.device_count()} CUDA device(s): start one process per GPU")
            torch.cuda.set_device(launch.local_rank)


class Meeting:
    """The rendezvous of a launched run, through torch.distributed's key-value store.

    The ranks join when they start (a rank that never starts is noticed within the timeout), beat
    a heartbeat while they work (a rank that dies is noticed within `stale_s` of its last beat,
    however long the others' shares take), and post one status at the end. Only status words
    travel: the rows go through files, so no collective backend (gloo, nccl) is needed.
    """

    def __init__(self, launch: Launch, *, stale_s: float | None = None):
        self.launch = launch
        self.timeout = timeout_s()
        self.stale_s = stale_s if stale_s is not None else _env_seconds("FLIPGATE_DIST_STALE", 120.0)
        self.beat_s = min(2.0, self.stale_s / 4)  # several beats per staleness window
        self._stop = None

    def __enter__(self) -> "Meeting":
        import threading

        import torch.distributed as dist

        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise InputError(f"environment: WORLD_SIZE={self.launch.world_size} but {name} is not set: start "
                                 "flipgate with torchrun, accelerate launch or srun, which set it")
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        try:
            store, _, _ = next(dist.rendezvous("env://", rank=self.launch.rank,
                                               world_size=self.launch.world_size,
                                               timeout=_dt.timedelta(seconds=self.timeout)))
            # under torchrun the store is the agent's, shared by its restarts: a prefix per attempt
            prefix = (f"flipgate/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/"
                      f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")
            self.store = dist.PrefixStore(prefix, store)
            self.store.add("joined", 1)
            self._wait(lambda: self.store.add("joined", 0) >= self.launch.world_size, self.timeout,
                       lambda: f"only {self.store.add('joined', 0)} of {self.launch.world_size} ranks "
                               f"joined within {self.timeout:g} s")
        except RankFailed:
            raise
        except (RuntimeError, ValueError, OSError) as e:  # DistStoreError is a RuntimeError
            raise RankFailed(f"rank {self.launch.rank}: the {self.launch.world_size} ranks did not all join "
                             f"within {self.timeout:g} s at {where} ({_first_line(e)})") from None
        self._stop = threading.Event()
        self._beats = 0
        self._beater = threading.Thread(target=self._beat, name="flipgate-heartbeat", daemon=True)
        self._beater.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            with contextlib.suppress(Exception):
                self.store.add(f"beat/{self.launch.rank}", 1)

    def _wait(self, ready: Callable[[], bool], limit_s: float, why: Callable[[], str]) -> None:
        import time

        t0 = time.monotonic()
        while not ready():
            if time.monotonic() - t0 > limit_s:
                raise RankFailed(f"rank {self.launch.rank}: {why()}")
            time.sleep(0.2)

    def _exchange(self, key: str, mine: tuple[int, str] | None, ranks: Sequence[int]) -> list[tuple[int, str]]:
        """Post this rank's status under `key` (unless `mine` is None) and wait for those of `ranks`.
        A rank whose heartbeat stops before it posts is reported as failed (RankFailed) within `stale_s`."""
        import json
        import time

        try:
            if mine is not None:
                self.store.set(f"{key}/{self.launch.rank}", json.dumps(list(mine)))
            seen = {r: (-1, time.monotonic()) for r in ranks}
            while True:
                missing = [r for r in ranks if not self.store.check([f"{key}/{r}"])]
                if not missing:
                    break
                now = time.monotonic()
                for r in missing:
                    beats = self.store.add(f"beat/{r}", 0)
                    last, since = seen[r]
                    if beats != last:
                        seen[r] = (beats, now)
                    elif now - since > self.stale_s:
                        raise RankFailed(
                            f"rank {self.launch.rank}: rank {r} stopped without reporting (no heartbeat for "
                            f"{self.stale_s:g} s: killed, or out of memory?); each rank's finished cases are "
                            "kept: rerun the same command with --resume")
                time.sleep(0.2)
            return [tuple(json.loads(self.store.get(f"{key}/{r}").decode("utf-8"))) for r in ranks]
        except RankFailed:
            raise
        except (RuntimeError, ValueError, OSError) as e:
            raise RankFailed(f"rank {self.launch.rank}: lost the rendezvous before every rank reported "
                             f"(rank 0 stopped?) ({_first_line(e)}); rerun the same command with --resume") from None

    def round(self, name: str, work: Callable[[], object] | None,
              finish: Callable[[], object] | None = None) -> None:
        """Every rank runs `work`; once all have succeeded, rank 0 runs `finish` and the others wait for
        it, so the next round starts from its result. A failure anywhere is raised on every rank."""
        mine, err = _attempt(work)
        try:
            statuses = self._exchange(f"{name}/work", mine, range(self.launch.world_size))
        except RankFailed:
            if err is not None:
                raise err from None
            raise
        if err is not None:
            raise err
        failed = [(r, code, msg) for r, (code, msg) in enumerate(statuses) if code != 0]
        if failed:
            r, code, msg = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise RankFailed(f"rank {r} of {self.launch.world_size} failed{more}: {msg}", code)
        if finish is None:
            return
        if self.launch.is_main:
            fmine, ferr = _attempt(finish)
            self._exchange(f"{name}/finish", fmine, [0])
            if ferr is not None:
                raise ferr
        else:
            ((code, msg),) = self._exchange(f"{name}/finish", None, [0])
            if code != 0:
                raise RankFailed(f"rank 0 of {self.launch.world_size} failed: {msg}", code)

    def __exit__(self, *exc) -> None:
        if self._stop is None:
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            self.store.add("left", 1)
            if self.launch.is_main:
                # without torchrun, rank 0 hosts the store: stay until the others have read it
                self._wait(lambda: self.store.add("left", 0) >= self.launch.world_size,
                           min(self.stale_s, 30.0), str)


def _attempt(fn: Callable[[], object] | None) -> tuple[tuple[int, str], BaseException | None]:
    """Run `fn`: ((exit code, message), the exception to re-raise on this rank)."""
    if fn is None:
        return (0, ""), None
    try:
        fn()
    except FlipgateError as e:
        return (e.exit_code, str(e)), e
    except Exception as e:  # a bug on this rank: still tell the others; the CLI shows the traceback
        return (3, f"internal error: {type(e).__name__}: {e}"), e
    return (0, ""), None


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
        if not value > 0:
            raise ValueError
    except ValueError:
        raise InputError(f"environment: {name}={raw!r}: expected a number of seconds > 0") from None
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def run_shares(launch: Launch, work: Callable[[], object], finish: Callable[[], object] | None) -> None:
    """The usual launched command: each rank writes its share, then rank 0 joins them."""
    with Meeting(launch) as meeting:
        meeting.round("shares", work, finish)


def remove_shares(paths: Iterator[Path] | Sequence[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            Path(p).unlink()
