"""Train the bundled default model: the loop, validation, export and the command line.

    python -m training --out runs/default                    # fetch the photos, train, export
    python -m training --out runs/default --resume           # continue an interrupted run
    python -m training --out runs/leg2 --init weights/default # continue from the committed weights
    python -m training --benchmark 8                         # time 8 steps, write nothing

See training/README.md for the run that made weights/default.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import jax
from flax import nnx

import jax_refine
from jax_refine.model import count_parameters
from jax_refine.prior import pull_push

from . import checkpoints, data, sources
from .steps import TrainConfig, abstract_state, init_state, make_eval, make_train_step, uses_r1

REWARM_STEPS = 100  # learning-rate warm-up of a fresh optimiser on --init weights


def learning_rate(cfg: TrainConfig, progress: float) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup of the schedule, then cosine decay to cfg.lr / 100."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < cfg.warmup:
        return cfg.lr * (0.01 + 0.99 * progress / cfg.warmup)
    t = (progress - cfg.warmup) / (1 - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


class Log:
    """log.jsonl: one JSON object per line (event, wall time, fields)."""

    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)

    def __call__(self, event: str, **fields):
        record = {"event": event, "time": round(time.time(), 1), **fields}
        self.file.write(json.dumps(record, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.generic, jax.Array)):
        return round(float(x), 6)
    raise TypeError(type(x))


def settings(args) -> TrainConfig:
    """The run's TrainConfig: config.json when resuming (conflicting options are an error),
    otherwise the defaults overridden by the command line."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    config_file = args.out / "config.json"
    if args.resume:
        if not config_file.is_file():
            raise SystemExit(f"--resume: {config_file} not found")
        saved = TrainConfig(**json.loads(config_file.read_text()))
        conflicts = {k: (v, getattr(saved, k)) for k, v in given.items() if getattr(saved, k) != v}
        if conflicts:
            raise SystemExit("--resume: options differ from the run's config.json: "
                             + ", ".join(f"--{k.replace('_', '-')} {v} (run: {s})" for k, (v, s) in conflicts.items()))
        return saved
    if config_file.is_file():
        raise SystemExit(f"{args.out} already holds a run: pass --resume to continue it, or choose another --out")
    if "schedule_minutes" not in given and "steps" not in given:
        # training time excludes startup, compilation, validation and checkpoints
        given["schedule_minutes"] = round(max(args.minutes - 3, 0.75 * args.minutes), 2)
    return TrainConfig(**given)


def _initial_weights(path: Path, cfg: TrainConfig):
    """(generator, meta) from an exported model: its weights, and where its run's schedule was."""
    model = jax_refine.load(path)
    if model.config != cfg.model_config():
        raise SystemExit(f"--init {path}: its model {model.config} is not this run's {cfg.model_config()}")
    source = json.loads((path / "jax_refine.json").read_text()).get("source", {})
    meta = {"step": int(source.get("step", 0)), "train_seconds": float(source.get("train_seconds", 0.0)),
            "init": str(path), "init_step": int(source.get("step", 0))}
    return model, meta


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


class Validation:
    """Hole PSNR of the held-out photos at every VAL_SIZES size and mask kind, and of the
    pull-push prior alone (the model's starting point) for comparison."""

    def __init__(self, photos, g_graphdef, log: Log):
        self.cases = {size: data.validation_cases(photos, size) for size in data.VAL_SIZES}
        self.evaluate = make_eval(g_graphdef)
        prior = {}
        for size, kinds in self.cases.items():
            for kind, (images, masks) in kinds.items():
                fill = np.clip(np.asarray(jax.jit(pull_push)(images, masks)), 0, 1)
                mse = ((fill - images) ** 2 * masks).sum((1, 2, 3)) / (masks.sum((1, 2, 3)) * 3)
                prior[f"{size[1]}/{kind}"] = round(float(np.mean(-10 * np.log10(mse))), 3)
        log("prior", **prior)

    def __call__(self, g_params, g_stats, samples: Path | None = None) -> dict:
        scores, shown = {}, []
        for size, kinds in self.cases.items():
            for kind, (images, masks) in kinds.items():
                psnr, comp = self.evaluate(g_params, g_stats, images, masks)
                scores[f"{size[1]}/{kind}"] = round(float(np.mean(psnr)), 3)
                if size == data.VAL_SIZES[0]:
                    shown.append(save_grid_rows(images[:2], masks[:2], np.asarray(comp)[:2]))
            scores[f"{size[1]}/all"] = round(float(np.mean([scores[f"{size[1]}/{k}"] for k in kinds])), 3)
        if samples is not None:
            from PIL import Image

            samples.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate(shown)).save(samples)
        return scores


