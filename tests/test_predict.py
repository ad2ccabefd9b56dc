"""``cli.py predict`` from a checkpoint alone: no config file, no corpus on disk."""

import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from conftest import CLI, Events
from lightning import Trainer

from lightning_gpt.__main__ import main
from lightning_gpt.callbacks import TextSampler
from lightning_gpt.cli import make_cli
from lightning_gpt.generation import sample_next
from lightning_gpt.module import GPTModule
from lightning_gpt.writer import SampleWriter


def test_several_prompts_and_samples(bare_dir, cli_main):
    ctrl_c = signal.getsignal(signal.SIGINT)
    result = cli_main(
        "predict",
        "--ckpt_path=model.ckpt",
        '--generate.prompt=["First", "All:"]',
        "--generate.num_samples=2",
        "--generate.max_new_tokens=10",
        "--generate.top_k=5",
        "--generate.top_p=0.9",
        f"--generate.seed={2**63 - 1}",  # prompt 2 samples with seed 0 (a seed out of range failed mid-run)
        cwd=bare_dir,
    )
    assert result.returncode == 0, result.stderr
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # predict's Ctrl-C handler is gone with it
    assert result.stdout.count("==> prompt") == 4
    assert "==> prompt 2, sample 2 <==\nAll:" in result.stdout
    # prompt i samples with seed + i (modulo 2**63): alone, with seed 0, it gives the same samples
    alone = cli_main(
        *result.args[:2], "--generate.prompt=All:", *result.args[3:7], "--generate.seed=0", cwd=bare_dir
    )
    second = result.stdout.split("==> prompt 2, sample 1 <==\n")[1].replace("prompt 2,", "prompt 1,")
    assert alone.stdout == "==> prompt 1, sample 1 <==\n" + second, alone.stderr


@pytest.mark.filterwarnings("ignore:.*infer the batch indices")  # as cli.run() filters it
def test_predict_takes_one_device_where_lightning_would_take_them_all(bare_dir, monkeypatch):
    """--trainer.devices defaults to "auto": every GPU of the machine, each printing its share."""
    monkeypatch.chdir(bare_dir)
    monkeypatch.setattr(sys, "argv", [str(CLI)])  # as if run as cli.py: no pytest arguments
    cli = make_cli(["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=2"])
    assert cli.config.predict.trainer.devices == 1  # on a CPU "auto" is one device too: the setting tells


def test_predict_says_it_ignores_more_nodes(bare_dir, cli_main):
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=2", "--trainer.num_nodes=2"]
    result = cli_main(*args, cwd=bare_dir)
    assert result.returncode == 0, result.stderr
    note = "note: predict generates on one device; ignoring --trainer.devices auto --trainer.num_nodes 2"
    assert note in result.stderr


