"""A thin LightningModule over the plain ``GPT``: loss, metrics, optimizer and schedule."""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from lightning_gpt.config import GPTConfig
from lightning_gpt.errors import UserError
from lightning_gpt.generation import GenerationSettings, generate_text, stream_text
from lightning_gpt.model import GPT
from lightning_gpt.muon import MuonAdamW
from lightning_gpt.precision import auto_compile
from lightning_gpt.rng import gather_rng_states, restore_rng_states
from lightning_gpt.tokenizer import CharTokenizer


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup, cosine down to ``min_lr_ratio`` at ``decay_steps``, then flat."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))


OPTIMIZERS = ("adamw", "muon")


class GPTModule(L.LightningModule):
    """Trains ``GPT`` with AdamW (or Muon + AdamW) and warmup + cosine LR.

    Every argument is a plain value, saved as a hyperparameter, so a checkpoint alone rebuilds
    the model and its tokenizer. ``vocab`` is filled from the corpus on the first ``fit``.

    Args:
        d_model: width of the residual stream.
        num_heads: attention heads (head_size = d_model / num_heads).
        num_blocks: transformer blocks.
        context_length: longest sequence T the model sees.
        dropout: dropout probability in training.
        attention_dropout: dropout on the attention weights (default: ``dropout``; above 0, slow on CPU).
        positional: "learned" (default) or "sinusoidal" positions added to the embeddings, or "rotary"
            (queries and keys turned by their position's angle).
        bias: whether Linear layers have biases.
        vocab: the sorted character vocabulary; taken from the data when unset.
        learning_rate: peak AdamW learning rate.
        min_lr_ratio: final learning rate as a fraction of the peak.
        warmup_steps: optimizer steps of linear warmup.
        decay_steps: step at which the cosine reaches its floor (default: ``trainer.max_steps``).
        weight_decay: AdamW weight decay, applied to matrices only (not biases or LayerNorms).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        optimizer: "adamw" (default) or "muon": Muon for the blocks' matrices, AdamW for the rest
            (``lightning_gpt.muon``; the same learning rate and weight decay serve both).
        compile: ``torch.compile`` the forward, not generation (default: ``auto_compile``); not saved.
    """

    def __init__(
        self,
        d_model: int = GPTConfig.d_model,
        num_heads: int = GPTConfig.num_heads,
        num_blocks: int = GPTConfig.num_blocks,
        context_length: int = GPTConfig.context_length,
        dropout: float = GPTConfig.dropout,
        attention_dropout: float | None = GPTConfig.attention_dropout,
        positional: str = GPTConfig.positional,
        bias: bool = GPTConfig.bias,
        vocab: str | None = None,
        learning_rate: float = 1e-3,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        decay_steps: int | None = None,
        weight_decay: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        optimizer: str = "adamw",
        compile: bool | None = None,
    ):
        super().__init__()
        # compile is how to run, not what was trained: kept out of checkpoints so that a flag given
        # with --ckpt_path is not overridden by the checkpoint's value (Lightning #21116)
        self.save_hyperparameters(ignore=["compile"])
        self._compile = compile  # not self.compile: that is nn.Module.compile()
        self._finite: torch.Tensor | None = None  # all training losses finite since the last check
        self._step_logged = False  # "step" is among the logged values (from a validation)
        self.model: GPT | None = None
        self._train_forward = None  # self.model, or its torch.compile wrapper (kept unregistered)
        self.tokenizer: CharTokenizer | None = None
        # the mean cross-entropy over every validation target, summed across ranks; a nan stays nan (the
        # "disable" strategy needs torchmetrics >= 1.7), so fit stops on it in one line
        self.val_cross_entropy = MeanMetric(nan_strategy=math.nan)
        self.generation = GenerationSettings()  # set by the CLI for predict; not a hyperparameter
        if optimizer not in OPTIMIZERS:
            raise UserError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        allowed = {  # checked now, not once fit builds the optimizer
            "learning_rate": (0 <= learning_rate < math.inf, "a finite number >= 0"),
            "min_lr_ratio": (0 <= min_lr_ratio <= 1, "in [0, 1]"),
            "beta1": (0 <= beta1 < 1, "in [0, 1)"),
            "beta2": (0 <= beta2 < 1, "in [0, 1)"),
            "weight_decay": (0 <= weight_decay < math.inf, "a finite number >= 0"),
            "warmup_steps": (warmup_steps >= 0, "at least 0"),
            "decay_steps": (
                decay_steps is None or decay_steps >= 0,
                "at least 0 (0 or unset: trainer.max_steps)",
            ),
        }
        for name, (ok, values) in allowed.items():
            if not ok:
                raise UserError(f"model.{name} must be {values}, got {self.hparams[name]}")
        self.config(vocab_size=1)  # check the shape settings now, before any data is read
        if vocab is not None:
            self._build(vocab)

    def config(self, vocab_size: int) -> GPTConfig:
        """The model's shape from the hyperparameters (older checkpoints lack some: GPTConfig's defaults)."""
        try:
            return GPTConfig.from_hparams(self.hparams, vocab_size)
        except ValueError as error:
            raise UserError(f"invalid model settings: {error}") from None

    def _build(self, vocab: str) -> None:
        self.tokenizer = CharTokenizer(vocab)
        # saved again, so that the logged hyperparameters (hparams.yaml) hold it too, not None
        self.save_hyperparameters({**self.hparams, "vocab": vocab})
        self.model = GPT(self.config(len(vocab)))
        self._train_forward = None

    def configure_model(self) -> None:
        """Build the model once the data's vocabulary is known (before weights are restored)."""
        trainer = self._trainer  # None when called by load_from_checkpoint
        datamodule = getattr(trainer, "datamodule", None)
        data_vocab = getattr(datamodule, "tokenizer", None) and datamodule.vocab
        if self.model is None:
            if not data_vocab:
                raise UserError(
                    "no vocabulary: pass a corpus (--data.path) or a checkpoint (--ckpt_path); from Python, "
                    "GPTModule.load_from_checkpoint(path) or GPTModule(vocab=...)"
                )
            self._build(data_vocab)
        elif data_vocab and data_vocab != self.hparams.vocab:
            vocab = self.hparams.vocab
            new, gone = (
                "".join(sorted(set(a) - set(b))[:20]) for a, b in ((data_vocab, vocab), (vocab, data_vocab))
            )
            raise UserError(
                f"the corpus vocabulary ({len(data_vocab)} characters) differs from the model's "
                f"({len(vocab)}): {new!r} only in the corpus, {gone!r} only in the model; use the corpus the "
                "model was trained on"
            )
        windows = 0 if trainer is None or trainer.predicting else getattr(datamodule, "context_length", 0)
        if windows > self.hparams.context_length:  # linked by the CLI; predict reads prompts only
            raise UserError(
                f"the data's windows ({datamodule.context_length} characters) are longer than the model's "
                f"context_length {self.hparams.context_length}; give CharDataModule the model's"
            )

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if self._train_forward is None:
            # Hidden from Module.__setattr__: the wrapper must not add "_orig_mod." weights to the state dict.
            use_compile = auto_compile(self.device) if self._compile is None else self._compile
            compiled = torch.compile(self.model) if use_compile else self.model
            object.__setattr__(self, "_train_forward", compiled)
        return self._train_forward(idx, targets)

    def on_fit_start(self) -> None:
        if self.device.type == "cuda":  # TF32 tensor cores for whatever runs outside autocast
            torch.set_float32_matmul_precision("high")

    def on_train_start(self) -> None:
        t = self.trainer  # Lightning validates at epoch ends by default, and the training stream has none
        endless = t.val_check_batch == math.inf and t.num_training_batches == math.inf
        if endless and t.limit_val_batches and t.datamodule is not None:
            rank_zero_warn(
                "validation never runs: the training data has no epoch end; pass "
                "Trainer(val_check_interval=N, check_val_every_n_epoch=None) (--trainer.val_check_interval N "
                "--trainer.check_val_every_n_epoch null) to validate every N batches"
            )
        # Lightning's LearningRateFinder sets hparams.learning_rate and each group's lr once the schedule is
        # built, which then set the old rate back at the next step: the schedule starts from the new one
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [self.hparams.learning_rate] * len(config.scheduler.base_lrs)

    def stream_text(self, prompt: str, max_new_tokens: int = 500, **sampling) -> Iterator[list[str]]:
        """Stream characters continuing ``prompt``; see ``lightning_gpt.generation.stream_text``."""
        return stream_text(self._built(), self.tokenizer, prompt, max_new_tokens, **sampling)

    def generate_text(self, prompt: str, max_new_tokens: int = 500, **sampling) -> str:
        """``prompt`` and ``max_new_tokens`` sampled characters, e.g. ``generate_text("A:", 200, seed=1)``."""
        return generate_text(self._built(), self.tokenizer, prompt, max_new_tokens, **sampling)

    def _built(self) -> GPT:
        if self.model is None:
            raise UserError("no model yet: fit it, load a checkpoint or pass GPTModule(vocab=...)")
        return self.model

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """One prompt -> ``num_samples`` texts (prompt + continuation), per ``self.generation``."""
        g = self.generation
        sampling = {**g.sampling(batch["index"]), "num_samples": g.num_samples}
        chars = list(self.stream_text(batch["prompt"], g.max_new_tokens, **sampling))
        return [batch["prompt"] + "".join(step[s] for step in chars) for s in range(g.num_samples)]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # [B, T] each
        _, loss = self(x, y)
        # Every loss joins a flag on the device, read (a wait for the device) only at logging steps
        # and before a checkpoint is saved.
        finite = torch.isfinite(loss.detach())
        self._finite = finite if self._finite is None else self._finite & finite
        if self._logging_step():
            self._check_finite(self.global_step + 1)
            # Host values: the progress bar reads its values at every step (a device tensor: a wait).
            self.log("train_loss", loss.detach().cpu(), prog_bar=True)
            self.log("lr", torch.tensor(self.optimizers().param_groups[0]["lr"]), prog_bar=True)
        return loss

    def _logging_step(self) -> bool:
        """Whether this optimizer step's logged values reach the loggers (``log_every_n_steps``)."""
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def _check_finite(self, steps: int) -> None:
        """Stop if any training loss since the last check was nan or inf, on any rank: every rank
        stops, or none (``steps``: steps trained)."""
        finite = self._finite is None or bool(self._finite)
        if self._trainer is not None:  # a collective with several processes
            finite = self._trainer.strategy.reduce_boolean_decision(finite, all=True)
        self._finite = None
        if not finite:
            raise self._stopped("training", "nan or inf", f"{steps} or earlier")

    def _stopped(self, which: str, value: object, step: object) -> UserError:
        return UserError(
            f"the {which} loss became {value} at step {step}; training stopped and the "
            "checkpoints saved so far are kept. Train a new run with a lower --model.learning_rate (a resume "
            "would repeat the same batches)"
        )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # [B, T] each
        _, loss = self(x, y)  # the mean cross-entropy of its B * T targets
        self.val_cross_entropy.update(loss, weight=y.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_cross_entropy.compute()
        self.val_cross_entropy.reset()
        if self.trainer.state.fn == "fit" and not torch.isfinite(loss):  # stop before checkpoints save
            raise self._stopped("validation", loss.item(), self.global_step)
        self.log("val_loss", loss, prog_bar=True, sync_dist=False)
        self.log("val_bpc", loss / math.log(2))
        self.log("val_ppl", torch.exp(loss))
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.log("step", float(self.global_step))  # charted at the step checkpoints and samples name
            self._step_logged = True

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # The step logged at a validation (the charts' x-axis) is stale once training goes on: without it,
        # checkpoint names ({step}) take trainer.global_step again
        if self._step_logged:
            self.trainer.callback_metrics.pop("step", None)
            self._step_logged = False

    def on_before_optimizer_step(self, optimizer) -> None:
        """Log the gradient norm before clipping, at logging steps."""
        if self._logging_step():
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            self.log("grad_norm", torch.nn.utils.get_total_norm(grads))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store every rank's generator states (Lightning calls this on all ranks; rank 0 writes)."""
        self._check_finite(self.global_step)  # never save weights that a nan or inf loss made
        device = self._trainer.strategy.root_device if self._trainer is not None else None
        checkpoint["rng_states"] = gather_rng_states(device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed fit gives each rank its generator states back (other loads leave the caller's alone)."""
        saved, trainer = checkpoint.get("rng_states"), self._trainer
        if saved is not None and trainer is not None and trainer.state.fn == "fit":
            rank, device = trainer.global_rank, trainer.strategy.root_device
            if note := restore_rng_states(saved, rank, trainer.world_size, device):
                rank_zero_warn(note)

    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [  # weight decay on the matrices only, not on biases and LayerNorms
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": h.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        if h.optimizer == "muon":  # Muon for the blocks' matrices; not the embedding (= the head)
            blocks, matrices = {id(p) for p in self.model.blocks.parameters()}, groups[0]["params"]
            groups[0]["params"] = [p for p in matrices if id(p) not in blocks]
            muon = [p for p in matrices if id(p) in blocks]
            groups.insert(0, {"params": muon, "muon": True, "weight_decay": h.weight_decay})
            optimizer = MuonAdamW(groups, lr=h.learning_rate, betas=(h.beta1, h.beta2))
        else:
            # Multi-tensor kernels (PyTorch picks them by default on CUDA only; they are faster on CPU
            # too). Not fused=True: Lightning's mixed-precision plugin refuses gradient clipping with it.
            optimizer = torch.optim.AdamW(groups, lr=h.learning_rate, betas=(h.beta1, h.beta2), foreach=True)
        decay_steps = h.decay_steps or self.trainer.max_steps
        if decay_steps is None or decay_steps < 0:
            raise UserError(
                "set the trainer's max_steps (--trainer.max_steps) or the model's decay_steps "
                "(--model.decay_steps) for the learning-rate schedule"
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, h.warmup_steps, decay_steps, h.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
