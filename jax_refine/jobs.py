"""Inpainting jobs: the items of a folder (or one image file) on one process, or split over
the processes of `jax.distributed` (TPU pods, GPU clusters), with a pipelined loader.

One code path for every case (`jax-refine inpaint` and `inpaint_files`):
1. the items (`files.find_items`) and their sizes, read from the files' headers;
2. batches: up to batch_size items of one `batch_key` each, in a fixed order;
3. the split: each batch to one process, largest total pixels first to the least loaded
   process, so no host gets all the large photos; every process computes the same plan from
   the same folder, and the processes check that their plans agree;
4. on each process, its own items: outputs already complete are skipped (skip_existing; a
   file is complete when it decodes to the end at the expected size), temporary files that
   an interrupted run left for them are removed; its batches run on its local devices
   (`inpaint_batch` data-parallel, or `inpaint` for batch_size 1) while worker threads
   decode up to PREFETCH batches ahead and encode and write up to WRITE_BEHIND batches
   behind, so at most PREFETCH + WRITE_BEHIND + 2 batches are in memory;
5. each process reports its own items (progress lines, and when distributed a report file
   OUTDIR/.jax-refine/process-I-of-N.json); the processes exchange counts and failures
   through jax.distributed's key-value store (under keys named by `job_id`), so every
   process returns the whole job's `JobSummary`, which process 0 prints.
Ctrl-C and SIGTERM (`Terminated`, raised by the CLI's handler) stop a job after the writes in
progress: `JobInterrupted` carries the summary so far.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

from ._compat import coordination_client
from .files import (Item, ItemError, UsageError, check_outputs, find_items, item_size, open_image,
                    output_complete, printable, remove_stale_partials, save_atomic, write_atomic)
from .api import batch_key, check_arguments, inpaint_batch_with_info, inpaint_with_info, resolve_model
from .images import MAX_HOLE_FRACTION, LargeHoleWarning, check_mask_threshold
from .plan import RefineConfig, budget_size, resolve_config

PREFETCH = 2      # batches decoded ahead of the one the devices run
WRITE_BEHIND = 2  # computed batches being encoded and written
IO_THREADS = max(1, min(8, os.cpu_count() or 1))
REPORT_PLOT_SUFFIX = ".report.png"
START_TIMEOUT_S = 1800  # every process must have planned the job within this time of the first
_POLL_MS = 10_000  # waiting for other processes: how often to look whether one of them stopped


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """How a job inpaints and writes.

    method, mask_threshold, crop_margin: as `inpaint`. config: as `inpaint`; None: the
    model's recommended settings (`inpaint_files` and the CLI decide it with
    `plan.resolve_config` once the model is loaded; `run_items` needs it decided).
    batch_size: images of one padded size inpainted together, data-parallel over this
    process's devices (`inpaint_batch`); a failing batch is retried image by image.
    overwrite: replace existing outputs; skip_existing: keep the complete ones (resume an
    interrupted job); neither: an existing output is a failed item. report, report_plot: the
    CLI's --report and --report-plot.
    """

    method: str = "refine"
    config: RefineConfig | None = None
    mask_threshold: float = 0.0
    batch_size: int = 1
    crop_margin: int | None = None
    overwrite: bool = False
    skip_existing: bool = False
    report: bool = False
    report_plot: bool = False

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.crop_margin is not None and self.crop_margin < 0:
            raise UsageError(f"crop_margin must be >= 0, got {self.crop_margin}")
        if self.batch_size > 1 and self.crop_margin is not None:
            raise UsageError("crop_margin inpaints crops one by one: it cannot be combined with batch_size")
        if self.overwrite and self.skip_existing:
            raise UsageError("overwrite replaces existing outputs, skip_existing keeps them: choose one")
        try:
            check_mask_threshold(self.mask_threshold)
        except ValueError as e:
            raise UsageError(str(e)) from None


@dataclasses.dataclass
class JobSummary:
    """What a job did, over all its processes: counts, failures (path, reason) and warnings
    (path, message) in process order, wall seconds (this process's, until every process had
    finished)."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    warnings: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    processes: int = 1
    process: int = 0  # this process's index
    left_out: list[str] = dataclasses.field(default_factory=list)  # the output folder, inside the input folder

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def headline(self) -> str:
        skipped = f", {self.skipped} skipped (outputs complete)" if self.skipped else ""
        over = f" over {self.processes} processes" if self.processes > 1 else ""
        return (f"{self.done} done, {len(self.failures)} failed{skipped} in {self.seconds:.1f} s "
                f"({self.images_per_second:.3g} images/s){over}")

    def __str__(self) -> str:
        return "\n".join([self.headline()] + [f"  {printable(path)}: {printable(reason)}"
                                              for path, reason in self.failures]
                         + [f"  left out {printable(path)}: the output folder, inside the input folder"
                            for path in self.left_out])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobSummary:
        fields = json.loads(text)
        return cls(**{**fields, "failures": [tuple(f) for f in fields["failures"]],
                      "warnings": [tuple(w) for w in fields["warnings"]]})


