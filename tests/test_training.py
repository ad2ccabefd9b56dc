"""What training must get right, through the real code paths: the warmup + cosine learning rate,
which parameters decay, gradient clipping (in every recipe and in a real fit), the logged
validation loss, and the sampling temperature."""

from __future__ import annotations

import contextlib
import inspect
import io
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT, TINY, TINY_MODEL, tiny_fit_args

from lightning_gpt.cli import make_cli
from lightning_gpt.data import CharDataModule, ConsecutiveWindows
from lightning_gpt.generation import sample_next, stream_text
from lightning_gpt.module import GPTModule, warmup_cosine

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
QUIET = [
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--sample.print_at_end=false",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def vocab_of(path: Path) -> str:
    return "".join(sorted(set(path.read_text(encoding="utf-8"))))


def sharpen(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Redraw every parameter from N(0, std): peaked, varied predictions instead of near-uniform ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


# --- a. learning rate: linear warmup, then cosine down to min_lr_ratio ---------------------------


def test_warmup_cosine_at_chosen_steps():
    # warmup 4, cosine from step 4 to step 12, floor 0.1: lr = 0.1 + 0.45 * (1 + cos(pi * (s - 4) / 8))
    expected = {
        0: 0.25,  # warmup: (s + 1) / 4
        1: 0.5,
        3: 1.0,
        4: 1.0,  # the cosine starts at the peak
        6: 0.8681980515,  # 0.1 + 0.45 * (1 + cos(pi/4))
        8: 0.55,  # halfway: 0.1 + 0.45
        10: 0.2318019485,  # 0.1 + 0.45 * (1 + cos(3pi/4))
        12: 0.1,  # the floor from decay_steps on
        13: 0.1,
        1000: 0.1,
    }
    for step, value in expected.items():
        assert warmup_cosine(step, 4, 12, 0.1) == pytest.approx(value, abs=1e-9), step
    # decay_steps before the warmup's end: the warmup finishes, then the floor
    assert [warmup_cosine(step, 4, 2, 0.1) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 0.1, 0.1]
    after_warmup = [warmup_cosine(step, 4, 12, 0.1) for step in range(4, 13)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:], strict=False)), "not strictly decreasing"


def test_decay_steps_0_or_unset_means_the_trainers_max_steps():
    trainer = L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    for decay_steps in (0, None, 12):
        module = GPTModule(**TINY, vocab="abcdefgh", warmup_steps=4, decay_steps=decay_steps)
        module.trainer = trainer
        schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
        assert [schedule(step) for step in (8, 12)] == [pytest.approx(0.55), pytest.approx(0.1)], decay_steps


def test_compile_false_is_never_compiled_where_auto_would(monkeypatch):
    import lightning_gpt.module as module_file

    monkeypatch.setattr(module_file, "auto_compile", lambda device: True)  # a GPU where auto compiles
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or model)
    GPTModule(**TINY, vocab="abcdefgh", compile=False)(torch.zeros(1, 4, dtype=torch.long))
    assert compiled == []
    auto = GPTModule(**TINY, vocab="abcdefgh")
    auto(torch.zeros(1, 4, dtype=torch.long))
    assert compiled == [auto.model]


