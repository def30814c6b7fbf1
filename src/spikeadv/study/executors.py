"""Executors of the study's task graph: ``local`` runs the tasks one after another in this process;
``ray`` submits each as a Ray task (its CPU and GPU needs declared, its dependencies passed as object
references, retried when its worker dies) to a Ray started here or to a running cluster. Both call
:func:`.tasks.run_task` on the same tasks with the same number of torch threads, so they write the same
files: CPU float results depend on the thread count, not on the process."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .. import runtime
from ..errors import SpikeAdvError
from .plan import Task
from .tasks import run_task


@dataclass(frozen=True)
class Executor:
    """Where the tasks run: ``kind`` local or ray; for ray, the cluster ``address`` (None: start one
    here with ``workers`` worker processes), ``gpus`` per task; ``threads``: torch threads per task;
    ``device``: what each task computes on (:func:`task_device`; None: this process's device,
    :func:`spikeadv.runtime.device`)."""

    kind: str = "local"
    address: str | None = None
    workers: int = 1
    gpus: float = 0.0
    threads: int = field(default_factory=torch.get_num_threads)
    device: str | None = None

    def describe(self) -> str:
        if self.kind == "local":
            return f"local (this process, on {runtime.describe(driver_device(self))})"
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
        return (f"ray ({where}, {self.threads} torch threads per task"
                + (f", {self.gpus:g} GPU, on cuda" if self.gpus else ", on cpu") + ")")


def task_device(spec: str | None, kind: str, gpus: float) -> str:
    """The device the tasks compute on, from ``--device``. The local executor resolves it here, so a
    device this machine lacks is refused before anything is written. A Ray task computes on the GPU
    Ray gives it (``--gpus-per-task`` > 0) or on the CPU; its worker resolves ``cuda`` (the driver may
    have no GPU)."""
    if kind == "local":
        return str(runtime.use(spec))
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "cuda" if gpus else "cpu"
    if spec == "cuda" and not gpus:
        raise SpikeAdvError("--device cuda with --executor ray needs --gpus-per-task > 0 (Ray gives each task its GPU)")
    if spec.startswith("cuda:"):
        raise SpikeAdvError(f"--device {spec}: a Ray task computes on the GPU Ray gives it; pass --device cuda")
    if spec == "cpu" and gpus:
        raise SpikeAdvError("--gpus-per-task with --device cpu: the tasks would hold GPUs they never use")
    return spec if spec in ("cpu", "cuda") else str(runtime.resolve(spec))


def driver_device(executor: Executor) -> torch.device:
    """The device of what runs in this process: the tasks' device, or for Ray tasks on GPUs this
    machine's GPU when it has one (a driver need not)."""
    return runtime.device(None if executor.device == "cuda" and executor.kind == "ray" else executor.device)


