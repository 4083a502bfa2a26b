import logging
from pathlib import Path

import pytest
import torch

from model.backbones import BACKBONES, CheckpointError, get_backbone, load_unet

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "guided_diffusion_256_keys.txt"


def _openai_layout() -> list[tuple[str, list[int]]]:
    out = []
    for line in FIXTURE.read_text().splitlines():
        key, shape = line.split(" ", 1)
        out.append((key, [int(v) for v in shape.strip("[]").split(",")]))
    return out


@pytest.fixture(scope="module")
def full_size_checkpoint(tmp_path_factory) -> Path:
    """A 2.2 GB fp32 file in the exact key layout of 256x256_diffusion_uncond.pt, built from the
    recorded layout rather than from our own model, with two recognisable tensors."""
    state = {k: torch.zeros(s) for k, s in _openai_layout()}
    state["time_embed.0.bias"].fill_(0.25)
    state["output_blocks.17.0.out_layers.3.weight"].fill_(-1.5)
    path = tmp_path_factory.mktemp("ckpt") / "256x256_diffusion_uncond.pt"
    torch.save(state, path)
    del state
    return path


@pytest.mark.parametrize("name", ["imagenet256", "lsun_bedroom"])
def test_full_size_checkpoint_in_openai_layout_loads(full_size_checkpoint, name):
    unet = load_unet(name, full_size_checkpoint)
    assert torch.all(unet.time_embed[0].bias == 0.25)
    assert torch.all(unet.output_blocks[17][0].out_layers[3].weight == -1.5)
    assert not unet.training and not any(p.requires_grad for p in unet.parameters())
    assert all(p.dtype == torch.float32 for p in unet.parameters())


def test_tiny_checkpoint_round_trip(tmp_path, tiny_unet):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_unet.state_dict(), path)
    loaded = load_unet("tiny", path)
    for (k, a), b in zip(tiny_unet.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_tiny_without_checkpoint_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        a = load_unet("tiny", seed=3)
    assert "NOT PRETRAINED" in caplog.text
    b = load_unet("tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_pretrained_backbone_never_falls_back_to_random_weights():
    with pytest.raises(CheckpointError) as err:
        load_unet("imagenet256", None)
    msg = str(err.value)
    assert "256x256_diffusion_uncond.pt" in msg and BACKBONES["imagenet256"].url in msg


def test_missing_file_names_file_configuration_and_url(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_unet("lsun_bedroom", tmp_path / "nowhere.pt")
    msg = str(err.value)
    assert str(tmp_path / "nowhere.pt") in msg and "lsun_bedroom.pt" in msg
    assert "model_channels=256" in msg and "https://openaipublic.blob.core.windows.net" in msg


def test_truncated_file_is_reported(tmp_path, tiny_unet):
    path = tmp_path / "cut.pt"
    torch.save(tiny_unet.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read"):
        load_unet("tiny", path)


def test_mismatched_checkpoint_lists_what_differs(tmp_path, tiny_unet):
    path = tmp_path / "256x256_diffusion_uncond.pt"
    torch.save(tiny_unet.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_unet("imagenet256", path)
    msg = str(err.value)
    assert "shape mismatches" in msg and "imagenet256" in msg and "256x256_diffusion_uncond.pt" in msg


def test_foreign_pickle_is_rejected(tmp_path):
    path = tmp_path / "lsun_bedroom.pt"
    torch.save({"not": "a state dict"}, path)
    with pytest.raises(CheckpointError):
        load_unet("lsun_bedroom", path)


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="imagenet256"):
        get_backbone("imagenet512")
