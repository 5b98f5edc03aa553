"""Checkpoints: written whole or not at all, and the one LATEST names is never deleted first."""

from pathlib import Path

import pytest

from rlhf_control.loop.checkpoint import load_run_checkpoint, save_checkpoint


def _writer(text: str):
    return {"blob.txt": lambda path: path.write_text(text)}


def test_a_kill_while_the_same_step_is_written_again_leaves_the_named_checkpoint_whole(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 4096, _writer("first"), {"n": 1})
    rename = Path.rename

    def killed(self, target):
        raise KeyboardInterrupt  # a second Ctrl-C or a SIGKILL just as the new copy is moved into place

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4096, _writer("second"), {"n": 2})
    monkeypatch.setattr(Path, "rename", rename)
    path, state = load_run_checkpoint(tmp_path)
    assert (path / "blob.txt").read_text() == "first" and state["n"] == 1


def test_the_same_step_written_again_is_named_and_the_older_copies_pruned(tmp_path):
    for n in range(1, 5):
        save_checkpoint(tmp_path, 4096, _writer(f"copy {n}"), {"n": n})
    path, state = load_run_checkpoint(tmp_path)
    assert state["n"] == 4 and state["step"] == 4096 and (path / "blob.txt").read_text() == "copy 4"
    assert path.name == "ckpt-000000004096-r003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == [
        "ckpt-000000004096-r002", "ckpt-000000004096-r003"]
    save_checkpoint(tmp_path, 8192, _writer("later"), {"n": 5})
    path, state = load_run_checkpoint(tmp_path)
    assert path.name == "ckpt-000000008192" and state["n"] == 5
