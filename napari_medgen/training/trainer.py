"""The one training loop every model uses (built on ``accelerate``).

What it guarantees
------------------
* **Same command, any scale**: a laptop CPU, one GPU, or many under ``accelerate launch`` /
  ``torchrun`` (data are sharded per process, gradients all-reduced, only rank 0 writes files).
* **Exact resume**: stopping at step N and resuming gives the same loss sequence as an
  uninterrupted run (bit for bit on CPU). This does not rely on pickled RNG states: every source of
  randomness is a pure function of the seed and a position --
  the sample order is a seeded permutation per epoch, each sample's augmentation is seeded by
  ``(seed, epoch, index)``, and the global generators are re-seeded by ``(seed, step, rank)`` before
  each optimizer step. The data position after N steps is ``N * grad_accum`` micro-batches, so the
  loader is fast-forwarded with ``accelerator.skip_first_batches``. Model and optimizer states come
  back through ``accelerator.load_state`` (safetensors + weights-only loading), the EMA through
  safetensors, and the step through ``trainer_state.json``.
* **Files** in ``out_dir``: ``checkpoints/step_XXXXXX/`` (atomic: written as a hidden ``.partial``
  folder, then renamed; the newest ``keep_checkpoints`` are kept), ``loss_log.jsonl`` (one JSON line
  per logged step: step, epoch, lr, losses), ``val_log.jsonl``, ``train_config.yaml`` and the
  exported ``model/`` (EMA weights when enabled) written by `napari_medgen.hub.save_pretrained`.
* **GUI friendly**: progress goes through `ProgressReporter`; a `CancelToken` stops after the
  current step, saves a checkpoint (so the run can be resumed) and raises `CancelledError`.

Gradient accumulation is done explicitly (``grad_accum`` micro-batches per optimizer step, with
``accelerator.no_sync`` on all but the last) so that one "step" always means one optimizer update
regardless of epoch boundaries; the loss is divided by ``grad_accum`` so the update equals the one
of a ``grad_accum`` times larger batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from napari_medgen.core.atomic import atomic_write_text, commit_folder
from napari_medgen.core.progress import CancelToken, ProgressCallback, ProgressReporter
from napari_medgen.errors import CancelledError, CheckpointError, ConfigError, InvalidInputError
from napari_medgen.training.config import TrainConfig
from napari_medgen.training.ema import ExponentialMovingAverage
from napari_medgen.training.task import TrainingTask

_LOG = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOSS_LOG = "loss_log.jsonl"
VAL_LOG = "val_log.jsonl"
MODEL_DIR = "model"
CONFIG_COPY = "train_config.yaml"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
_CARD_KEYS = ("title", "description", "data", "licence", "intended_use", "limitations")
#: trainer_state fields that must not change on resume (they define the data order / update size)
_RESUME_INVARIANTS = ("seed", "batch_size", "grad_accum")


# ---- deterministic randomness ---------------------------------------------------------------------
def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of ``keys`` (independent streams for different keys)."""
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (all devices) global generators."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, yielding keys ``epoch * n + i`` so each sample knows its epoch.

    Same on every process (accelerate shards the batches), a pure function of ``(seed, epoch)``.
    The epoch is set with `use_epoch` (not ``set_epoch``, which accelerate would drive with its own
    counter that restarts at 0 after a resume).
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, 0x5A3, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        base = self.epoch * self.num_samples
        return iter([base + int(i) for i in order])


