import math
from pathlib import Path

import torch

from model.unet import (AttentionBlock, GuidedDiffusionUNet, UNetConfig, decoder_block_channels,
                        decoder_block_shapes, timestep_embedding)
from tests.fixtures import unet_golden

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "guided_diffusion_256_keys.txt"
GOLDEN_TOLERANCE = 1e-5  # of the largest magnitude: float32 sums taken in another order

TABLE_4 = {0: [1024, 8, 8], 1: [1024, 8, 8], 2: [1024, 16, 16], 3: [1024, 16, 16], 4: [1024, 16, 16],
           5: [1024, 32, 32], 6: [512, 32, 32], 7: [512, 32, 32], 8: [512, 64, 64], 9: [512, 64, 64],
           10: [512, 64, 64], 11: [512, 128, 128], 12: [256, 128, 128], 13: [256, 128, 128],
           14: [256, 256, 256], 15: [256, 256, 256], 16: [256, 256, 256], 17: [256, 256, 256]}


def test_decoder_block_shapes_match_paper_table_4():
    shapes = decoder_block_shapes(UNetConfig())
    assert {i: s for i, s in enumerate(shapes)} == TABLE_4
    assert [s[0] for s in shapes] == decoder_block_channels(UNetConfig())


def test_state_dict_layout_equals_openai_checkpoint():
    """Keys and shapes of 256x256_diffusion_uncond.pt, in file order, as read from guided-diffusion."""
    expected = []
    for line in FIXTURE.read_text().splitlines():
        key, shape = line.split(" ", 1)
        expected.append((key, [int(v) for v in shape.strip("[]").split(",")]))
    with torch.device("meta"):
        unet = GuidedDiffusionUNet(UNetConfig())
    actual = [(k, list(v.shape)) for k, v in unet.state_dict().items()]
    assert actual == expected
    assert sum(math.prod(s) for _, s in expected) == 552_814_086


def test_decoder_features_are_the_path_of_the_full_forward():
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=64, model_channels=32, num_head_channels=32)
    unet = GuidedDiffusionUNet(cfg).eval()
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([50, 250])
    with torch.no_grad():
        last = unet.decoder_features(x, t, (17,))[0]
        assert torch.allclose(unet.out(last), unet(x, t), atol=1e-5)
        a, b = unet.decoder_features(x, t, (12, 5))
        assert a.shape == (2, 32, 32, 32) and b.shape == (2, 128, 8, 8)


def test_attention_equals_legacy_einsum_arithmetic():
    torch.manual_seed(1)
    block = AttentionBlock(64, num_head_channels=32).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        b, c = 2, 64
        flat = x.reshape(b, c, -1)
        qkv = block.qkv(block.norm(flat))
        heads, ch = 2, 32
        q, k, v = qkv.reshape(b * heads, 3 * ch, 16).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, 16)
        expected = (flat + block.proj_out(a)).reshape(x.shape)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    assert torch.allclose(emb[1, :4], torch.cos(10 * freqs)) and torch.allclose(emb[1, 4:], torch.sin(10 * freqs))
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_outputs_match_guided_diffusions_own_code():
    """Against outputs that openai/guided-diffusion's UNetModel computed for the same small
    configuration, weights and inputs (tests/fixtures/unet_golden.py says how they were made)."""
    golden = torch.load(unet_golden.FILE, weights_only=True)
    config = UNetConfig(image_size=unet_golden.IMAGE_SIZE, model_channels=unet_golden.MODEL_CHANNELS,
                        channel_mult=unet_golden.CHANNEL_MULT, num_res_blocks=unet_golden.NUM_RES_BLOCKS,
                        attention_resolutions=unet_golden.ATTENTION_RESOLUTIONS,
                        num_head_channels=unet_golden.HEAD_CHANNELS)
    model = GuidedDiffusionUNet(config)
    assert list(model.state_dict()) == golden["keys"]
    unet_golden.fill(model).eval()
    x, t = unet_golden.inputs()
    with torch.no_grad():
        blocks = model.decoder_features(x, t, tuple(range(config.num_decoder_blocks)))
        out = model(x, t)
    assert len(blocks) == len(golden["decoder_blocks"])
    for ours, theirs in zip([*blocks, out], [*golden["decoder_blocks"], golden["output"]]):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() <= GOLDEN_TOLERANCE * theirs.abs().max()
