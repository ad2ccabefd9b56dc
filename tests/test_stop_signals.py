"""SaveLastStep's handling of signals, step by step: which signal decides, the last step, SLURM's requeue."""

import signal
from types import SimpleNamespace

import pytest
from conftest import SLURM
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gpt.callbacks import SaveLastStep


def trainer_at(step: int, max_steps: int = 10) -> SimpleNamespace:
    """What SaveLastStep reads of a one-process trainer with no last.ckpt to write."""
    return SimpleNamespace(
        accumulate_grad_batches=1,
        global_step=step,
        max_steps=max_steps,
        world_size=1,
        fast_dev_run=False,
        checkpoint_callbacks=[],
        is_global_zero=True,
        strategy=SimpleNamespace(launcher=None),
    )


def test_the_first_of_two_signals_decides_the_exit_status(capsys):
    """SIGTERM, then Ctrl-C while the step finishes: the run stops for SIGTERM (143)."""
    save = SaveLastStep()
    save._first_step = 0
    save._note(signal.SIGTERM, None)
    save._note(signal.SIGINT, None)
    trainer = trainer_at(3)
    with pytest.raises(SIGTERMException) as stop:
        save.on_train_batch_end(trainer, None, None, None, 0)
    save.on_exception(trainer, None, stop.value)
    assert stop.value.code == 143 and capsys.readouterr().err.startswith("SIGTERM: stopped at step 3")


def test_a_signal_during_the_last_step_lets_fit_end_normally():
    """No stop is raised after the last step: the run ends anyway (status 0, last.ckpt from on_train_end)."""
    save = SaveLastStep()
    save._first_step = 0
    save._note(signal.SIGTERM, None)
    save.on_train_batch_end(trainer_at(10, max_steps=10), None, None, None, 0)  # no SIGTERMException


def test_a_new_slurm_run_still_requeues_after_its_sanity_check(monkeypatch):
    """The signals are taken at the sanity check and again when training starts (a new run has both):
    the second time must not take the callback's own note-taker for Lightning's requeue handler."""
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    requeued = []
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        # Lightning's requeue handler, as it were
        signal.signal(signal.SIGUSR1, lambda signum, frame: requeued.append(signum))
        save, trainer = SaveLastStep(), trainer_at(0)
        save.on_sanity_check_start(trainer, None)
        save.on_train_start(trainer, None)
        save._note_requeue(signal.SIGUSR1, None)  # the signal, arriving mid-step
        trainer.global_step = 1
        save.on_train_batch_end(trainer, None, None, None, 0)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert requeued == [signal.SIGUSR1]