def test_predict_reads_no_corpus_even_where_a_recipe_names_one(bare_dir, cli_main):
    """A recipe's --config on a machine without its corpus: predict needs the checkpoint alone."""
    args = ["--ckpt_path=model.ckpt", "--data.path=not/here.txt", "--generate.max_new_tokens=3"]
    result = cli_main("predict", *args, "--generate.prompt=A", cwd=bare_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("A") and len(result.stdout) == len("A") + 3 + 1  # and a newline


def test_a_prompt_file_is_one_more_prompt_after_the_others(bare_dir, cli_main):
    (bare_dir / "prompt.txt").write_text("JULIET:", encoding="utf-8")
    args = ["--ckpt_path=model.ckpt", "--generate.max_new_tokens=5", "--generate.prompt_file=prompt.txt"]
    result = cli_main("predict", *args, "--generate.prompt=ROMEO:", cwd=bare_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("==> prompt 1, sample 1 <==\nROMEO:")
    assert "\n==> prompt 2, sample 1 <==\nJULIET:" in result.stdout
    assert result.stdout.count("==> prompt") == 2
    alone = cli_main("predict", *args, "--generate.prompt=[]", cwd=bare_dir)  # the file is the one prompt
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.startswith("JULIET:") and alone.stdout.count("\n") == 1


def test_predict_asked_for_two_processes_prints_and_writes_every_sample_once(bare_dir, cli_main):
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=8"]
    prompts = '--generate.prompt=["A", "B", "C", "D"]'
    two = cli_main(
        *args, prompts, "--generate.output=two.txt",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        cwd=bare_dir,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert "predict generates on one device; ignoring --trainer.devices 2" in two.stderr
    headers = [line for line in two.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> prompt {i}, sample 1 <==" for i in range(1, 5)]
    assert (bare_dir / "two.txt").read_text() == two.stdout and "wrote 4 samples to two.txt" in two.stderr
    one = cli_main(*args, prompts, cwd=bare_dir)
    assert one.stdout == two.stdout  # the same samples as on one device


def test_under_torchrun_only_rank_0_predicts(bare_dir, cli_main, monkeypatch):
    """torchrun starts every rank with RANK set: each printed (and wrote) every sample."""
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=5", "--generate.output=out.txt"]
    monkeypatch.setenv("RANK", "1")
    other = cli_main(*args, cwd=bare_dir)
    assert other.returncode == 0 and other.stdout == "" and not (bare_dir / "out.txt").exists()
    monkeypatch.setenv("RANK", "0")
    first = cli_main(*args, cwd=bare_dir)
    assert first.returncode == 0 and len(first.stdout.rstrip("\n")) == 6 and (bare_dir / "out.txt").exists()


def test_an_empty_output_writes_no_file(bare_dir, cli_main):
    """``--generate.output="$OUT"`` with OUT unset: the samples go to stdout alone (it ended in an error)."""
    result = cli_main(
        "predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=3", "--generate.output=", cwd=bare_dir
    )
    assert result.returncode == 0 and len(result.stdout) == 1 + 3 + 1, result.stderr
    assert sorted(path.name for path in bare_dir.iterdir()) == ["model.ckpt"]


def test_an_output_that_is_a_file_predict_reads_is_refused(bare_dir, cli_main):
    """The samples replaced the checkpoint (or the prompt file) they came from, and predict exited 0."""
    checkpoint, url = (bare_dir / "model.ckpt").read_bytes(), f"file://{bare_dir}/model.ckpt"
    (bare_dir / "prompt.txt").write_text("A")
    args = [
        "predict",
        "--ckpt_path=model.ckpt",
        "--generate.max_new_tokens=2",
        "--generate.prompt_file=prompt.txt",
    ]
    for output, name in (("./model.ckpt", "checkpoint"), ("prompt.txt", "prompt file"), (url, "checkpoint")):
        result = cli_main(*args, f"--generate.output={output}", cwd=bare_dir)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip() == f"error: --generate.output {output} is the {name}; pass another file"
    assert (bare_dir / "model.ckpt").read_bytes() == checkpoint
    assert (bare_dir / "prompt.txt").read_text() == "A"


def test_an_output_that_cannot_be_written_is_one_line(bare_dir, cli_main):
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=8"]
    (bare_dir / "folder").mkdir()
    folder = cli_main(*args, "--generate.output=folder", cwd=bare_dir)  # refused before generating
    assert folder.returncode == 2 and folder.stdout == ""
    assert folder.stderr.strip() == "error: --generate.output folder is a folder; pass the path of a file"
    slash = cli_main(*args, "--generate.output=new/", cwd=bare_dir)  # it wrote a file named "new"
    assert slash.returncode == 2 and slash.stdout == "" and not (bare_dir / "new").exists()
    assert slash.stderr.strip() == "error: --generate.output new/ is a folder; pass the path of a file"
    (bare_dir / "file").write_text("not a folder")
    under = cli_main(*args, "--generate.output=file/samples.txt", cwd=bare_dir)  # found out when writing
    assert under.returncode == 2 and len(under.stdout) > 8 and "Traceback" not in under.stderr
    last = under.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write --generate.output file/samples.txt: ")  # the system's reason
    assert last.endswith("; the samples are above")
    if importlib.util.find_spec("gcsfs") is None:  # refused before generating (a traceback after it)
        gcs = cli_main(*args, "--generate.output=gs://bucket/samples.txt", cwd=bare_dir)
        assert gcs.returncode == 2 and gcs.stdout == "" and "cannot use gs://bucket/samples.txt" in gcs.stderr


def test_an_output_through_a_link_or_into_a_pipe_reaches_its_target(bare_dir, cli_main):
    """The samples were written beside a symbolic link and renamed over it (the link became a file and
    its target kept the old text; as root, --generate.output /dev/stdout replaced /dev/stdout); a pipe
    (bash's >(command), a FIFO) was refused."""
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=8"]
    (bare_dir / "runs").mkdir()
    (bare_dir / "runs" / "samples.txt").write_text("old")
    (bare_dir / "latest.txt").symlink_to(os.path.join("runs", "samples.txt"))
    linked = cli_main(*args, "--generate.output=latest.txt", cwd=bare_dir)
    assert linked.returncode == 0, linked.stderr
    assert (bare_dir / "latest.txt").is_symlink()
    assert (bare_dir / "runs" / "samples.txt").read_text() == linked.stdout
    os.mkfifo(bare_dir / "pipe")
    read = []  # a daemon thread: a file renamed over the pipe would leave it waiting for a writer
    reader = threading.Thread(target=lambda: read.append((bare_dir / "pipe").read_text()), daemon=True)
    reader.start()  # opens the pipe, then reads to its end
    piped = cli_main(*args, "--generate.output=pipe", cwd=bare_dir)
    reader.join(timeout=10)  # predict has written and closed the pipe by now
    assert piped.returncode == 0, piped.stderr
    assert read == [piped.stdout]


def test_a_reader_that_goes_away_ends_predict_quietly(bare_dir):
    """``predict | head -c 5``: the pipe closes before the samples are printed (a traceback before)."""
    command = [sys.executable, str(CLI), "predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=5"]
    environment = dict(os.environ, PYTHONWARNINGS="ignore")
    with subprocess.Popen(
        command, cwd=bare_dir, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as p:
        p.stdout.close()  # before the process has started generating
        stderr = p.stderr.read().decode()
        assert p.wait(timeout=120) == 1 and "Traceback" not in stderr, stderr[-2000:]


def test_sigterm_and_ctrl_c_end_a_long_predict(bare_dir):
    """Lightning's SIGTERM handler only noted the signal, and the generation went on to its end; Ctrl-C
    (SIGINT) exited 1. Both end predict as they end fit: 143 and 130."""
    long = "--generate.max_new_tokens=10000000"  # hours
    command = [sys.executable, str(CLI), "predict", "--ckpt_path=model.ckpt", long]
    status = {}
    for name in ("SIGTERM", "SIGINT"):  # one after the other, so each waits for its own start-up only
        with subprocess.Popen(
            command, cwd=bare_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        ) as p:
            watchdog = threading.Timer(120, p.kill)  # whatever happens, the test ends
            watchdog.start()
            next(line for line in p.stderr if "Loaded model weights" in line)  # the handlers are in place
            p.send_signal(getattr(signal, name))
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
            p.kill()
            watchdog.cancel()
            stderr = p.stderr.read()
        assert "Traceback" not in stderr, stderr[-2000:]
        status[name] = p.returncode
    assert status == {"SIGTERM": 143, "SIGINT": 130}


def test_a_stdout_that_cannot_print_the_vocabulary_is_one_line_before_generating(bare_dir, monkeypatch):
    """``PYTHONIOENCODING=ascii`` (or a Windows pipe) and a vocabulary with é: predict printed samples up to
    the first é, then a traceback (the rest, and --generate.output, were lost); fit's closing sample ended
    a finished run with a traceback and status 1."""
    checkpoint = torch.load(bare_dir / "model.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["vocab"] = checkpoint["hyper_parameters"]["vocab"].replace("z", "é")
    torch.save(checkpoint, bare_dir / "accents.ckpt")
    monkeypatch.chdir(bare_dir)
    monkeypatch.setattr(sys, "argv", [str(CLI)])  # as if run as cli.py: no pytest arguments
    ascii_stdout, stderr = io.TextIOWrapper(io.BytesIO(), encoding="ascii"), io.StringIO()
    redirected = contextlib.redirect_stdout(ascii_stdout), contextlib.redirect_stderr(stderr)
    with redirected[0], redirected[1], pytest.raises(SystemExit) as exit_:
        main(["predict", "--ckpt_path=accents.ckpt", "--generate.output=samples.txt"])
    assert exit_.value.code == 2 and stderr.getvalue().splitlines()[-1] == (
        "error: standard output (ascii) cannot print '\\xe9', a character of the model's vocabulary; "
        "set PYTHONIOENCODING=utf-8 (or PYTHONUTF8=1)"
    )
    assert ascii_stdout.buffer.getvalue() == b"" and not (bare_dir / "samples.txt").exists()
    # fit's closing sample escapes what stdout cannot print
    module, trainer = GPTModule.load_from_checkpoint("accents.ckpt"), Trainer(logger=False)
    with contextlib.redirect_stdout(ascii_stdout), contextlib.redirect_stderr(stderr):
        TextSampler(prompt="é", max_new_tokens=5).on_fit_end(trainer, module)
        ascii_stdout.flush()
    assert ascii_stdout.buffer.getvalue().startswith(b"\\xe9")
    # a stdout set to escape what it cannot print (PYTHONIOENCODING=ascii:backslashreplace) is fine
    escaping = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="backslashreplace")
    with contextlib.redirect_stdout(escaping), contextlib.redirect_stderr(io.StringIO()):
        main(["predict", "--ckpt_path=accents.ckpt", "--generate.prompt=é", "--generate.max_new_tokens=5"])
        escaping.flush()
    assert escaping.buffer.getvalue().startswith(b"\\xe9")


def test_output_to_a_url(bare_dir, cli_main):
    """Before, memory://bucket/samples.txt became a local folder named memory: (Path drops the //)."""
    fsspec = pytest.importorskip("fsspec")
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=8"]
    result = cli_main(*args, "--generate.output=memory://bucket/samples.txt", cwd=bare_dir)
    assert result.returncode == 0 and "wrote 1 sample to memory://bucket/samples.txt" in result.stderr
    assert fsspec.filesystem("memory").cat("/bucket/samples.txt").decode() == result.stdout
    assert not (bare_dir / "memory:").exists()


def test_each_prompts_samples_are_flushed_when_they_are_done(monkeypatch):
    """``predict | tee log`` shows each prompt's samples as they finish, not at the end of the run."""
    events = []
    monkeypatch.setattr(sys, "stdout", Events(events))
    SampleWriter().write_on_batch_end(None, None, ["ROMEO: a sample"], None, {"index": 0})
    assert events[0] == ("write", "ROMEO: a sample") and events[-1] == ("flush",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generate.prompt=ROMEO 2:"], "'2'"),
        (["--generate.temperature=-1"], "temperature"),
        (["--generate.top_k=0"], "top_k"),
        (["--generate.top_p=1.5"], "top_p"),
        (["--generate.max_new_tokens=0"], "max_new_tokens"),
        (["--generate.num_samples=0"], "num_samples must be >= 1"),
        (["--generate.keep=0"], "keep must be >= 1"),
        (["--generate.seed=99999999999999999999"], "seed must be in [0, 2**63), got 99999999999999999999"),
        (["--generate.keep=33"], "context_length 32"),  # known once the checkpoint is loaded
        (["--generate.interactive=true", "--generate.keep=33"], "context_length 32"),
        (["--generate.prompt=[]"], "prompt is an empty list"),  # generated nothing, and exit 0
        (
            ["--generate.prompt=AB\udcff"],
            "not in the model's vocabulary: '\\udcff'",
        ),  # a byte not UTF-8: a traceback
    ],
)
def test_bad_generation_input(bare_dir, args, message, cli_main):
    result = cli_main("predict", "--ckpt_path=model.ckpt", *args, cwd=bare_dir)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in result.stderr
    assert "Warning" not in result.stderr, result.stderr


def test_keep_the_whole_window_gives_the_seed_loop(bare_dir, cli_main, monkeypatch):
    """--generate.keep reaches the window restarts: keep = context_length (32 here) samples exactly
    what the seed's crop-and-recompute loop samples, well past the context, for the same seed."""
    checkpoint = torch.load(bare_dir / "model.ckpt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for value in checkpoint["state_dict"].values():  # sharper distributions: the window matters
        value.normal_(0.0, 0.5, generator=generator)
    torch.save(checkpoint, bare_dir / "sharp.ckpt")
    args = ["--ckpt_path=sharp.ckpt", "--trainer.accelerator=cpu", "--generate.temperature=1"]
    args += ["--generate.max_new_tokens=60"]  # the reference below is computed on the CPU in fp32
    result = cli_main("predict", *args, "--generate.prompt=ROMEO:", "--generate.keep=32", cwd=bare_dir)
    assert result.returncode == 0, result.stderr
    module = GPTModule.load_from_checkpoint(bare_dir / "sharp.ckpt", map_location="cpu", weights_only=True)
    module.eval()
    prompt = torch.from_numpy(module.tokenizer.encode("ROMEO:")).unsqueeze(0)
    idx, seed_generator = prompt, torch.Generator().manual_seed(1337)  # --generate.seed default
    with torch.no_grad():
        for _ in range(60):
            logits, _ = module.model(idx[:, -32:])  # the seed: crop, recompute everything
            idx = torch.cat((idx, sample_next(logits[:, -1], 1.0, generator=seed_generator)), dim=1)
    assert result.stdout.rstrip("\n") == module.tokenizer.decode(idx[0].numpy())
    default = cli_main("predict", *args, "--generate.prompt=ROMEO:", cwd=bare_dir)  # keep 16
    assert default.returncode == 0 and default.stdout != result.stdout
    monkeypatch.setattr(sys, "stdin", io.StringIO("ROMEO:\n"))
    interactive = cli_main(
        "predict", *args, "--generate.interactive=true", "--generate.keep=32", cwd=bare_dir
    )
    assert interactive.returncode == 0, interactive.stderr
    assert interactive.stdout == result.stdout  # the first prompt uses the same seed


def test_a_prompt_that_yaml_reads_as_a_list_is_given_as_a_list_of_one(bare_dir, cli_main):
    """What docs/generation.md tells: "- Who" alone is read as the list ["Who"]."""
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=5"]
    assert cli_main(*args, "--generate.prompt=- Who", cwd=bare_dir).stdout.startswith("Who")
    assert cli_main(*args, '--generate.prompt=["- Who"]', cwd=bare_dir).stdout.startswith("- Who")


def test_unknown_characters_can_be_dropped_and_empty_prompt_starts_a_line(bare_dir, cli_main):
    result = cli_main(
        "predict",
        "--ckpt_path=model.ckpt",
        "--generate.prompt=ROMEO 2:",
        "--generate.drop_unknown=true",
        "--generate.max_new_tokens=5",
        cwd=bare_dir,
    )
    assert result.returncode == 0 and result.stdout.startswith("ROMEO :")
    empty = cli_main(
        "predict", "--ckpt_path=model.ckpt", "--generate.prompt=", "--generate.max_new_tokens=5", cwd=bare_dir
    )
    assert empty.returncode == 0 and empty.stdout.startswith("\n") and len(empty.stdout.rstrip("\n")) >= 1


def test_predict_without_checkpoint(tmp_path, cli_main, small_corpus):
    result = cli_main("predict", "--generate.prompt=hi", cwd=tmp_path)
    assert result.returncode == 2 and "--ckpt_path" in result.stderr.strip().splitlines()[-1]
    # validate too: it would score an untrained model of the default shape, and exit 0
    result = cli_main("validate", f"--data.path={small_corpus}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: validate needs a trained model: pass --ckpt_path CHECKPOINT"
    )
