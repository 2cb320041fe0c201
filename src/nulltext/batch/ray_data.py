"""Manifest runs on Ray Data: the same tasks, outputs and results.jsonl as the local loop, over many workers.

The driver plans the run (`nulltext.batch.plan.plan_run`: keys, resume) and logs results.jsonl; Ray Data
carries the tasks (`from_items`) to a pool of actors (`map_batches` with a callable class) that each
load the model once and run `nulltext.batch.run.run_tasks` on batches of K rows — the function the local
loop calls. Workers write the .nti and PNG files themselves (atomically), so OUT/ must be a folder every
worker sees (a shared file system on a cluster); the driver appends each returned record to results.jsonl.

Fault tolerance is Ray Data's default for actor pools: an actor that dies (killed, out of memory, a
lost node) is restarted and the batch it held is retried (`max_restarts` = `max_task_retries` = −1,
without limit; `run_tasks` records a row's error instead of raising, so only a dead process is retried). A retried batch finds the files its
first attempt managed to publish and reuses them; a batch's records reach the driver once, so no row
is lost or logged twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nulltext.batch.plan import BatchConfig
from nulltext.settings import SettingsError


@dataclass
class RayOptions:
    """Where and how wide a Ray run goes."""

    address: str | None = None  # None: start a local Ray with this machine's CPUs; else a cluster's address
    workers: int | None = None  # actors, each with a model; None: the CPUs (or GPUs) Ray has
    gpus_per_worker: float | None = None  # None: 1 if the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise SettingsError(f"workers {self.workers!r} must be a whole number ≥ 1")
        if self.gpus_per_worker is not None and not 0 <= self.gpus_per_worker:
            raise SettingsError(f"GPUs per worker {self.gpus_per_worker!r} must be ≥ 0")
        if not self.cpus_per_worker > 0:
            raise SettingsError(f"CPUs per worker {self.cpus_per_worker!r} must be > 0")


class BatchWorker:
    """A Ray Data actor: loads the model once, then runs batches of tasks (one JSON string per row)."""

    def __init__(self, model: str | None, device: str | None, dtype: str | None, out: str, redo: bool,
                 allow_pickle: bool = False, loras: list[str] | None = None):
        from nulltext.model import load_model

        self.model = load_model(model, device=device, dtype=dtype, allow_pickle=allow_pickle, loras=loras or ())
        self.out, self.redo = out, redo

    def __call__(self, batch: dict) -> dict:
        from nulltext.batch.run import run_tasks

        tasks = [json.loads(str(t)) for t in batch["task"]]
        records = run_tasks(self.model, tasks, self.out, self.redo)
        return {"record": [json.dumps(r) for r in records]}


def ray_executor(options: RayOptions, model: str | None, device: str | None, dtype: str | None, out: str | Path,
                 config: BatchConfig, allow_pickle: bool = False, loras: list[str] | None = None
                 ) -> Callable[[list[dict], Callable[[dict], None]], None]:
    """An executor for `run_manifest`: runs the tasks on Ray Data and hands each record back as it arrives
    (each worker loads the model with the same LoRA files, given as "FILE:SCALE")."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise SettingsError("--ray needs Ray Data, which is not installed — pip install 'nulltext[ray]'") from None

    if model is not None and os.path.exists(model):
        model = os.path.abspath(model)  # a local folder or file, seen from the workers' own working folders
    from nulltext.model.lora import LoRA

    loras = [f"{os.path.abspath(lora.path)}:{lora.scale!r}" for lora in map(LoRA.parse, loras or [])]

    def execute(tasks: list[dict], on_result: Callable[[dict], None]) -> None:
        if not tasks:
            return
        import ray

        started = _connect(ray, options)
        try:
            _quiet_ray_data(ray)
            resources = ray.cluster_resources()
            gpus = options.gpus_per_worker if options.gpus_per_worker is not None else \
                (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
            slots = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1) / options.cpus_per_worker
            workers = options.workers or max(1, int(slots))
            workers = min(workers, -(-len(tasks) // config.batch_size))  # no idle actors loading a model
            # rows of one inversion setting next to each other (manifest order within), so batches rarely mix
            tasks = sorted(tasks, key=lambda t: json.dumps(t["settings"], sort_keys=True))
            items = [{"task": json.dumps(t)} for t in tasks]
            dataset = ray.data.from_items(items, override_num_blocks=-(-len(tasks) // config.batch_size))
            # Ray Data's actor pools restart dead actors and retry their batches by default (max_restarts and
            # max_task_retries -1); run_tasks never raises for a row, so only a dead process is retried
            records = dataset.map_batches(
                BatchWorker, batch_size=config.batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=options.cpus_per_worker, num_gpus=gpus, batch_format="numpy",
                fn_constructor_kwargs={"model": model, "device": device, "dtype": dtype, "out": str(Path(out).resolve()),
                                       "redo": config.redo, "allow_pickle": allow_pickle, "loras": loras})
            for row in records.iter_rows():
                on_result(json.loads(row["record"]))
        finally:
            if started:
                ray.shutdown()

    return execute


def _quiet_ray_data(ray) -> None:
    """Ray Data's bars and INFO lines stay in its log files: nulltext shows its own progress and summary."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars, context.print_on_execution_start = False, False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def _connect(ray, options: RayOptions) -> bool:
    """Join the given cluster, or an already running Ray, or start a local one; True if this call started it."""
    if ray.is_initialized():
        return False
    import logging

    quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if options.address is not None:
        ray.init(address=options.address, **quiet)
    else:
        ray.init(num_cpus=os.cpu_count(), **quiet)
    return True