class Terminated(KeyboardInterrupt):
    """SIGTERM (raised by the handler `jax-refine inpaint` installs): stops a job as Ctrl-C does."""


class JobInterrupted(KeyboardInterrupt):
    """A job stopped by Ctrl-C (KeyboardInterrupt) or SIGTERM (`Terminated`) after it began
    its items: the writes in progress were finished or removed, `summary` is what this
    process did until then, `terminated` whether SIGTERM stopped it."""

    def __init__(self, summary: JobSummary, terminated: bool):
        super().__init__("terminated" if terminated else "interrupted")
        self.summary, self.terminated = summary, terminated


# --------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------


def inpaint_files(source, output, mask=None, *, model=None, settings: JobSettings | None = None,
                  image_suffixes=None, keep_ext: bool = False, distributed: bool = False,
                  coordinator: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, verbose: bool = False) -> JobSummary:
    """Inpaint image files, as `jax-refine inpaint` does (its modes and options, same names).

    Args:
      source, mask, output: IMAGE MASK OUT, or DIR (LaMa layout, mask None) OUTDIR, or
        IMAGEDIR MASKDIR OUTDIR, or IMAGEDIR MASK OUTDIR (see `files.find_items`).
      model: as `inpaint`.
      settings: how to inpaint and write (`JobSettings`; default: `JobSettings()`, refining
        with the model's recommended settings).
      image_suffixes, keep_ext: the LaMa layout's image suffixes; IMAGEDIR modes keep the
        input's extension.
      distributed: split the work over the processes of `jax.distributed`, initialised here
        (before any JAX computation) unless it already is: cluster auto-detected (Cloud TPU,
        SLURM, Open MPI, ...) or from coordinator ("host:port" of process 0),
        num_processes and process_id. Every process must call this with the same arguments.
      verbose: progress and per-item lines on stderr (bars on a terminal).

    Returns the `JobSummary` of the whole job (every process gets the same counts). Raises
    UsageError for arguments that make no job, TypeError for settings that are not a
    JobSettings or a settings.config that is not a RefineConfig; a bad item fails alone (summary.failures). Ctrl-C once the items began
    raises `JobInterrupted` (a KeyboardInterrupt) with the summary so far, after the writes in
    progress finished.
    """
    settings = JobSettings() if settings is None else settings
    if not isinstance(settings, JobSettings):
        raise TypeError(f"settings must be a JobSettings, got {type(settings).__name__}")
    check_arguments(config=settings.config)
    if distributed:
        start_distributed(coordinator, num_processes, process_id)
    items, shared_mask, mode, left_out = find_items(source, mask, output, image_suffixes, keep_ext)
    model = resolve_model(model) if any(item.problem is None for item in items) else None
    settings = dataclasses.replace(settings, config=resolve_config(model, settings.config))
    return run_items(items, model, settings, shared_mask=shared_mask, distributed=distributed, verbose=verbose,
                     report_folder=None if mode == "single" else Path(output), outer_bar=mode != "single",
                     left_out=left_out)


def start_distributed(coordinator: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None) -> None:
    """`jax.distributed.initialize` unless already done; UsageError when it cannot start."""
    import jax

    if jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"cannot start jax.distributed: {e} (no cluster was detected: give the coordinator "
                         "host:port of process 0, the number of processes and this process's id, e.g. "
                         "--coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0)") from None


# --------------------------------------------------------------------------------------
# Planning: batches and the split over processes
# --------------------------------------------------------------------------------------