class Progress:
    """One bar over the whole graph, weighted by each task's expected cost (:attr:`Task.cost`), with the
    rate and ETA; a task whose artifact was found already done takes its cost off the total instead."""

    def __init__(self, tasks: list[Task]) -> None:
        self.total, self.done, self.failed = len(tasks), 0, 0
        self.bar = tqdm(total=sum(t.cost for t in tasks), desc=f"study ({len(tasks)} tasks)", dynamic_ncols=True,
                        mininterval=1.0, bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def show(self, running: int, last: str) -> None:
        self.bar.set_postfix_str(f"{self.done}/{self.total} done, {running} running, {self.failed} failed, {last}",
                                 refresh=False)

    def finish(self, task: Task, result: dict) -> None:
        self.done += 1
        if result.get("reused"):
            self.bar.total = max(self.bar.total - task.cost, self.bar.n)
            self.bar.refresh()
        else:
            self.bar.update(task.cost)

    def log(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def local(tasks: list[Task], out: Path, root: Path | None, can_write: bool, log: Callable[[str], None],
          device: torch.device) -> dict[str, dict]:
    """Every task in plan order, in this process, on ``device``."""
    results: dict[str, dict] = {}
    progress = Progress(tasks)
    try:
        for task in tasks:
            progress.show(1, task.name)
            results[task.name] = run_task(task, out, root, {d: results[d] for d in task.deps}, can_write,
                                              progress.log if log is print else log, device)
            progress.finish(task, results[task.name])
    finally:
        progress.close()
    return results


def _ray():
    try:
        import ray
    except ImportError:
        raise SpikeAdvError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')") from None
    return ray


def _reachable(address: str) -> None:
    """Refuse at once a HOST:PORT where nothing listens (Ray would retry for a minute)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpikeAdvError(f"--address {address!r} is not auto or HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise SpikeAdvError(f"no Ray cluster at {address}: {e.strerror or e}; start one (ray start --head) "
                            "or pass --address auto") from None


def check(executor: Executor) -> None:
    """Refuse an executor that cannot run, before anything is written: Ray missing, no cluster at
    ``--address``, or GPUs per task on a local Ray of a machine without a GPU (its tasks would wait
    for them forever; a cluster's GPUs are counted when joining it, :func:`connect`)."""
    if executor.kind == "ray":
        _ray()
        if executor.address and executor.address != "auto":
            _reachable(executor.address)
        if executor.gpus and not executor.address and torch.cuda.device_count() == 0:
            raise SpikeAdvError(f"--gpus-per-task {executor.gpus:g}: this machine has no GPU for its local "
                                "Ray, so no task could start; drop --gpus-per-task, or pass --address of a cluster "
                                "with GPUs")


def connect(executor: Executor) -> Callable[[], None]:
    """Start or join the executor's Ray (after :func:`check`); returns how to leave it."""
    if executor.kind != "ray":
        return lambda: None
    ray = _ray()
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        if executor.address:
            ray.init(address=executor.address, **options)
        else:
            slots = executor.workers * executor.threads
            if slots > (os.cpu_count() or 1):  # more threads than cores: idle OpenMP threads must sleep, not spin
                options["runtime_env"] = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
            ray.init(num_cpus=slots, object_store_memory=128 << 20, **options)
    except ConnectionError as e:
        raise SpikeAdvError(f"no Ray cluster at {executor.address}: {str(e).splitlines()[0]}") from None
    gpus = ray.cluster_resources().get("GPU", 0)
    if executor.gpus > gpus:
        ray.shutdown()
        raise SpikeAdvError(f"--gpus-per-task {executor.gpus:g}: the Ray cluster has {gpus:g} GPU(s), so "
                            "no task could start; drop --gpus-per-task or join a cluster with GPUs")
    return ray.shutdown


def _outlive(driver: int) -> None:
    """End this worker process once the driver that started its local Ray is gone (killed with -9, its
    Ray leaves orphans): no work continues for a run nobody drives. Files are written atomically, so
    an exit mid-task leaves nothing half-written."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(driver, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    if driver not in _watched:
        _watched.add(driver)
        threading.Thread(target=watch, daemon=True).start()


_watched: set[int] = set()


def _remote(run: Callable[[Task, dict[str, dict]], dict], task: Task, threads: int, driver: int | None,
            *deps: dict) -> dict:
    """A task on a Ray worker: the driver's thread count (so the floats match), then ``run``."""
    if driver is not None:
        _outlive(driver)
    torch.set_num_threads(threads)
    return run(task, dict(zip(task.deps, deps)))


def study_task(out: str, root: str | None, device: str, task: Task, deps: dict[str, dict]) -> dict:
    """One task of the study on a worker (:func:`.tasks.run_task`), its paths absolute, on ``device``
    as this worker sees it (``cuda``: the GPU Ray gave the task)."""
    return run_task(task, Path(out), Path(root) if root else None, deps, device=runtime.use(device))


def on_ray(tasks: list[Task], run: Callable[[Task, dict[str, dict]], dict], executor: Executor) -> dict[str, dict]:
    """Every task as a Ray task running ``run(task, deps)`` (a picklable module-level function, or a
    partial of one), each after its dependencies, retried (3 times) when its worker dies; a task that
    fails by its own error stops the run (finished artifacts stay for the rerun)."""
    ray_ = _ray()
    from ray.exceptions import RayTaskError

    remote = ray_.remote(_remote)
    refs: dict[str, object] = {}
    for task in tasks:
        refs[task.name] = remote.options(
            num_cpus=executor.threads, num_gpus=executor.gpus, max_retries=3, name=task.name,
        ).remote(run, task, executor.threads, None if executor.address else os.getpid(),
                 *(refs[d] for d in task.deps))
    names = {ref: name for name, ref in refs.items()}
    by_name = {t.name: t for t in tasks}
    slots = max(1, int(ray_.cluster_resources().get("CPU", 1) // executor.threads))
    results: dict[str, dict] = {}
    pending = list(refs.values())
    progress = Progress(tasks)
    last = "starting"
    try:
        while pending:
            ready, pending = ray_.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                name = names[ref]
                try:
                    results[name] = ray_.get(ref)
                except RayTaskError as e:
                    progress.failed += 1
                    if isinstance(e.cause, SpikeAdvError):
                        raise SpikeAdvError(f"task {name}: {e.cause}") from None
                    raise
                except ray_.exceptions.RayError as e:
                    progress.failed += 1
                    raise SpikeAdvError(f"task {name} failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                        "finished work is saved: rerun the same command to resume") from None
                progress.finish(by_name[name], results[name])
                last = name
            runnable = sum(1 for t in tasks if t.name not in results and all(d in results for d in t.deps))
            progress.show(min(runnable, slots), last)
    finally:
        progress.close()
    return results


def run_plan(tasks: list[Task], out: Path, root: Path | None, executor: Executor, can_write: bool,
            log: Callable[[str], None]) -> dict[str, dict]:
    """Every task of the plan on ``executor`` (a read-only run directory is served locally: nothing in
    it may be computed). Returns each task's result by name."""
    if executor.kind == "ray" and can_write:
        started = time.perf_counter()
        results = on_ray(tasks, functools.partial(study_task, str(out.resolve()), str(root.resolve()) if root else None,
                                                  executor.device), executor)
        workers = {r["worker"] for r in results.values() if r.get("worker") and not r.get("reused")}
        log(f"ray: {len(tasks)} tasks in {time.perf_counter() - started:.0f} s, new cells from {len(workers)} "
            "worker processes")
        return results
    return local(tasks, out, root, can_write, log, driver_device(executor))