def save_grid_rows(images, masks, comps) -> np.ndarray:
    """uint8 rows: masked input (holes white) | fill | target, one row per image."""
    rows = [np.concatenate([img * (1 - m) + m, c, img], axis=1) for img, m, c in zip(images, masks, comps)]
    return (np.clip(np.concatenate(rows), 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def train(args) -> int:
    start_wall = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_xla_cache:  # a resumed run skips recompiling the steps
        jax_refine.enable_compilation_cache(args.out / "xla_cache")
    cfg = settings(args)
    manifest = sources.prepare(args.data) if args.fetch else sources.read_manifest(args.data)
    log = Log(args.out / "log.jsonl")
    config_file = args.out / "config.json"
    if not config_file.is_file():
        config_file.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    if args.resume:
        found = checkpoints.found(args.out)
        if not found:
            raise SystemExit(f"--resume: no checkpoint in {args.out}")
        g_graphdef, d_graphdef, template = abstract_state(cfg)
        state, meta = checkpoints.load(found[-1], template)
        print(f"resumed {found[-1].name}: step {meta['step']}, {meta['train_seconds'] / 60:.1f} min trained")
    elif args.init:
        generator, meta = _initial_weights(args.init, cfg)
        g_graphdef, d_graphdef, state = init_state(cfg, generator)
        print(f"initialised from {args.init} (step {meta['step']}); fresh optimiser, {REWARM_STEPS} warm-up steps")
    else:
        g_graphdef, d_graphdef, state = init_state(cfg)
        meta = {"step": 0, "train_seconds": 0.0}
    params = count_parameters(nnx.merge(g_graphdef, state["g_params"], state["g_stats"]))
    log("start", resume=bool(args.resume), init=str(args.init) if args.init else None, step=meta["step"],
        params=params, config=dataclasses.asdict(cfg), minutes=args.minutes, jax=jax.__version__)
    print(f"generator: {params:,} parameters ({params * 4 / 2**20:.1f} MiB float32), {cfg.model_config()}")

    validation = Validation(data.load_photos(args.data, manifest, "heldout"), g_graphdef, log)

    def run_validation():
        t = time.perf_counter()
        scores = validation(state["g_params"], state["g_stats"], args.out / "samples" / f"val-{meta['step']:08d}.png")
        log("val", step=meta["step"], seconds=round(time.perf_counter() - t, 1), **scores)
        print(f"  val step {meta['step']}: " + "  ".join(f"{k} {v:.2f}" for k, v in scores.items() if "all" in k))
        meta["val"] = scores

    def checkpoint():
        """The full training state (for --resume) and the exported generator (for --init on
        another machine, see training/README.md)."""
        t = time.perf_counter()
        dst = checkpoints.save(args.out, state, dict(meta, seed=cfg.seed, images_seen=meta["step"] * cfg.batch))
        export(args.export or args.out / "export", g_graphdef, state, cfg, meta, manifest)
        log("checkpoint", step=meta["step"], path=dst.name, seconds=round(time.perf_counter() - t, 1))
        return time.perf_counter() - t

    stop = {"signal": None}
    previous = {s: signal.signal(s, lambda signum, _: stop.update(signal=signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.minutes > 0:
            batches = data.Batches(data.load_photos(args.data, manifest, "train"), crop=cfg.crop, batch=cfg.batch,
                                   seed=cfg.seed, start=meta["step"])
            try:
                _loop(args, cfg, state, meta, batches, make_train_step(g_graphdef, d_graphdef, cfg),
                      run_validation, checkpoint, log, stop, start_wall)
            finally:
                batches.close()
        else:
            run_validation()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    dst = export(args.export or args.out / "export", g_graphdef, state, cfg, meta, manifest)
    log("export", step=meta["step"], path=os.path.relpath(dst, args.out))  # no machine's path in the log
    print(f"exported {dst} (step {meta['step']}, {meta['step'] * cfg.batch:,} images)")
    return 0


def _progress(cfg: TrainConfig, meta: dict) -> float:
    return meta["step"] / cfg.steps if cfg.steps else meta["train_seconds"] / (60 * cfg.schedule_minutes)


def _loop(args, cfg, state, meta, batches, step_fn, run_validation, checkpoint, log, stop, start_wall):
    run_validation()  # the baseline; compiles the evaluation before the clock matters
    last_ckpt = last_val = time.monotonic()
    reserve = 60.0  # seconds kept for the final validation, checkpoint and export; re-measured below
    window = {"n": 0, "t": 0.0, "wait": 0.0, "losses": {}}
    compiled = set()  # step variants (with / without the R1 penalty) compiled so far
    budget = args.minutes * 60
    while True:
        if stop["signal"] is not None:
            print(f"signal {stop['signal']}: saving and stopping")
            break
        if (cfg.steps and meta["step"] >= cfg.steps) or time.monotonic() - start_wall + reserve >= budget:
            break
        index, (images, masks), wait = batches.next()
        assert index == meta["step"], (index, meta["step"])
        p = _progress(cfg, meta)
        lr = learning_rate(cfg, p)
        if "init_step" in meta:  # a fresh optimiser on trained weights warms up again
            lr *= min(1.0, (meta["step"] - meta["init_step"] + 1) / REWARM_STEPS)
        adv_on = np.float32(cfg.w_adv > 0 and p >= cfg.adv_start)
        with_r1 = uses_r1(cfg, meta["step"])
        t = time.perf_counter()
        new_state, losses = step_fn(state, images, masks, np.float32(lr), adv_on, with_r1=with_r1)
        losses = jax.device_get(losses)
        seconds = time.perf_counter() - t
        state.update(new_state)
        meta["step"] += 1
        if with_r1 not in compiled:  # compilation is not training time
            compiled.add(with_r1)
            log("compiled", step=meta["step"], r1=with_r1, seconds=round(seconds, 1))
            print(f"compiled and ran step {meta['step']} in {seconds:.1f} s")
            last_ckpt, last_val = last_ckpt + seconds, last_val + seconds
            continue
        if not all(np.isfinite(v) for v in losses.values()):
            log("nonfinite", step=meta["step"], **losses)
            raise SystemExit(f"non-finite loss at step {meta['step']}: {losses}")
        meta["train_seconds"] += seconds + wait
        window["n"] += 1
        window["t"] += seconds + wait
        window["wait"] += wait
        for k, v in losses.items():
            window["losses"][k] = window["losses"].get(k, 0.0) + float(v)
        if window["n"] == args.log_every:
            mean = {k: round(v / window["n"], 5) for k, v in window["losses"].items()}
            ips = window["n"] * cfg.batch / window["t"]
            log("train", step=meta["step"], wall=round(time.monotonic() - start_wall, 1),
                train_seconds=round(meta["train_seconds"], 1), lr=lr, progress=round(p, 4),
                images_per_s=round(ips, 2), data_wait_s=round(window["wait"] / window["n"], 3), **mean)
            print(f"step {meta['step']:6d}  {ips:5.2f} img/s  lr {lr:.2e}  total {mean['total']:.4f}  "
                  f"l1_hole {mean['l1_hole']:.4f}  grad {mean['grad']:.4f}", flush=True)
            window = {"n": 0, "t": 0.0, "wait": 0.0, "losses": {}}
        now = time.monotonic()
        if now - last_val >= args.val_minutes * 60:
            t = time.perf_counter()
            run_validation()
            last_val = time.monotonic()
            reserve = max(reserve, 2 * (time.perf_counter() - t) + 30)
        if now - last_ckpt >= args.checkpoint_minutes * 60:
            reserve = max(reserve, 2 * checkpoint() + 30)
            last_ckpt = time.monotonic()
    run_validation()
    checkpoint()


def export(dst: Path, g_graphdef, state, cfg: TrainConfig, meta: dict, manifest: dict) -> Path:
    """Write the generator as a jax-refine checkpoint (float32, running BatchNorm statistics)."""
    model = nnx.merge(g_graphdef, state["g_params"], state["g_stats"])
    source = {
        "trained_by": f"training (jax-refine {jax_refine.__version__})",
        "config": dataclasses.asdict(cfg),
        "step": meta["step"], "images_seen": meta["step"] * cfg.batch,
        "train_seconds": round(meta["train_seconds"], 1),
        "init": meta.get("init"),
        "validation": meta.get("val"),
        "train_photos": [p["name"] for p in manifest["photos"] if p["split"] == "train"],
        "heldout_photos": [p["name"] for p in manifest["photos"] if p["split"] == "heldout"],
        "data_licenses": sorted({f"{p['source']} {p['version']}: {p['license']}" for p in manifest["photos"]}),
        "manifest_sha256": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
    }
    return jax_refine.save(model, dst, source=source, overwrite=True)


def benchmark(args) -> int:
    """Time training steps of a configuration (no files written)."""
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                         if getattr(args, f.name, None) is not None})
    photos = data.load_photos(args.data, sources.read_manifest(args.data), "train")
    g_graphdef, d_graphdef, state = init_state(cfg)
    step_fn = make_train_step(g_graphdef, d_graphdef, cfg)
    batches = data.Batches(photos, crop=cfg.crop, batch=cfg.batch, seed=cfg.seed, start=0)
    times, waits = [], []
    try:
        for i in range(args.benchmark + 2):  # the first steps compile (with and without R1)
            _, (images, masks), wait = batches.next()
            t = time.perf_counter()
            state, losses = step_fn(state, images, masks, np.float32(cfg.lr), np.float32(1.0), with_r1=uses_r1(cfg, i))
            jax.block_until_ready(losses)
            if i >= 2:
                times.append(time.perf_counter() - t)
                waits.append(wait)
    finally:
        batches.close()
    params = count_parameters(nnx.merge(g_graphdef, state["g_params"], state["g_stats"]))
    print(json.dumps(dict(ngf=cfg.ngf, n_blocks=cfg.n_blocks, crop=cfg.crop, batch=cfg.batch, w_adv=cfg.w_adv,
                          params=params, step_s_mean=round(float(np.mean(times)), 3),
                          step_s_median=round(float(np.median(times)), 3), data_wait_s=round(float(np.mean(waits)), 3),
                          images_per_s=round(cfg.batch / float(np.mean(times)), 2))))
    return 0


def main(argv=None) -> int:
    jax_refine.configure_cpu()  # XLA's fast CPU conv path, before the first JAX computation
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, help="run folder (config, log, checkpoints, samples, export)")
    parser.add_argument("--data", type=Path, default=sources.REPO / "data", help="photo folder (default: %(default)s)")
    parser.add_argument("--no-fetch", dest="fetch", action="store_false",
                        help="use --data as it is (its manifest.json) instead of fetching the sources")
    parser.add_argument("--minutes", type=float, default=240.0,
                        help="wall-clock budget of this invocation, startup and final save included "
                             "(0 with --resume: only validate and export) (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--init", type=Path, help="start from this exported model's weights and schedule position")
    parser.add_argument("--export", type=Path, help="where to write the final model (default: OUT/export)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0, help="(default: %(default)s)")
    parser.add_argument("--val-minutes", type=float, default=15.0, help="(default: %(default)s)")
    parser.add_argument("--log-every", type=int, default=10, help="steps per train log record (default: %(default)s)")
    parser.add_argument("--no-xla-cache", action="store_true", help="do not keep compiled programs in OUT/xla_cache")
    parser.add_argument("--benchmark", type=int, metavar="STEPS", help="only time STEPS training steps and exit")
    defaults = TrainConfig()
    group = parser.add_argument_group("run settings (fixed for a run; saved in config.json)")
    for f in dataclasses.fields(TrainConfig):
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" |")[0]]
        default = getattr(defaults, f.name)
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None,
                           help=f"(default: {default})" if default is not None else None)
    args = parser.parse_args(argv)
    args.data = args.data.absolute()
    if args.benchmark:
        return benchmark(args)
    if args.out is None:
        parser.error("--out is required")
    if args.minutes <= 0 and not args.resume:
        parser.error("--minutes 0 needs --resume (export an existing run)")
    if args.resume and args.init:
        parser.error("--resume and --init exclude each other")
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
