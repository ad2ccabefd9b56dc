"""Checkpoint folders and checkpoints at URLs: file:// and fsspec's in-memory filesystem, in-process."""

import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch
from conftest import tiny_fit_args

from lightning_gpt.checkpoint_io import in_folder, local_path, readable_copy
from lightning_gpt.errors import UserError


def test_checkpoint_folders_at_urls(tmp_path, small_corpus, cli_main):
    def fit(*extra: str):
        return cli_main(*tiny_fit_args(small_corpus, steps=2, val_every=2), *extra, cwd=tmp_path)

    # file://: the folder at that absolute path (Lightning alone would write to ./file:/...)
    folder = tmp_path / "runs" / "a"
    assert fit(f"--checkpoint.dirpath={folder.as_uri()}").returncode == 0
    assert (folder / "last.ckpt").is_file() and not (tmp_path / "file:").exists()
    resumed = fit(f"--checkpoint.dirpath={folder.as_uri()}", "--ckpt_path=last", "--trainer.max_steps=4")
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4

    # memory:// (as s3:// or gs:// would be): saved, refused as an earlier run, resumed from a copy
    memory, url = fsspec.filesystem("memory"), f"memory://{tmp_path.name}"
    try:
        assert fit(f"--checkpoint.dirpath={url}").returncode == 0
        assert memory.isfile(f"/{tmp_path.name}/last.ckpt") and not (tmp_path / "memory:").exists()
        again = fit(f"--checkpoint.dirpath={url}")
        last_line = again.stderr.strip().splitlines()[-1]
        assert again.returncode == 2 and last_line.startswith(f"error: {url}/last.ckpt exists from an")
        resumed = fit(f"--checkpoint.dirpath={url}", "--ckpt_path=last", "--trainer.max_steps=4")
        assert resumed.returncode == 0, resumed.stderr
        with memory.open(f"/{tmp_path.name}/last.ckpt", "rb") as file:
            assert torch.load(file, weights_only=True)["global_step"] == 4
        args = [f"--ckpt_path={url}/last.ckpt", "--generate.prompt=A", "--generate.max_new_tokens=3"]
        predicted = cli_main("predict", *args, cwd=tmp_path)  # a URL is not a missing file
        assert predicted.returncode == 0 and len(predicted.stdout) == 1 + 3 + 1, predicted.stderr
        assert not memory.glob(f"/{tmp_path.name}/*.tmp")
    finally:
        memory.rm(f"/{tmp_path.name}", recursive=True)

    # what cannot be used is one line, naming the URL (not the local copy read from it)
    junk = f"memory://{tmp_path.name}-junk/bad.ckpt"
    with fsspec.open(junk, "wb") as file:
        file.write(b"not a checkpoint")
    try:
        for extra, message in {
            "--checkpoint.dirpath=nosuchfs://b/runs": "cannot use nosuchfs://b/runs: Protocol not known",
            "--ckpt_path=memory://nothing/here.ckpt": "checkpoint memory://nothing/here.ckpt does not exist",
            f"--ckpt_path={junk}": f"{junk} is not a checkpoint (not saved by PyTorch)",
        }.items():
            result = fit(extra)
            assert result.returncode == 2 and "Traceback" not in result.stderr
            assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), result.stderr
    finally:
        fsspec.filesystem("memory").rm(f"/{tmp_path.name}-junk", recursive=True)


def test_paths_and_urls_are_told_apart(tmp_path):
    """A local file is never in a folder of another filesystem with the same path (the guard against
    writing over another run's last.ckpt relies on it); file:// and local:// URLs are plain paths; a URL
    that names a folder is no checkpoint."""
    assert in_folder(str(tmp_path / "last.ckpt"), str(tmp_path))
    assert not in_folder(str(tmp_path / "last.ckpt"), f"memory://{tmp_path}")
    assert local_path(f"file://{tmp_path}") == local_path(f"local://{tmp_path}") == str(tmp_path)
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/{tmp_path.name}-folder/last.ckpt", b"weights")
    try:
        with pytest.raises(UserError, match=f"checkpoint memory://{tmp_path.name}-folder does not exist"):
            readable_copy(f"memory://{tmp_path.name}-folder")
    finally:
        memory.rm(f"/{tmp_path.name}-folder", recursive=True)


def test_the_local_copy_of_a_remote_checkpoint_is_removed_at_exit():
    """predict, validate and resumes read a URL's checkpoint from a local copy: one left behind per run
    would fill the disk with whole checkpoints."""
    script = (
        "import fsspec; from lightning_gpt.checkpoint_io import readable_copy\n"
        "fsspec.filesystem('memory').pipe('/run/last.ckpt', b'weights')\n"
        "copy = readable_copy('memory://run/last.ckpt'); print(copy, open(copy, 'rb').read() == b'weights')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    copy, same = done.stdout.split()
    assert done.returncode == 0 and same == "True", done.stderr
    assert Path(copy).name == "last.ckpt" and not Path(copy).parent.exists()
