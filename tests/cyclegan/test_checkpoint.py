import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.fileio import save_torch as save_checkpoint
from pipeline.cyclegan.checkpoint import FORMAT, load_checkpoint, load_generators
from pipeline.cyclegan.models import DiscriminatorConfig, GeneratorConfig, build_nets


def generator_checkpoint() -> tuple[dict, object]:
    nets = build_nets(
        GeneratorConfig(ngf=4, n_blocks=1), DiscriminatorConfig(ndf=4), False, torch.Generator()
    )
    state = {
        "format": FORMAT,
        "variant": "cycle_only",
        "config": {"train": {"ngf": 4, "n_blocks": 1}, "switches": {"adversarial": False}},
        "nets": {name: net.state_dict() for name, net in nets.named().items()},
        "step": 7,
    }
    return state, nets


def test_round_trip_with_weights_only(tmp_path):
    state, _ = generator_checkpoint()
    path = tmp_path / "sub" / "checkpoint.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and torch.equal(
        loaded["nets"]["G"]["model.1.weight"], state["nets"]["G"]["model.1.weight"]
    )
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": FORMAT, "step": 1})

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": FORMAT, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class NotATensor:
    pass


def test_unsafe_missing_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="cannot load"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"format": FORMAT, "thing": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(PipelineError, match="cannot load"):  # weights_only refuses arbitrary objects
        load_checkpoint(tmp_path / "pickled.pt")
    torch.save({"step": 1}, tmp_path / "other.pt")
    with pytest.raises(PipelineError, match="not a format-2 training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_load_generators_rebuilds_both_directions(tmp_path):
    state, nets = generator_checkpoint()
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded = load_generators(tmp_path / "checkpoint.pt")
    assert loaded.variant == "cycle_only" and loaded.step == 7
    assert loaded.config["switches"] == {"adversarial": False}
    assert not loaded.G.training and not loaded.F.training
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.G(x), nets.G(x)) and torch.equal(loaded.F(x), nets.F(x))