def _sizes(items: list[Item]) -> dict[int, tuple[int, int]]:
    """{index: (h, w)} from the headers (read on worker threads); an unreadable one makes its
    item a problem."""
    def size(item):
        try:
            return item_size(item)
        except ItemError as e:
            if item.problem is None:
                item.problem, item.problem_path = e.reason, e.path
            return None

    with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
        return {i: s for i, s in enumerate(pool.map(size, items)) if s is not None}


def plan_batches(items: list[Item], sizes: dict[int, tuple[int, int]], settings: JobSettings,
                 model) -> list[list[int]]:
    """Item indices in batches: problem items one each, first; then up to batch_size items of
    one `batch_key` (in order of first appearance)."""
    buckets: dict[tuple, list[int]] = {}
    for index in sizes:
        buckets.setdefault(batch_key(sizes[index], settings.method, model, settings.config), []).append(index)
    problems = [[index] for index in range(len(items)) if index not in sizes]
    return problems + [bucket[start:start + settings.batch_size]
                       for bucket in buckets.values() for start in range(0, len(bucket), settings.batch_size)]


def split(weights: list[int], processes: int) -> list[int]:
    """The process of each batch: heaviest first to the least loaded process (ties: the
    lower batch and process index), a deterministic greedy balance of the total weight."""
    loads = [(0, p) for p in range(processes)]
    owners = [0] * len(weights)
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, owner = heapq.heappop(loads)
        owners[index] = owner
        heapq.heappush(loads, (load + weights[index], owner))
    return owners


def _fingerprint(items: list[Item], sizes, batches) -> str:
    """A digest of the plan (items, outputs, sizes, batches): every process must find the same."""
    digest = hashlib.sha256()
    for batch in batches:
        for index in batch:
            item = items[index]
            digest.update(f"{item.name}\0{item.output}\0{sizes.get(index)}\n".encode("utf-8", "surrogateescape"))
        digest.update(b"\1")
    return digest.hexdigest()