class Recorder(L.Callback):
    """At every optimizer step: the learning rate of each parameter group, the total gradient norm
    before clipping (``on_before_optimizer_step`` runs before Lightning clips) and after it (a step
    post-hook: the gradients the update used, still in ``.grad``), and the ``grad_norm`` fit logged.

    Not a step pre-hook: Lightning passes its closure to ``optimizer.step``, which runs the pre-hooks
    before the closure computes this step's gradients.
    """

    def __init__(self):
        self.lrs: list[list[float]] = []
        self.before: list[float] = []
        self.after: list[float] = []
        self.logged: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        (optimizer,) = trainer.optimizers
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def after_step(optimizer, args, kwargs) -> None:
            self.after.append(torch.nn.utils.get_total_norm([p.grad for p in params]).item())

        optimizer.register_step_post_hook(after_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.before.append(torch.nn.utils.get_total_norm(grads).item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.logged.append(float(trainer.callback_metrics["grad_norm"]))


FIT_STEPS = 10
FIT_LR = 0.03


@pytest.fixture(scope="module")
def recorded_cli_fit(tmp_path_factory, shakespeare: str) -> tuple[Recorder, float | None]:
    """``fit`` as ``python cli.py fit`` runs it (the default recipe, no --config), in-process, with a
    tiny model for 10 steps: what ``Recorder`` saw, and the trainer's gradient_clip_val."""
    root = tmp_path_factory.mktemp("recorded_cli_fit")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    recorder = Recorder()
    args = [
        "fit",
        f"--data.path={corpus}",
        f"--data.cache_dir={root / 'cache'}",
        *TINY_MODEL,  # warmup_steps 2
        f"--model.learning_rate={FIT_LR}",
        f"--trainer.max_steps={FIT_STEPS}",  # decay_steps unset: the cosine ends at max_steps
        "--trainer.num_sanity_val_steps=0",
        "--trainer.precision=32-true",
        "--trainer.log_every_n_steps=1",  # grad_norm at every step
        f"--trainer.default_root_dir={root}",
        f"--checkpoint.dirpath={root / 'checkpoints'}",
        *QUIET,
    ]
    cli = make_cli(args, callbacks=[recorder])
    assert cli.trainer.global_step == FIT_STEPS
    return recorder, cli.trainer.gradient_clip_val


def test_learning_rate_warms_up_then_follows_the_cosine_in_a_real_fit(recorded_cli_fit):
    recorder, _ = recorded_cli_fit
    # warmup 2: steps 0, 1 at 1/2, 2/2 of the peak; then cosine over steps 2..10 down to 0.1 of it
    multipliers = [0.5, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert len(recorder.lrs) == FIT_STEPS
    for step, (groups, multiplier) in enumerate(zip(recorder.lrs, multipliers, strict=True)):
        assert len(groups) == 2 and groups[0] == groups[1], f"step {step}: groups differ: {groups}"
        assert groups[0] == pytest.approx(FIT_LR * multiplier, rel=1e-6), f"step {step}"
    assert recorder.lrs[-1][0] < 0.15 * FIT_LR  # near the floor at the end, well below the peak


# --- b. weight decay: every matrix (the tied embedding/head and position table included), nothing else


def decayed_names(blocks: int) -> set[str]:
    matrices = ["attn.qkv.weight", "attn.proj.weight", "ffn.up.weight", "ffn.down.weight"]
    names = {"token_embedding.weight", "position_embedding.weight"}  # the head is the token embedding
    return names | {f"blocks.{i}.{matrix}" for i in range(blocks) for matrix in matrices}


def test_weight_decay_goes_to_exactly_the_matrices():
    module = GPTModule(**TINY, vocab="abcdefgh", weight_decay=0.1, decay_steps=10)
    optimizer = module.configure_optimizers()["optimizer"]
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(module.model.named_parameters())  # the tied head appears once, as the embedding
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(named) == len(decay_of)
    assert set(decay_of) == {id(p) for p in named.values()}, "a parameter is missing from the optimizer"
    decayed = {name for name, p in named.items() if decay_of[id(p)] == 0.1}
    undecayed = {name for name, p in named.items() if decay_of[id(p)] == 0.0}
    assert decayed == decayed_names(2)
    assert undecayed == set(named) - decayed  # biases, LayerNorm weights and biases
    assert all(name.endswith(".bias") or ".ln" in name or name.startswith("ln_") for name in undecayed)
    assert decay_of[id(module.model.head.weight)] == 0.1


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_adamw_groups_take_the_betas_given(optimizer):
    module = GPTModule(**TINY, vocab="abcdefgh", beta1=0.8, beta2=0.95, optimizer=optimizer, decay_steps=10)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert {group["betas"] for group in groups if not group.get("muon")} == {(0.8, 0.95)}


def test_an_optimizer_step_with_zero_gradients_shrinks_only_the_matrices():
    """AdamW with zero gradients moves only by its decoupled decay: p <- p * (1 - lr * wd)."""
    # warmup 1: the full learning rate at step 0
    module = GPTModule(
        **TINY, vocab="abcdefgh", learning_rate=0.1, weight_decay=0.5, warmup_steps=1, decay_steps=10
    )
    sharpen(module.model, 1.0)  # no parameter at zero, where decay could not show
    optimizer = module.configure_optimizers()["optimizer"]
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    for p in module.model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    shrunk = set()
    for name, p in module.model.named_parameters():
        if torch.allclose(p, before[name] * (1 - 0.1 * 0.5), rtol=1e-6, atol=0):
            shrunk.add(name)
        else:
            assert torch.equal(p, before[name]), f"{name} moved, but not by weight decay"
    assert shrunk == decayed_names(2)


# --- c. gradient clipping: on in the default fit and in every recipe, and really applied ---------


def printed_fit_config(monkeypatch, *args: str) -> dict:
    """The config ``python cli.py fit ARGS`` runs with, as ``--print_config`` prints it."""
    monkeypatch.undo()  # the CLI reads CharDataModule's real signature (conftest wraps it)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        make_cli(["fit", *args, "--print_config"])
    assert exited.value.code == 0
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("recipe", [None, *RECIPES], ids=lambda r: r.name if r else "default")
def test_every_recipe_clips_gradients_and_keeps_the_module_optimizer(monkeypatch, recipe):
    config = printed_fit_config(monkeypatch, *(["--config", str(recipe)] if recipe else []))
    clip = config["trainer"]["gradient_clip_val"]
    assert clip is not None and 0 < clip < math.inf, f"gradient_clip_val: {clip}"
    assert config["trainer"].get("gradient_clip_algorithm") in (None, "norm")  # None means norm
    # An optimizer or lr_scheduler section would replace configure_optimizers (groups, schedule).
    assert config.get("optimizer") is None and config.get("lr_scheduler") is None


def test_the_seed_recipe_states_the_code_defaults():
    """configs/shakespeare_char.yaml spells out the seed recipe, which is also the defaults of GPTModule
    and CharDataModule (what Python users get): one may not drift from the other."""
    recipe = yaml.safe_load((ROOT / "configs" / "shakespeare_char.yaml").read_text())
    for section, cls in (("model", GPTModule), ("data", CharDataModule)):
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
        assert {name: defaults[name] for name in recipe[section]} == recipe[section], section


def test_gradients_are_clipped_in_a_real_fit(recorded_cli_fit):
    recorder, clip = recorded_cli_fit
    assert clip is not None and clip > 0, "the default fit does not clip gradients"
    assert len(recorder.before) == len(recorder.after) == FIT_STEPS
    assert any(norm > clip for norm in recorder.before), f"no step needed clipping: {recorder.before}"
    for step, (before, after) in enumerate(zip(recorder.before, recorder.after, strict=True)):
        if before > clip:  # scaled down to the clip value
            assert after == pytest.approx(clip, rel=1e-4), f"step {step}: {before} -> {after}"
        else:  # below the threshold: untouched
            assert after == pytest.approx(before, rel=1e-5), f"step {step}: {before} -> {after}"
    # the logged norm is the one before clipping: a chart shows how large the gradients really were
    assert recorder.logged == pytest.approx(recorder.before, rel=1e-5)


def test_the_learning_rate_finder_sets_the_schedules_rate(tmp_path, small_corpus, cli_main):
    """Lightning's LearningRateFinder: before, its rate reached the hyperparameters and each group's lr
    only, and the schedule set the old rate back at the next step."""
    finder = ["--trainer.callbacks+=LearningRateFinder", "--trainer.callbacks.num_training_steps=20"]
    result = cli_main(*tiny_fit_args(small_corpus, steps=4, val_every=4), *finder, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    h, (scheduler,), (optimizer,) = (
        saved["hyper_parameters"],
        saved["lr_schedulers"],
        saved["optimizer_states"],
    )
    assert h["learning_rate"] != 1e-3  # the finder's, not the default
    assert scheduler["base_lrs"] == [h["learning_rate"]] * len(scheduler["base_lrs"])
    expected = h["learning_rate"] * warmup_cosine(4, h["warmup_steps"], 4, h["min_lr_ratio"])
    assert [group["lr"] for group in optimizer["param_groups"]] == pytest.approx([expected] * 2)


# --- d. val_loss: the mean cross-entropy over every target token of the validation split ---------


def test_val_loss_is_the_mean_cross_entropy_over_all_validation_tokens(monkeypatch, tmp_path, small_corpus):
    """Sharp predictions: per-token losses that vary a lot (weighting mistakes show), and targets whose
    float32 softmax probability is 0. Before, val_loss was log(torchmetrics' perplexity): inf there
    (softmax, then log), and fit stopped on it though the cross-entropy is finite."""
    monkeypatch.undo()  # the CLI reads CharDataModule's real signature (conftest wraps it)
    vocab = vocab_of(small_corpus)
    args = [
        f"--data.path={small_corpus}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        *TINY_MODEL,  # batch 8: 62 windows of 32, so the last batch holds 6
        f"--model.vocab={vocab}",
        "--trainer.precision=32-true",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
    ]
    cli = make_cli(args, run=False)
    sharpen(cli.model.model, 3.0)
    (results,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)

    # By hand: encode the corpus, take its last 10% as the validation split, cut it into windows.
    text = small_corpus.read_text(encoding="utf-8")
    ids = torch.tensor([vocab.index(c) for c in text])
    val = ids[int(len(ids) * 0.9) :]
    windows = ConsecutiveWindows(val, 32)
    assert len(windows) == 62 and len(windows) % 8 != 0
    x = torch.stack([windows[i][0] for i in range(len(windows))])  # [N, T]
    y = torch.stack([windows[i][1] for i in range(len(windows))])  # [N, T]
    model = cli.model.model.eval()
    with torch.no_grad():
        logits, _ = model(x)  # [N, T, V]
    expected = F.cross_entropy(logits.double().flatten(0, 1), y.flatten()).item()
    underflows = (F.softmax(logits, dim=-1).gather(-1, y[..., None]) == 0).any().item()
    assert underflows and expected > 1.0
    assert results["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert cli.trainer.callback_metrics["val_loss"].item() == pytest.approx(expected, rel=1e-6)
    assert results["val_bpc"] == pytest.approx(expected / math.log(2), rel=1e-6)


# --- e. temperature: draws follow softmax(logits / T) --------------------------------------------


def entropy(probs: torch.Tensor) -> float:
    probs = probs[probs > 0]
    return -(probs * probs.log()).sum().item()


def test_sampled_frequencies_follow_softmax_of_logits_over_temperature():
    logits = torch.tensor([-1.0, 0.0, 0.5, 2.0, 3.0])
    draws = 40_000  # each frequency within about 0.0025 (one standard deviation)
    frequencies = {}
    for temperature in (0.5, 1.0, 2.0):
        generator = torch.Generator().manual_seed(0)
        tokens = sample_next(logits.expand(draws, -1), temperature, generator=generator)  # [draws, 1]
        frequencies[temperature] = torch.bincount(tokens.flatten(), minlength=5) / draws
    for temperature, observed in frequencies.items():
        expected = torch.softmax(logits / temperature, dim=-1)
        assert (observed - expected).abs().max() < 0.012, (temperature, observed, expected)
        for other in frequencies:  # control: the temperatures are told apart by far
            if other != temperature:
                assert (observed - torch.softmax(logits / other, -1)).abs().max() > 0.08
    entropies = [entropy(frequencies[t]) for t in (0.5, 1.0, 2.0)]
    assert entropies[0] < entropies[1] < entropies[2]


def test_generation_samples_the_first_character_from_softmax_over_temperature():
    """Through ``stream_text`` (as predict and the sampler use it): many samples of one prompt."""
    module = GPTModule(**TINY, vocab="\n :EMOR")
    sharpen(module.model, 0.3)
    tokenizer, prompt, samples = module.tokenizer, "ROMEO:", 5000  # frequencies within about 0.007
    with torch.no_grad():
        logits, _ = module.model.eval()(torch.from_numpy(tokenizer.encode(prompt))[None])  # [1, 6, V]
    untempered = torch.softmax(logits[0, -1], dim=-1)  # what ignoring the temperature would give
    for temperature in (0.5, 2.0):
        (first,) = stream_text(module.model, tokenizer, prompt, 1, temperature, seed=0, num_samples=samples)
        ids = torch.from_numpy(tokenizer.encode("".join(first))).long()
        observed = torch.bincount(ids, minlength=len(tokenizer.vocab)) / samples
        expected = torch.softmax(logits[0, -1] / temperature, dim=-1)
        assert (observed - expected).abs().max() < 0.03, (temperature, observed, expected)
        assert (observed - untempered).abs().max() > 0.06, temperature  # control: told apart


def test_a_constant_learning_rate_after_warmup_is_allowed():
    module = GPTModule(**TINY, min_lr_ratio=1.0)
    assert module.hparams.min_lr_ratio == 1.0 and warmup_cosine(500, 100, 1000, 1.0) == 1.0


def test_validate_reports_a_non_finite_loss_where_fit_would_stop(tmp_path, small_corpus):
    """Only fit stops on a nan validation loss (before its checkpoints save); validate reports it."""
    data = CharDataModule(path=str(small_corpus), batch_size=8, context_length=32, cache_dir=str(tmp_path))
    data.prepare_data()
    data.setup("validate")
    module = GPTModule(**TINY, vocab=data.vocab)
    with torch.no_grad():
        module.model.ln_final.weight.fill_(float("nan"))
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=1,
        default_root_dir=tmp_path,
    )
    (metrics,) = trainer.validate(module, datamodule=data)
    assert math.isnan(metrics["val_loss"])
