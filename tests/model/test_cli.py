import json
import subprocess
import sys

from tests.commands import model_command
from tests.conftest import REPO


def test_info_prints_table_4_shapes_without_weights():
    out = subprocess.run([sys.executable, "-m", "model", "info", "--backbone", "imagenet256"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=120)
    info = json.loads(out.stdout)
    blocks = info["decoder_blocks"]
    assert [blocks[k] for k in ("5", "8", "12", "17")] == [[1024, 32, 32], [512, 64, 64], [256, 128, 128],
                                                          [256, 256, 256]]
    assert info["feature_dim"] == 6144 and info["pretrained"] and len(blocks) == 18
    assert info["download_url"].endswith("256x256_diffusion_uncond.pt")


def test_info_for_tiny_says_it_is_not_pretrained():
    out = model_command("info", "--backbone", "tiny", "--resolution", "64")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert "NOT PRETRAINED" in info["warning"] and info["feature_dim"] == 768
    assert info["decoder_blocks"]["17"] == [32, 64, 64]