def job_id(settings: JobSettings, output) -> str:
    """What names a job in the processes' key-value store, the same on every host that runs
    the same command: a digest of its settings and its output (folder), even where the hosts
    see different input files (so that they can find out)."""
    return hashlib.sha256(f"{settings!r}\0{output}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


class _Group:
    """This process's place in a job: its index, the process count and, with several
    processes, the coordination service's key-value store of jax.distributed (through which
    the processes compare their plans and share their summaries). The keys of a job are
    `jax_refine/<job_id>/<n>/`, n counting this process's runs of that job in the store itself,
    so the n-th run of a job on one host meets the n-th run of it on the others, whatever
    other jobs each host ran."""

    def __init__(self, distributed: bool, job: str):
        import jax

        self.index, self.count = (jax.process_index(), jax.process_count()) if distributed else (0, 1)
        self.client = None
        if self.count > 1:
            self.client = coordination_client()
            run = self.client.key_value_increment(f"jax_refine/{job}/runs/{self.index}", 1)
            self.prefix = f"jax_refine/{job}/{run}/"

    def _all(self, name: str, value: str, timeout_s: float | None = None) -> list[str]:
        """`value` of every process for `name`, in process order; waits for all of them (at
        most timeout_s), and raises UsageError when a process stopped the job (`abort`)."""
        self.client.key_value_set(f"{self.prefix}{name}/{self.index}", value)
        start, values = time.monotonic(), []
        for i in range(self.count):
            while True:
                try:
                    values.append(self.client.blocking_key_value_get(f"{self.prefix}{name}/{i}", _POLL_MS))
                    break
                except RuntimeError as e:  # JaxRuntimeError: DEADLINE_EXCEEDED when not there yet
                    if "DEADLINE_EXCEEDED" not in str(e):
                        raise
                stopped = self.client.key_value_dir_get(f"{self.prefix}abort/")
                if stopped:
                    raise UsageError(f"the job stopped: {stopped[0][1]}")
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise UsageError(f"process {i} did not plan the job within {timeout_s:.0f} s of process "
                                     f"{self.index} (see its output: did it fail to start?)")
        return values

    def abort(self, reason: str) -> None:
        """Tell the other processes that this one stopped the job (they stop waiting for it)."""
        if self.client is not None:
            with contextlib.suppress(RuntimeError):  # the coordination service may be gone already
                self.client.key_value_set(f"{self.prefix}abort/{self.index}", f"process {self.index}: {reason}")

    def agree(self, fingerprint: str) -> None:
        """UsageError unless every process planned the same job."""
        if self.client is None:
            return
        differ = [i for i, other in enumerate(self._all("plan", fingerprint, START_TIMEOUT_S)) if other != fingerprint]
        if differ:
            raise UsageError(f"process {self.index} found other work than process(es) "
                             f"{', '.join(map(str, differ))}: every host must see the same input files, "
                             "unchanged during the job")

    def combine(self, own: JobSummary, start: float) -> JobSummary:
        """The summary of every process's items; seconds from `start` until all finished."""
        if self.client is None:
            return dataclasses.replace(own, seconds=time.perf_counter() - start)
        parts = [JobSummary.from_json(text) for text in self._all("summary", own.to_json())]
        return JobSummary(sum(p.done for p in parts), sum(p.skipped for p in parts),
                          [f for p in parts for f in p.failures], [w for p in parts for w in p.warnings],
                          time.perf_counter() - start, self.count, self.index, own.left_out)


# --------------------------------------------------------------------------------------
# Running one process's share
# --------------------------------------------------------------------------------------


def run_items(items: list[Item], model, settings: JobSettings, *, shared_mask: Path | None = None,
              distributed: bool = False, verbose: bool = False, report_folder: Path | None = None,
              outer_bar: bool = True, left_out=()) -> JobSummary:
    """Inpaint `items` (see the module docstring); `model` a `contract.Generator` (None when
    every item already has a problem); left_out: folders discovery left out (`files.Found`),
    named in the summary. Returns the whole job's summary; Ctrl-C or SIGTERM once the items
    began raise `JobInterrupted`."""
    start = time.perf_counter()
    if model is not None and settings.method == "refine" and settings.config.modulo % model.config.modulo:
        raise UsageError(f"modulo {settings.config.modulo} must be a multiple of the model's {model.config.modulo}")
    check_outputs(items, [shared_mask] if shared_mask is not None else [])
    mask_image = None
    if shared_mask is not None:
        try:
            mask_image = open_image(shared_mask, "mask")
        except ItemError as e:
            raise UsageError(str(e)) from None
    output = report_folder if report_folder is not None or not items else items[0].output
    group = _Group(distributed, job_id(settings, output))
    try:
        own = _run_share(items, model, settings, mask_image, group, start, verbose, report_folder, outer_bar,
                         distributed, left_out)
    except BaseException as e:
        group.abort(f"{type(e).__name__}: {e}")
        raise
    return group.combine(own, start)


def _run_share(items: list[Item], model, settings: JobSettings, mask_image, group: _Group, start: float,
               verbose: bool, report_folder: Path | None, outer_bar: bool, distributed: bool,
               left_out) -> JobSummary:
    """This process's part of `run_items`: plan, split, resume, run; its own summary."""
    sizes = _sizes(items)
    batches = plan_batches(items, sizes, settings, model)
    group.agree(_fingerprint(items, sizes, batches))
    weights = [sum(sizes[i][0] * sizes[i][1] for i in batch if i in sizes) for batch in batches]
    mine = [batch for batch, owner in zip(batches, split(weights, group.count)) if owner == group.index]
    prefix = f"[process {group.index}/{group.count}] " if group.count > 1 else ""
    reporter = Reporter(sum(map(len, mine)), verbose=verbose, outer_bar=outer_bar, prefix=prefix)
    outputs = [items[i].output for batch in mine for i in batch if items[i].output is not None]
    removed = remove_stale_partials(outputs + [_plot_path(output) for output in outputs])
    if removed:
        reporter.note(f"removed {len(removed)} temporary file(s) an interrupted run left: "
                      + ", ".join(map(str, removed[:3])) + (" ..." if len(removed) > 3 else ""))
    try:
        mine = [[items[i] for i in batch] for batch in _resume(mine, items, sizes, settings, reporter)]
        with warnings.catch_warnings():  # said per item by the reporter instead
            warnings.simplefilter("ignore", LargeHoleWarning)
            _Runner(settings, model, mask_image, reporter).run(mine)
    except KeyboardInterrupt as e:  # the pool finished the writes in progress (or they removed their files)
        raise JobInterrupted(reporter.summary(time.perf_counter() - start, group.count, group.index, left_out),
                             isinstance(e, Terminated)) from None
    finally:
        reporter.close()
    own = reporter.summary(time.perf_counter() - start, group.count, group.index, left_out)
    if group.count > 1:
        reporter.note(f"this process: {own.headline()}")
    if distributed and report_folder is not None:
        _write_report(report_folder / ".jax-refine" / f"process-{group.index}-of-{group.count}.json", reporter, own)
    return own


def _resume(batches: list[list[int]], items: list[Item], sizes, settings: JobSettings,
            reporter: Reporter) -> list[list[int]]:
    """The batches without the items whose complete output is kept (skip_existing); an
    existing output without overwrite or skip_existing makes its item a problem."""
    def keep(index) -> bool:
        item = items[index]
        if item.problem is not None or not os.path.lexists(item.output) or settings.overwrite:
            return True
        if not settings.skip_existing:
            item.problem = (f"output {item.output} exists (pass --skip-existing to keep it or --overwrite "
                            "to replace it)")
            return True
        h, w = sizes[index]
        if settings.method == "refine" and not settings.config.full_size_output:
            h, w = budget_size(h, w, settings.config.px_budget)
        if output_complete(item.output, (h, w)):
            return False
        reporter.note(f"{item.output} is not a complete result of this item: inpainting it again")
        return True

    flat = [index for batch in batches for index in batch]
    with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
        kept = dict(zip(flat, pool.map(keep, flat)))
    if len(flat) > sum(kept.values()):
        reporter.skipped(len(flat) - sum(kept.values()))
    return [batch for batch in ([index for index in batch if kept[index]] for batch in batches) if batch]


def _plot_path(output: Path) -> Path:
    return output.with_name(output.name + REPORT_PLOT_SUFFIX)


def _write_report(path: Path, reporter: Reporter, own: JobSummary) -> None:
    """This process's report (JSON, written atomically): its summary and every output written."""
    record = dict(dataclasses.asdict(own), written=[str(p) for p in reporter.written])
    try:
        write_atomic(path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    except OSError as e:
        reporter.note(f"cannot write the report {path}: {e}")


class _Runner:
    """One process's batches: opened and written on worker threads, inpainted on the calling
    thread (the devices), each item's success or failure reported."""

    def __init__(self, settings: JobSettings, model, shared_mask, reporter: Reporter):
        import jax

        self.settings, self.model, self.shared_mask, self.reporter = settings, model, shared_mask, reporter
        self.devices = jax.local_devices() if settings.batch_size > 1 else None

    def run(self, batches: list[list[Item]]) -> None:
        """The pipeline: PREFETCH batches opening ahead, WRITE_BEHIND batches writing behind."""
        pending = iter(batches)
        with concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="jax-refine-io") as pool:
            ahead, behind = collections.deque(), collections.deque()

            def open_next():
                batch = next(pending, None)
                if batch is not None:
                    ahead.append([pool.submit(self.open, item) for item in batch])

            try:
                for _ in range(PREFETCH + 1):
                    open_next()
                while ahead:
                    opened = [x for x in (f.result() for f in ahead.popleft()) if x is not None]
                    open_next()
                    behind.append([pool.submit(self.write, *done) for done in self.compute(opened)])
                    while len(behind) > WRITE_BEHIND:
                        _wait(behind.popleft())
                while behind:
                    _wait(behind.popleft())
            except BaseException:
                for futures in itertools.chain(ahead, behind):
                    for future in futures:
                        future.cancel()
                raise

    def open(self, item: Item):
        """(item, image, mask), or None when it cannot be opened (reported)."""
        try:
            if item.problem is not None:
                raise item.error()
            image = open_image(item.image)
            mask = self.shared_mask if item.mask is None else open_image(item.mask, "mask")
        except ItemError as e:
            self.reporter.failed(e.path, e.reason)
            return None
        return item, image, mask

    def compute(self, opened: list[tuple]) -> list[tuple]:
        """Inpaint opened items together; (item, result, info, seconds) of each that
        succeeded. A batch that fails is retried image by image, so one bad image fails alone."""
        if not opened:
            return []
        if self.settings.batch_size == 1:
            return [done for done in [self._one(*opened[0])] if done is not None]
        start = time.perf_counter()
        try:
            results, infos = inpaint_batch_with_info([image for _, image, _ in opened], [mask for *_, mask in opened],
                                                     self.model, method=self.settings.method,
                                                     config=self.settings.config, devices=self.devices,
                                                     batch_size=len(opened), progress=self.reporter.progress_callback(),
                                                     mask_threshold=self.settings.mask_threshold)
        except Exception:  # noqa: BLE001 - find the culprit image by image
            self.reporter.computed()
            return [done for done in (self._one(*x) for x in opened) if done is not None]
        self.reporter.computed()
        seconds = (time.perf_counter() - start) / len(opened)
        return [(item, result, info, seconds) for (item, _, _), result, info in zip(opened, results, infos)]

    def _one(self, item: Item, image, mask):
        start = time.perf_counter()
        try:
            result, info = inpaint_with_info(image, mask, self.model, method=self.settings.method,
                                             config=self.settings.config, progress=self.reporter.progress_callback(),
                                             crop_margin=self.settings.crop_margin,
                                             mask_threshold=self.settings.mask_threshold)
        except ValueError as e:  # size mismatch, unsupported image kind
            self.reporter.failed(item.image, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on a huge image: skip it, go on
            self.reporter.failed(item.image, f"inpainting failed: {type(e).__name__}: {e}")
            return None
        finally:
            self.reporter.computed()
        return item, result, info, time.perf_counter() - start

    def write(self, item: Item, result, info, seconds: float) -> None:
        """Write one result atomically (and its report plot), and report it."""
        try:
            lost = save_atomic(result, item.output, item.image)
        except UsageError as e:  # no writer for this extension (--keep-ext)
            self.reporter.failed(item.output, str(e).split(": ", 1)[-1])
            return
        except OSError as e:  # disk full, I/O error, permissions, a folder in the way, ...
            self.reporter.failed(item.output, f"cannot write: {e.strerror or e}")
            return
        except Exception as e:  # noqa: BLE001 - an encoder's own error
            self.reporter.failed(item.output, f"cannot write: {e}")
            return
        self.reporter.succeeded(item, seconds)
        for message in lost:  # what the output's format cannot keep of the input
            self.reporter.warned(item.output, message)
        if info.hole_fraction > MAX_HOLE_FRACTION:
            self.reporter.warned(item.name, f"the hole covers {100 * info.hole_fraction:.1f} % of the image "
                                 "(LaMa fills holes of up to about half the image): is the mask inverted, "
                                 "or grey or lossy (see the mask threshold option)?")
        if self.settings.report:
            self.reporter.report(item, info)
        if self.settings.report_plot and info.scales:
            try:
                report_plot(info, _plot_path(item.output))
            except OSError as e:
                self.reporter.failed(item.output, f"cannot write the report plot: {e}")


def _wait(futures) -> None:
    for future in futures:
        future.result()


# --------------------------------------------------------------------------------------
# Progress and reports
# --------------------------------------------------------------------------------------


def _use_bars() -> bool:
    """Progress bars only on a terminal; logs get one line per item instead."""
    return sys.stderr.isatty()


class Reporter:
    """One process's progress when verbose (tqdm bars on a terminal, else one line per item;
    failures, warnings and notes; on stderr) and the counts of its summary. Thread-safe."""

    def __init__(self, total: int, *, verbose: bool, outer_bar: bool, prefix: str = ""):
        self.total, self.verbose, self.prefix = total, verbose, prefix
        self.bars = verbose and _use_bars()
        self.done, self.skipped_count, self.failures, self.warnings, self.written = 0, 0, [], [], []
        self.outer = self.inner = None
        self._scale = None  # (scale, last iteration, n_iters) of the refined scale in progress
        self._lock = threading.RLock()
        if self.bars:
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            if outer_bar:
                self.outer = tqdm(total=total, unit="img", desc="images", file=sys.stderr, dynamic_ncols=True)

    def _write(self, line):
        line = printable(line)
        with self._lock:
            if self.bars:
                self._tqdm.write(self.prefix + line, file=sys.stderr)
            else:
                print(self.prefix + line, file=sys.stderr, flush=True)

    def note(self, line):
        if self.verbose:
            self._write(line)

    def progress_callback(self):
        """The `progress=` callable for one inpaint call (None without bars); the inner bar
        over the refined iterations lives until `computed`."""
        if not self.bars:
            return None

        def callback(event):
            with self._lock:
                if self.inner is None:
                    self.inner = self._tqdm(total=(event.n_scales - 1) * event.n_iters, unit="it", leave=False,
                                            file=sys.stderr, dynamic_ncols=True,
                                            position=1 if self.outer is not None else 0)
                if event.iteration is None:
                    self._close_scale()
                    h, w = event.size
                    self.inner.set_description(f"scale {event.scale + 1}/{event.n_scales} {w}x{h}")
                else:
                    self.inner.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
                    self.inner.update(1)
                    self._scale = (event.scale, event.iteration, event.n_iters)

        return callback

    def _close_scale(self):
        """A scale that stopped early (RefineConfig.early_stop): say so and complete its part of the bar."""
        if self._scale is not None and self._scale[1] < self._scale[2]:
            scale, used, n_iters = self._scale
            self._write(f"scale {scale + 1}: stopped early after {used} of {n_iters} iterations")
            self.inner.update(n_iters - used)
        self._scale = None

    def computed(self):
        """The devices finished an inpaint call: close its inner bar."""
        with self._lock:
            if self.inner is not None:
                self._close_scale()
                self.inner.close()
                self.inner = None

    def succeeded(self, item: Item, seconds: float):
        with self._lock:
            self.done += 1
            self.written.append(item.output)
            if self.outer is not None:
                self.outer.update(1)
            elif self.verbose and not self.bars:
                count = self.done + len(self.failures) + self.skipped_count
                self._write(f"[{count}/{self.total}] {item.output} ({seconds:.1f} s)")

    def failed(self, path, reason):
        with self._lock:
            self.failures.append((str(path), reason))
            if self.outer is not None:
                self.outer.update(1)
            self.note(f"failed: {path}: {reason}")

    def warned(self, path, message):
        with self._lock:
            self.warnings.append((str(path), message))
            self.note(f"warning: {path}: {message}")

    def skipped(self, count: int):
        with self._lock:
            self.skipped_count += count
            if self.outer is not None:
                self.outer.update(count)
            self.note(f"skipping {count} item(s) whose outputs are complete (--skip-existing)")

    def report(self, item: Item, info):
        """The refinement report of one image (stdout)."""
        with self._lock:
            print(f"{printable(item.output)}: {format_report(info)}", flush=True)

    def close(self):
        with self._lock:
            for bar in (self.inner, self.outer):
                if bar is not None:
                    bar.close()
            self.inner = self.outer = None

    def summary(self, seconds: float, processes: int, process: int, left_out=()) -> JobSummary:
        with self._lock:
            return JobSummary(self.done, self.skipped_count, list(self.failures), list(self.warnings), seconds,
                              processes, process, [str(path) for path in left_out])


def format_report(info) -> str:
    """Multi-line text of an InpaintInfo: per scale its size, iterations, losses and time."""
    if not info.refined:
        return "plain prediction (no refinement)"
    lines = [f"refined at {info.work_size[1]}x{info.work_size[0]}, {len(info.scales)} scale(s)"]
    for index, scale in enumerate(info.scales):
        head = f"  scale {index + 1}: {scale.size[1]}x{scale.size[0]}, {scale.seconds:.1f} s"
        if not scale.refined:
            lines.append(head + ", plain forward pass")
            continue
        curve = " ".join(f"{loss:.4f}" for loss in scale.losses.mean(axis=1))
        lines.append(f"{head}, {scale.iterations} iterations, loss {curve}")
    return "\n".join(lines)


def report_plot(info, path: Path) -> None:
    """Save the loss curve of every refined scale as a PNG (matplotlib without pyplot, so
    worker threads may draw; written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, scale in enumerate(info.scales):
        if scale.refined:
            ax.plot(range(1, scale.iterations + 1), scale.losses.mean(axis=1), marker="o",
                    label=f"scale {index + 1} ({scale.size[1]}x{scale.size[0]}, {scale.seconds:.1f} s)")
    ax.set_xlabel("forward pass")
    ax.set_ylabel("refinement loss")
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