class SeededSampleDataset(Dataset):
    """Wraps a task dataset: key ``epoch * n + i`` -> item ``i`` with randomness seeded by (seed, epoch, i).

    Datasets with ``get_item(index, rng)`` receive a `numpy.random.Generator`; others see the global
    numpy / torch / random generators freshly seeded, so their augmentations are reproducible too
    (also inside DataLoader worker processes).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.length = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> Any:
        epoch, index = divmod(int(key), self.length)
        seed = derive_seed(self.seed, 0xDA7A, epoch, index)
        get_item = getattr(self.dataset, "get_item", None)
        if callable(get_item):
            return get_item(index, np.random.default_rng(seed))
        seed_everything(seed)
        return self.dataset[index]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate for update ``step`` (0-based): warm-up, then the schedule."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_scheduler == "constant":
        return 1.0
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, max(0.0, (step - config.warmup_steps) / span))
    if config.lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def resolve_mixed_precision(requested: str, cpu_only: bool) -> str:
    """The accelerate flag to use: fp16 needs CUDA (falls back to "no" elsewhere); "auto" picks bf16 on
    GPUs that support it and full precision otherwise."""
    cuda = torch.cuda.is_available() and not cpu_only
    if requested == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if requested == "fp16" and not cuda:
        _LOG.warning("mixed_precision 'fp16' needs a CUDA GPU; training in full precision (use 'bf16' on CPU).")
        return "no"
    return requested


def find_latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/step_XXXXXX`` folder of a run, or None."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


# ---- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """Runs one `TrainingTask` with one `TrainConfig`; `fit` returns the exported model folder."""

    def __init__(
        self,
        task: TrainingTask,
        config: TrainConfig,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        unknown = sorted(set(config.card) - set(_CARD_KEYS))
        if unknown:
            raise ConfigError(f"Unknown config key(s) {['card.' + k for k in unknown]}; valid: {list(_CARD_KEYS)}.")
        self.task = task
        self.config = config
        self.progress = progress
        self.cancel = cancel
        self.out_dir = Path(config.out_dir).expanduser().absolute()
        self._micro_per_epoch = 0

    # ---- setup ----------------------------------------------------------------------------------
    def _make_accelerator(self) -> Any:
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        # Several trainings in one process (tests, a GUI session) may use different precisions;
        # the process-group part (PartialState) is kept so `accelerate launch` still works.
        if hasattr(AcceleratorState, "_reset_state"):
            AcceleratorState._reset_state()
        mixed = resolve_mixed_precision(self.config.mixed_precision, self.config.cpu)
        return Accelerator(
            mixed_precision=mixed,
            cpu=self.config.cpu,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=self.task.find_unused_parameters)],
            dataloader_config=DataLoaderConfiguration(even_batches=True, use_seedable_sampler=False),
        )

    def _resume_source(self) -> Path | None:
        """Which checkpoint to resume from, refusing to mix a new run into an old one."""
        cfg = self.config
        latest = find_latest_checkpoint(self.out_dir)
        if cfg.resume:
            if isinstance(cfg.resume, str):
                ckpt = Path(cfg.resume).expanduser()
                if not (ckpt / STATE_FILE).is_file():
                    raise CheckpointError(
                        f"{ckpt} is not a training checkpoint (no {STATE_FILE}); pass a "
                        f"{CHECKPOINT_DIR}/step_XXXXXX folder or resume: true for the newest one in out_dir."
                    )
                return ckpt
            if latest is None:
                raise CheckpointError(
                    f"Nothing to resume: {self.out_dir / CHECKPOINT_DIR} holds no complete checkpoint. "
                    "Start the run without --resume / resume: true."
                )
            return latest
        if (latest is not None or (self.out_dir / LOSS_LOG).exists()) and not cfg.overwrite:
            raise ConfigError(
                f"{self.out_dir} already holds a training run. Continue it with --resume (resume: true), "
                "start afresh with overwrite: true (deletes its checkpoints and logs), or choose another out_dir."
            )
        return None

    def _clear_previous_run(self) -> None:
        shutil.rmtree(self.out_dir / CHECKPOINT_DIR, ignore_errors=True)
        for name in (LOSS_LOG, VAL_LOG):
            (self.out_dir / name).unlink(missing_ok=True)

    # ---- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, accelerator: Any, step: int, epoch: int, emas: Mapping[str, Any]) -> Path:
        from safetensors.torch import save_file

        root = self.out_dir / CHECKPOINT_DIR
        final = root / f"step_{step:06d}"
        partial = root / f".step_{step:06d}.partial"
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if emas:
                tensors = {f"{name}/{k}": v for name, ema in emas.items() for k, v in ema.state_dict().items()}
                save_file(tensors, partial / EMA_FILE, metadata={"format": "pt"})
            from napari_medgen import __version__

            state = {
                "step": step,
                "epoch": epoch,
                "task": self.task.name,
                "num_processes": accelerator.num_processes,
                "micro_batches_per_epoch": self._micro_per_epoch,
                "ema_modules": sorted(emas),
                "medgen_version": __version__,
                **{key: getattr(self.config, key) for key in _RESUME_INVARIANTS},
                "config": self.config.as_dict(),
            }
            (partial / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            commit_folder(partial, final)
            done = sorted(
                (p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()),
                key=lambda p: int(p.name.split("_")[1]),
            )
            for old in done[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def _load_checkpoint(self, accelerator: Any, ckpt: Path, emas: Mapping[str, Any]) -> int:
        try:
            state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
            step = int(state["step"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{ckpt / STATE_FILE} is unreadable ({error}); resume from an older checkpoint.") \
                from error
        if state.get("task") != self.task.name:
            raise CheckpointError(
                f"{ckpt} is a checkpoint of {state.get('task')!r}, not {self.task.name!r}; resume with the same model."
            )
        changed = [k for k in _RESUME_INVARIANTS if state.get(k) != getattr(self.config, k)]
        if changed:
            detail = ", ".join(f"{k}: {state.get(k)} -> {getattr(self.config, k)}" for k in changed)
            raise ConfigError(
                f"Cannot resume {ckpt}: {detail} changed. These define the data order and update size; restore "
                "them, or start a new run in another out_dir."
            )
        if sorted(emas) != sorted(state.get("ema_modules", [])):
            raise ConfigError(
                f"Cannot resume {ckpt}: it was trained with EMA on {state.get('ema_modules', [])} but the config "
                f"asks for {sorted(emas)}; keep ema_decay as it was (0 disables EMA)."
            )
        if state.get("num_processes") != accelerator.num_processes:
            _LOG.warning(
                "Resuming a %s-process run on %s processes: training continues, but the data order differs from "
                "an uninterrupted run.", state.get("num_processes"), accelerator.num_processes,
            )
        try:
            accelerator.load_state(str(ckpt))
        except Exception as error:  # accelerate/torch raise many types for damaged files
            raise CheckpointError(
                f"Could not restore {ckpt} ({type(error).__name__}: {error}); it is damaged or from another "
                "model configuration. Resume from an older checkpoint or start afresh."
            ) from error
        if emas:
            from safetensors.torch import load_file

            try:
                tensors = load_file(str(ckpt / EMA_FILE))
            except Exception as error:
                raise CheckpointError(f"{ckpt / EMA_FILE} is missing or damaged ({error}).") from error
            for name, ema in emas.items():
                prefix = f"{name}/"
                ema.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        return step

    # ---- logging --------------------------------------------------------------------------------
    def _truncate_log(self, name: str, step: int) -> None:
        path = self.out_dir / name
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def _append_log(self, name: str, record: Mapping[str, Any]) -> None:
        with open(self.out_dir / name, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    @staticmethod
    def _reduce_logs(accelerator: Any, logs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        if not logs:
            return {}
        names = sorted(logs)
        values = torch.stack([logs[n].reshape(()) for n in names])
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        return {n: float(v) for n, v in zip(names, values.tolist(), strict=True)}

    # ---- export / validation --------------------------------------------------------------------
    def _export_copy(self, accelerator: Any, models: Mapping[str, nn.Module], emas: Mapping[str, Any]) -> nn.Module:
        """A fresh, un-wrapped copy of the exported module with EMA weights (training weights untouched)."""
        unwrapped = {name: accelerator.unwrap_model(m) for name, m in models.items()}
        with contextlib.ExitStack() as stack:
            for name, ema in emas.items():
                stack.enter_context(ema.applied_to(unwrapped[name]))
            module = self.task.export_model(unwrapped)
            config = getattr(module, "config", None)
            if not isinstance(config, dict):
                raise InvalidInputError(
                    f"Task {self.task.name!r} exports {type(module).__name__}, which has no `config` dict; "
                    "export a HubModelMixin model."
                )
            fresh = type(module)(**config)
            fresh.load_state_dict(module.state_dict())
        return fresh.to(accelerator.device).eval()

    def _validate(self, accelerator: Any, models: Mapping[str, nn.Module], emas: Mapping[str, Any],
                  step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if accelerator.is_main_process:
            model = self._export_copy(accelerator, models, emas)
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.task.evaluate(model, accelerator.device).items()}
            if metrics:
                self._append_log(VAL_LOG, {"step": step, **metrics})
        accelerator.wait_for_everyone()
        return metrics

    def _model_card(self, accelerator: Any, step: int, losses: Mapping[str, float],
                    metrics: Mapping[str, float]) -> dict[str, Any]:
        from napari_medgen.core.device import describe_device

        cfg = self.config
        card: dict[str, Any] = {
            "title": f"napari-medgen {self.task.name} (trained with `medgen train {self.task.name}`)",
            "data": self.task.describe_data(),
            "training": {
                "task": self.task.name,
                "steps": step,
                "batch_size_per_process": cfg.batch_size,
                "grad_accum": cfg.grad_accum,
                "processes": accelerator.num_processes,
                "effective_batch": cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
                "lr": cfg.lr,
                "lr_scheduler": cfg.lr_scheduler,
                "warmup_steps": cfg.warmup_steps,
                "ema_decay": cfg.ema_decay,
                "mixed_precision": accelerator.mixed_precision,
                "seed": cfg.seed,
                **{f"final {k}": v for k, v in losses.items()},
            },
            "hardware": f"{describe_device(accelerator.device)} x {accelerator.num_processes} process(es)",
            "metrics": dict(metrics),
        }
        card.update({k: v for k, v in cfg.card.items() if v not in (None, "")})
        return card

    # ---- the loop -------------------------------------------------------------------------------
    def _stream(self, accelerator: Any, loader: Any, sampler: EpochSampler, epoch: int,
                skip: int) -> Iterator[tuple[int, Any]]:
        """Micro-batches forever, across epochs, starting ``skip`` batches into ``epoch``."""
        while True:
            sampler.use_epoch(epoch)
            source = accelerator.skip_first_batches(loader, skip) if skip else loader
            for batch in source:
                yield epoch, batch
            epoch += 1
            skip = 0

    def fit(self) -> Path:
        """Train (or resume) to ``max_steps``, checkpointing along the way; export and return ``out_dir/model``."""
        cfg = self.config
        task = self.task
        resume_from = self._resume_source()
        accelerator = self._make_accelerator()
        main = accelerator.is_main_process
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if resume_from is None:
                self._clear_previous_run()
            import yaml

            atomic_write_text(self.out_dir / CONFIG_COPY, yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        accelerator.wait_for_everyone()

        seed_everything(cfg.seed)
        models = dict(task.build_models())
        trainable = [n for n, m in models.items() if any(p.requires_grad for p in m.parameters())]
        if not trainable:
            raise ConfigError(f"Task {task.name!r} built no module with trainable parameters.")
        dataset = SeededSampleDataset(task.build_dataset(), cfg.seed)
        sampler = EpochSampler(len(dataset), cfg.seed)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.num_workers)
        optimizers = dict(task.build_optimizers(models))
        if not optimizers:
            raise ConfigError(f"Task {task.name!r} built no optimizer.")
        for opt in optimizers.values():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
        for name, module in models.items():
            if name not in trainable:  # frozen helpers (e.g. a pretrained autoencoder) never update statistics
                module.to(accelerator.device).eval()
        prepared = accelerator.prepare(*(models[n] for n in trainable), *optimizers.values(), loader)
        for i, name in enumerate(trainable):
            models[name] = prepared[i]
        optimizers = dict(zip(optimizers, prepared[len(trainable):-1], strict=True))
        loader = prepared[-1]
        self._micro_per_epoch = len(loader)
        if self._micro_per_epoch == 0:
            raise InvalidInputError(
                f"The dataset has {len(dataset)} samples per epoch, fewer than one batch of {cfg.batch_size} on "
                f"{accelerator.num_processes} process(es); lower batch_size or raise data.samples_per_epoch."
            )

        ema_decay = cfg.ema_decay
        emas: dict[str, ExponentialMovingAverage] = {}
        if ema_decay > 0:
            for name in task.ema_modules():
                emas[name] = ExponentialMovingAverage(accelerator.unwrap_model(models[name]), ema_decay,
                                                      cfg.ema_warmup_steps)

        start_step = 0
        if resume_from is not None:
            start_step = self._load_checkpoint(accelerator, resume_from, emas)
            if main:
                self._truncate_log(LOSS_LOG, start_step)
                self._truncate_log(VAL_LOG, start_step)
            accelerator.wait_for_everyone()
            _LOG.info("resumed from %s at step %d", resume_from, start_step)

        reporter = ProgressReporter(cfg.max_steps, stage=f"train {task.name}", callback=self.progress,
                                    cancel=self.cancel)
        reporter.step = start_step
        epoch, skip = divmod(start_step * cfg.grad_accum, self._micro_per_epoch)
        stream = self._stream(accelerator, loader, sampler, epoch, skip)
        trainable_modules = [models[n] for n in trainable]
        last_saved = start_step if resume_from is not None else -1
        losses: dict[str, float] = {}
        for module in trainable_modules:
            module.train()

        for step in range(start_step, cfg.max_steps):
            micro = [next(stream) for _ in range(cfg.grad_accum)]
            epoch = micro[-1][0]
            seed_everything(derive_seed(cfg.seed, 0x57E9, step, accelerator.process_index))
            factor = lr_factor(step, cfg)
            lrs = {}
            for opt_name, opt in optimizers.items():
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * factor
                lrs[opt_name] = opt.param_groups[0]["lr"]
            logs = self._train_step(accelerator, optimizers, models, trainable_modules, micro, step)
            for name, ema in emas.items():
                ema.update(accelerator.unwrap_model(models[name]))
            done = step + 1
            losses = self._reduce_logs(accelerator, logs)
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise InvalidInputError(
                    f"Training diverged at step {done}: {bad} became {losses[bad[0]]}. Lower lr, keep grad_clip, "
                    f"or use mixed_precision: no; resume from {find_latest_checkpoint(self.out_dir) or 'scratch'}."
                )
            if main and done % cfg.log_every == 0:
                lr_value: float | dict[str, float] = next(iter(lrs.values())) if len(lrs) == 1 else lrs
                self._append_log(LOSS_LOG, {"step": done, "epoch": epoch, "lr": lr_value, "losses": losses})
            if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
                self._save_checkpoint(accelerator, done, epoch, emas)
                last_saved = done
            if cfg.val_every and done % cfg.val_every == 0 and done != cfg.max_steps:
                self._validate(accelerator, models, emas, done)
                for module in trainable_modules:
                    module.train()
            message = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
            try:
                reporter.advance(1, message)
                if self.cancel is not None:  # a stop requested while this step ran ends the run here
                    self.cancel.raise_if_cancelled()
            except CancelledError:
                if last_saved != done:
                    self._save_checkpoint(accelerator, done, epoch, emas)
                raise CancelledError(
                    f"Training cancelled after step {done}/{cfg.max_steps}; a checkpoint was saved in "
                    f"{self.out_dir / CHECKPOINT_DIR}. Continue with --resume (resume: true); no model was exported."
                ) from None

        if last_saved != cfg.max_steps and start_step < cfg.max_steps:
            self._save_checkpoint(accelerator, cfg.max_steps, epoch, emas)
        metrics = self._validate(accelerator, models, emas, cfg.max_steps)
        model_dir = self.out_dir / MODEL_DIR
        if main:
            from napari_medgen.hub import save_pretrained

            exported = self._export_copy(accelerator, models, emas)
            save_pretrained(exported, model_dir, extra=task.export_extra(),
                            card=self._model_card(accelerator, cfg.max_steps, losses, metrics))
        accelerator.wait_for_everyone()
        accelerator.free_memory()
        return model_dir

    def _train_step(
        self,
        accelerator: Any,
        optimizers: Mapping[str, Any],
        models: Mapping[str, nn.Module],
        trainable_modules: list[nn.Module],
        micro: list[tuple[int, Any]],
        step: int,
    ) -> dict[str, torch.Tensor]:
        """One optimizer update per optimizer: accumulate over the micro-batches, clip, step."""
        cfg = self.config
        n_micro = len(micro)
        logs: dict[str, torch.Tensor] = {}
        for opt_name, opt in optimizers.items():
            for module in trainable_modules:
                module.zero_grad(set_to_none=True)
            ran = False
            for i, (_, batch) in enumerate(micro):
                with contextlib.ExitStack() as stack:
                    if i < n_micro - 1:
                        for module in trainable_modules:
                            stack.enter_context(accelerator.no_sync(module))
                    with accelerator.autocast():
                        out = self.task.compute_loss(opt_name, batch, models, step)
                    if out is None:
                        break
                    if "loss" not in out:
                        raise InvalidInputError(
                            f"Task {self.task.name!r} returned {sorted(out)} for {opt_name!r}; it must include 'loss'."
                        )
                    accelerator.backward(out["loss"] / n_micro)
                ran = True
                for key, value in out.items():
                    name = key if len(optimizers) == 1 else f"{opt_name}/{key}"
                    logs[name] = logs.get(name, 0.0) + value.detach().float().mean() / n_micro
            if not ran:
                continue
            if cfg.grad_clip is not None:
                params = [p for group in opt.param_groups for p in group["params"]]
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        for module in trainable_modules:
            module.zero_grad(set_to_none=True)
        return logs
