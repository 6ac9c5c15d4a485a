"""`TrainingTask`: what one model contributes to the shared trainer.

The trainer owns everything generic (devices, precision, accumulation, clipping, EMA, checkpoints,
exact resume, logging, export); a task owns the science: which modules exist, which data they
see, which optimizers update them and what each optimizer minimises.

Several optimizers are first-class so adversarial models fit without special cases: the trainer
calls `TrainingTask.compute_loss` once per optimizer per micro-batch, in the order of
`build_optimizers`, and steps each optimizer on its own loss (e.g. ``"generator"`` then
``"discriminator"``). Before each optimizer's phase all gradients are cleared, so the generator
loss never leaks into the discriminator's update. A task may cache tensors between the phases of
one step (the generator's fakes for the discriminator) and may return ``None`` to skip an
optimizer on a step (e.g. a discriminator that starts late).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from napari_medgen.training.config import TrainConfig, parse_section

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

LossDict = dict[str, "torch.Tensor"]


class TrainingTask(ABC):
    """Base class of a trainable model; subclasses are registered with `register_task`."""

    #: registry name used by ``medgen train NAME``
    name: ClassVar[str] = ""
    #: dataclasses for the YAML ``data:`` and ``model:`` sections (None keeps them as plain dicts)
    data_config_class: ClassVar[type | None] = None
    model_config_class: ClassVar[type | None] = None
    #: key of `build_models` whose weights are exported with ``hub.save_pretrained``
    export_module: ClassVar[str] = "model"
    #: DDP option for tasks whose modules do not use every parameter on every step
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, where: str = "the config") -> None:
        self.config = config
        self.data_config: Any = (
            parse_section(self.data_config_class, config.data, "data", where)
            if self.data_config_class is not None else dict(config.data)
        )
        self.model_config: Any = (
            parse_section(self.model_config_class, config.model, "model", where)
            if self.model_config_class is not None else dict(config.model)
        )

    # ---- what the trainer needs -------------------------------------------------------------------

    # ---- the one case split (tasks whose ``data:`` names image/label pairs) --------------------------------
    def _case_split(self) -> Any:
        """The task's pairs and train / val / test split, found once (`training.datasets.CaseSplit`)."""
        from napari_medgen.training.datasets import CaseSplit

        if getattr(self, "_cases", None) is None:
            self._cases = CaseSplit(self.data_config)
        return self._cases

    def _data(self) -> tuple[list[Any], dict[str, list[str]]]:
        """Every image/label pair and the case ids per split."""
        return self._case_split().all()

    def _split_pairs(self, name: str) -> list[Any]:
        """The pairs of one split (``train`` / ``val`` / ``test``)."""
        return self._case_split().pairs(name)

    @abstractmethod
    def build_models(self) -> dict[str, nn.Module]:
        """Every module of the task, by name (frozen ones included; only those with trainable
        parameters are wrapped for distributed training and checkpointed)."""

    @abstractmethod
    def build_dataset(self) -> Dataset:
        """The training dataset. Random augmentation may use the global numpy/torch/random generators
        (the trainer seeds them per sample) or implement ``get_item(index, rng)`` with the given
        ``numpy.random.Generator``; either way the data order and content are reproducible."""

    def build_optimizers(self, models: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """One AdamW over every trainable parameter, named ``"main"``; override for GANs etc."""
        import torch

        params = [p for module in models.values() for p in module.parameters() if p.requires_grad]
        return {"main": torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)}

    @abstractmethod
    def compute_loss(
        self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int
    ) -> LossDict | None:
        """Losses for one micro-batch in the phase of ``optimizer``: ``{"loss": scalar to minimise,
        other names: scalars only logged}``, or None to skip this optimizer on this step."""

    # ---- export ---------------------------------------------------------------------------------
    def ema_modules(self) -> tuple[str, ...]:
        """Modules whose parameters get an EMA when ``ema_decay > 0`` (default: the exported one)."""
        return (self.export_module,)

    def export_model(self, models: Mapping[str, nn.Module]) -> nn.Module:
        """The module written to ``out_dir/model`` (EMA weights are swapped in by the trainer)."""
        return models[self.export_module]

    def export_extra(self) -> dict[str, Any]:
        """JSON statistics saved in ``config.json`` beside the weights (normalisers, class names ...)."""
        return {}

    def describe_data(self) -> str:
        """One paragraph for the model card's "Training data" section."""
        return ""

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation metrics of the exported ``model`` (EMA weights applied); {} when there is no
        validation split."""
        return {}
