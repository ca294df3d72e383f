"""``lstmkit train TASK``: train an lstmkit.LSTM on a task, with checkpoints, resume and DDP.

    lstmkit train memory
    lstmkit train adding --seq-len 100 --peephole diagonal
    lstmkit train charlm --data input.txt --hidden-size 256 --steps 3000
    lstmkit train --resume runs/charlm-20260101-120000 [--steps 6000]
    torchrun --nproc_per_node 2 -m lstmkit train charlm --data input.txt

Data is a function of (seed, step, rank) and the checkpoint holds the weights, the optimizer, the
RNG states and the carried LSTM state, so a resumed run continues bitwise as if never stopped.
SIGINT and SIGTERM finish the current step, save a checkpoint and exit with 128 + the signal.
Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on
CPU, NCCL on CUDA); each process trains on its own shard and only rank 0 writes the run folder.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, config as cfg, tasks
from .cli import CommandError
from .run import RunDir, build_model, load_weights, resolve_device

USER_ERRORS = (cfg.ConfigError, tasks.TaskError, checkpoint.CheckpointError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False  # a mistyped flag is an error, not a guess
    parser.add_argument("task", nargs="?", help=f"one of: {', '.join(tasks.TASKS)} (not with --resume)")
    parser.add_argument("--config", metavar="FILE.toml", help="settings from a TOML file (flags win)")
    parser.add_argument("--run-dir", metavar="DIR", help="the run folder (default: runs/<task>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: on)")
    cfg.add_arguments(parser, {name: tasks.get(name).defaults for name in tasks.TASKS})


def run(args: argparse.Namespace) -> int:
    try:
        return Trainer.from_args(args).fit()
    except USER_ERRORS as error:
        raise CommandError(str(error)) from None


def learning_rate(config: dict, step: int) -> float:
    """The learning rate of ``step``: linear warmup, then constant, cosine or linear decay to 0."""
    base, warmup, total = config["lr"], config["warmup"], config["steps"]
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if config["schedule"] == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    if config["schedule"] == "linear":
        return base * (1 - progress)
    return base


def make_optimizer(config: dict, params) -> torch.optim.Optimizer:
    lr, decay = config["lr"], config["weight_decay"]
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config["momentum"], weight_decay=decay)
    kind = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, weight_decay=decay)


def gather(tensor: torch.Tensor, world_size: int, device: torch.device) -> list[torch.Tensor]:
    """``tensor`` of every process (same shape on all), in rank order, sent through ``device``
    (NCCL moves only CUDA tensors)."""
    if world_size == 1:
        return [tensor]
    tensor = tensor.to(device).contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor)
    return parts


class Trainer:
    """One process of a training run: :meth:`from_args` (the command), :meth:`new` (a new run,
    e.g. from a benchmark script), then :meth:`fit`."""

    def __init__(self, task_name: str, config: dict, run_dir: str, *, resume: dict | None = None,
                 progress: bool = False, lstm_class=None) -> None:
        """``resume``: {"tensors", "meta"} of the checkpoint to continue from and the run's task
        "info"; ``lstm_class``: the LSTM module to build, called with lstmkit.LSTM's arguments
        (default lstmkit.LSTM; e.g. a torch.nn.LSTM factory for a comparison)."""
        self.rank, self.world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.config, self.run_dir, self.progress = config, RunDir(run_dir), progress and self.rank == 0
        self.device = resolve_device(config["device"], int(os.environ.get("LOCAL_RANK", 0)))
        if config["threads"]:
            torch.set_num_threads(config["threads"])
        if config["amp"] != "off" and self.device.type != "cuda":
            raise cfg.ConfigError(f"--amp {config['amp']} needs CUDA; this run is on {self.device.type}")
        info = resume["info"] if resume else None
        self.task = tasks.get(task_name)(config, self.rank, self.world_size, info=info)
        self.task.prepare()
        self.model = self.module = build_model(self.task, config, lstm_class).to(self.device)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.scaler = torch.amp.GradScaler("cuda", enabled=config["amp"] == "fp16")
        self.step, self.elapsed, self.best, self.state, self.shown = 0, 0.0, None, None, {}
        torch.manual_seed(tasks.step_generator(config["seed"], 0, self.rank, "dropout").initial_seed())
        if resume:
            self._restore(resume["tensors"], resume["meta"])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Trainer:
        flags = cfg.given(args)
        file_settings = cfg.read_toml(args.config) if args.config else {}
        if args.resume:
            return cls._resume(args, {k: v for k, v in file_settings.items() if k != "task"} | flags)
        name = args.task or file_settings.get("task")
        if not name:
            raise cfg.ConfigError(f"which task? one of: {', '.join(tasks.TASKS)} (or --resume RUN_DIR)")
        task_class = tasks.get(name)
        config = cfg.resolve(task_class.defaults, file_settings, flags)
        run_dir = args.run_dir or os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
            raise cfg.ConfigError(f"--run-dir {run_dir}: exists and is not empty; resume it with --resume {run_dir}")
        return cls.new(name, config, run_dir, progress=args.progress)

    @classmethod
    def new(cls, task_name: str, config: dict, run_dir: str, **options) -> Trainer:
        """A new run in ``run_dir`` (created by rank 0); ``options`` as for the constructor."""
        trainer = cls(task_name, config, run_dir, **options)
        trainer._start()
        if trainer.rank == 0:
            trainer.run_dir.create(trainer._run_record())
        return trainer

    @classmethod
    def _resume(cls, args: argparse.Namespace, flags: dict) -> Trainer:
        run_dir = RunDir(args.resume)
        run = run_dir.read_config()
        if args.task and args.task != run["task"]:
            raise cfg.ConfigError(f"--resume {args.resume}: the run trains {run['task']!r}, not {args.task!r}")
        if args.run_dir and os.path.abspath(args.run_dir) != os.path.abspath(args.resume):
            raise cfg.ConfigError("--run-dir: a resumed run stays in its folder; leave --run-dir out")
        wrong = cfg.incompatible(run["config"], flags)
        if wrong:
            raise cfg.ConfigError(f"--resume {args.resume}: incompatible settings: {'; '.join(wrong)}")
        world = int(os.environ.get("WORLD_SIZE", 1))
        if run.get("world_size", 1) != world:
            raise cfg.ConfigError(f"--resume {args.resume}: the run used {run.get('world_size', 1)} processes, "
                                  f"this one has {world}")
        tensors, meta = checkpoint.load(run_dir.checkpoint("last"))
        if meta.get("task") != run["task"] or cfg.incompatible(run["config"], meta.get("config", {})):
            raise checkpoint.CheckpointError(f"{run_dir.checkpoint('last')}: belongs to another run")
        config = dict(run["config"], **flags)
        trainer = cls(run["task"], config, args.resume, progress=args.progress,
                      resume={"tensors": tensors, "meta": meta, "info": run.get("info")})
        trainer._start()
        if trainer.rank == 0:
            run_dir.write_json(run_dir.config_file, trainer._run_record())
            run_dir.truncate_metrics(trainer.step)
            for temp in run_dir.checkpoints.glob(".*.tmp"):  # left by a process killed mid-write
                temp.unlink()
        return trainer

    def _run_record(self) -> dict:
        import lstmkit

        return {"task": self.task.name, "config": self.config, "info": self.task.info(),
                "world_size": self.world_size, "lstmkit": lstmkit.__version__, "torch": torch.__version__}

    def _restore(self, tensors: dict, meta: dict) -> None:
        load_weights(self.model, checkpoint.prefixed(tensors, "model"), self.run_dir.checkpoint("last"))
        try:
            self.optimizer.load_state_dict(checkpoint.unflatten_optimizer(tensors, meta["optimizer"]))
            torch.set_rng_state(tensors[f"rng.torch.{self.rank}"])
            if self.device.type == "cuda" and f"rng.cuda.{self.rank}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{self.rank}"], self.device)
            if meta["has_state"]:
                self.state = tuple(tensors[f"state.{k}.{self.rank}"].to(self.device) for k in "hc")
            if meta["scaler"]:
                self.scaler.load_state_dict(meta["scaler"])
            self.step, self.elapsed, self.best = int(meta["step"]), float(meta["elapsed"]), meta["best"]
        except (KeyError, ValueError, TypeError, RuntimeError):
            raise checkpoint.CheckpointError(f"{self.run_dir.checkpoint('last')}: incomplete training state") from None

    def _start(self) -> None:
        """Join the other processes (torchrun) and wrap the model in DDP."""
        if self.world_size > 1:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend)
            self.model = DistributedDataParallel(self.module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def fit(self) -> int:
        """Train to ``config["steps"]``; returns the exit code (0, or 128 + a stopping signal)."""
        config, stop = self.config, []

        def on_signal(signum, _frame):
            if stop:  # a second signal: stop now (the last complete checkpoint stays)
                raise KeyboardInterrupt
            stop.append(signum)

        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = self._progress_bar()
        losses, tokens, clock, started = [], 0, time.perf_counter(), time.perf_counter() - self.elapsed
        try:
            while self.step < config["steps"]:
                loss, step_tokens = self._train_step()
                losses.append(loss)
                tokens += step_tokens
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0:
                        rate = tokens / max(time.perf_counter() - clock, 1e-9)
                        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4g}", tok_s=f"{rate:.3g}",
                                        **self.shown)
                stopping = self._any(bool(stop))
                if self.step % config["eval_every"] == 0 or self.step == config["steps"] or stopping:
                    now = time.perf_counter()
                    self.elapsed = now - started
                    self._report(losses, tokens / max(now - clock, 1e-9), bar)
                    losses, tokens, clock = [], 0, time.perf_counter()
                if stopping:
                    break
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
            if bar is not None:
                bar.close()
            if self.world_size > 1 and sys.exc_info()[0] is None:
                dist.barrier()  # leave together: rank 0 may still be evaluating and writing
                self.model = self.module  # free DDP's reducer before its process group
                dist.destroy_process_group()
        stopped = stop and self.step < config["steps"]
        if self.rank != 0:
            return 128 + stop[0] if stopped else 0
        self.run_dir.plot(self.task.metrics[0])
        if stopped:
            name = signal.Signals(stop[0]).name
            self._say(f"stopped by {name} at step {self.step}; checkpoint saved; continue with: "
                      f"lstmkit train --resume {self.run_dir.path}")
            return 128 + stop[0]
        self._say(f"done: {self.step} steps in {self.elapsed:.1f} s; best validation {self.task.metrics[0]} "
                  f"{self.best:.4g}; run folder {self.run_dir.path}")
        return 0

    def _train_step(self) -> tuple[float, int]:
        config = self.config
        if self.task.stateful and self.task.starts_sequence(self.step):
            self.state = None
        x, y = self.task.train_batch(self.step, config["batch_size"])
        x, y = x.to(self.device), y.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, self.step)
        amp = config["amp"] != "off"
        with torch.autocast("cuda", dtype=torch.bfloat16 if config["amp"] == "bf16" else torch.float16, enabled=amp):
            output, state = self.model(x, self.state)
            loss = self.task.loss(output, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.task.stateful:  # carried to the next step in float32 (autocast may return bf16/fp16)
            self.state = tuple(s.detach().float() for s in state)
        return loss.item(), x.shape[0] * x.shape[1] * self.world_size

    def _report(self, losses: list, throughput: float, bar) -> None:
        """Evaluate (rank 0), log, and save the last (and the best) checkpoint."""
        tensors, meta = self._checkpoint_state()  # a collective: every process takes part
        if self.rank != 0:
            return
        mean_loss = sum(losses) / max(len(losses), 1)
        self.run_dir.log({"step": self.step, "split": "train", "loss": mean_loss, "lr": learning_rate(self.config, self.step - 1),
                          "tokens_per_s": throughput, "elapsed": self.elapsed})
        self.module.eval()
        metrics = self.task.evaluate(self.module, "val", self.device)
        self.module.train()
        self.run_dir.log({"step": self.step, "split": "val", **metrics, "elapsed": self.elapsed})
        value = metrics[self.task.metrics[0]]
        improved = (self.best is None or math.isnan(self.best)  # none yet, or a NaN to replace
                    or (value > self.best if self.task.maximize else value < self.best))
        if improved:
            self.best = value
        meta["best"] = self.best
        checkpoint.save(self.run_dir.checkpoint("last"), tensors, meta)
        if improved:
            checkpoint.save(self.run_dir.checkpoint("best"), tensors, meta)
        self.shown = {f"val_{k}": f"{v:.4g}" for k, v in metrics.items()}
        if bar is None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"step {self.step}: loss {mean_loss:.4g}, {throughput:.3g} tokens/s, val {shown}", flush=True)

    def _checkpoint_state(self) -> tuple[dict, dict]:
        """Tensors and meta of a checkpoint: weights, optimizer, every process's RNG and state."""
        optimizer_tensors, optimizer_rest = checkpoint.flatten_optimizer(self.optimizer.state_dict())
        weights = {f"model.{k}": v.detach().cpu() for k, v in self.module.state_dict().items()}
        tensors = weights | optimizer_tensors
        replicas = [bytes(d.cpu().tolist()).hex() for d in gather(
            torch.tensor(list(bytes.fromhex(checkpoint.digest(weights))), dtype=torch.uint8), self.world_size, self.device)]
        for rank, rng in enumerate(gather(torch.get_rng_state(), self.world_size, self.device)):
            tensors[f"rng.torch.{rank}"] = rng.cpu()
        if self.device.type == "cuda":
            for rank, rng in enumerate(gather(torch.cuda.get_rng_state(self.device), self.world_size, self.device)):
                tensors[f"rng.cuda.{rank}"] = rng.cpu()
        has_state = self.state is not None
        if self.task.stateful and self._any(has_state):
            for key, value in zip("hc", self.state):
                for rank, part in enumerate(gather(value, self.world_size, self.device)):
                    tensors[f"state.{key}.{rank}"] = part
        meta = {"step": self.step, "elapsed": self.elapsed, "best": self.best, "task": self.task.name,
                "config": self.config, "optimizer": optimizer_rest, "has_state": has_state,
                "replica_sha256": replicas,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}
        return tensors, meta

    def _any(self, flag: bool) -> bool:
        """True when ``flag`` is true in any process (so that all processes stop at one step)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _progress_bar(self):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.config["steps"], initial=self.step, desc=self.task.name, unit="step",
                    dynamic_ncols=True, file=sys.stderr)

    def _say(self, message: str) -> None:
        print(f"lstmkit train: {message}", file=sys.stderr, flush=True)
