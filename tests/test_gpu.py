"""Checks that need a CUDA GPU (marked ``gpu``, skipped without one); ``benchmarks/gpu_check.sh`` runs
them."""

import shutil

import pytest
import torch
from conftest import TINY_MODEL, run_cli

from lightning_gpt.cli import make_cli
from lightning_gpt.generation import generate_tokens
from lightning_gpt.module import GPTModule
from lightning_gpt.precision import auto_compile, auto_precision

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU_RUN = [
    *TINY_MODEL,
    "--model.dropout=0.1",
    "--model.decay_steps=40",
    "--trainer.accelerator=gpu",
    "--trainer.devices=1",
    "--trainer.val_check_interval=10",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false",
    "--sample.print_at_end=false",
]


def test_the_automatic_precision_on_this_gpu():
    native = torch.cuda.get_device_capability() >= (8, 0)
    assert auto_precision("auto") == ("bf16-mixed" if native else "16-mixed")
    assert auto_precision("gpu") == auto_precision("auto")


def test_a_bf16_compiled_training_step(tmp_path, small_corpus):
    if not auto_compile(torch.device("cuda")):
        pytest.skip("torch.compile is not the default on this GPU (compute capability < 8.0 or no Triton)")
    cli = make_cli(
        ["fit", f"--data.path={small_corpus}", *GPU_RUN, "--trainer.max_steps=3",
         "--trainer.precision=bf16-mixed", "--model.compile=true", f"--checkpoint.dirpath={tmp_path}/ckpt",
         f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 3
    assert cli.model._train_forward is not cli.model.model  # the compiled wrapper ran
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert not any("_orig_mod" in name for name in saved["state_dict"])


def test_greedy_generation_on_the_gpu_equals_the_cpu(tiny_checkpoint):
    module = GPTModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu", weights_only=True)
    model = module.model.eval()
    prompt = torch.from_numpy(module.tokenizer.encode("ROMEO:")).unsqueeze(0)
    on_cpu = torch.cat(list(generate_tokens(model, prompt, 60, temperature=0.0)), dim=1)
    torch.backends.cuda.matmul.allow_tf32 = False  # the same fp32 arithmetic as the CPU
    on_gpu = torch.cat(list(generate_tokens(model.cuda(), prompt, 60, temperature=0.0)), dim=1)
    assert torch.equal(on_cpu, on_gpu)


def test_predict_from_a_checkpoint_on_the_gpu(tmp_path, tiny_checkpoint):
    shutil.copy(tiny_checkpoint, tmp_path / "model.ckpt")
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.prompt=ROMEO:", "--generate.max_new_tokens=40"]
    gpu = run_cli(*args, "--trainer.accelerator=gpu", cwd=tmp_path)  # the GPU's automatic precision
    assert gpu.returncode == 0, gpu.stderr
    assert gpu.stdout.startswith("ROMEO:") and len(gpu.stdout.rstrip("\n")) == len("ROMEO:") + 40
    # In fp32 the logits are the CPU's up to rounding, and sampling draws on the CPU: the same text
    # (bf16 logits may tip a draw)
    fp32 = run_cli(*args, "--trainer.accelerator=gpu", "--trainer.precision=32-true", cwd=tmp_path)
    cpu = run_cli(*args, "--trainer.accelerator=cpu", cwd=tmp_path)
    assert fp32.returncode == cpu.returncode == 0, fp32.stderr + cpu.stderr
    assert cpu.stdout == fp32.stdout


def test_stop_and_resume_on_the_gpu_is_bit_for_bit(tmp_path, small_corpus):
    def fit(*extra: str) -> None:
        # deterministic kernels: several CUDA backward kernels (embedding, attention) sum with atomics
        args = ["fit", f"--data.path={small_corpus}", *GPU_RUN, "--trainer.deterministic=true", *extra]
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr

    fit("--trainer.max_steps=40", "--checkpoint.dirpath=whole")
    fit("--trainer.max_steps=20", "--checkpoint.dirpath=split")
    fit("--trainer.max_steps=40", "--checkpoint.dirpath=split", "--ckpt_path=last")
    whole = torch.load(tmp_path / "whole" / "last.ckpt", weights_only=True)["state_dict"]
    split = torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in whole.items():
        assert torch.equal(tensor, split[name]), f"{name} differs after resuming on the GPU"
