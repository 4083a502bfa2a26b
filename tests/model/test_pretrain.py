import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from model.__main__ import main
from model.backbones import Weights, describe_weights, get_backbone, load_unet, training_record_path
from model.datasets import load_dataset
from model.features import DiffusionFeatureExtractor, FeatureConfig
from model.noise_schedule import LinearNoiseSchedule
from model.pretrain import STATE_FILE, PretrainConfig, Pretraining, TrainingBatches, ddpm_loss, random_crop
from model.unet import GuidedDiffusionUNet
from tests.conftest import REPO

# tiny at 32 px, one image a batch: a step takes a fraction of a second on a CPU
CONFIG = PretrainConfig("tiny", resolution=32, steps=5, batch_size=1, lr=2e-3, ema=0.9, save_every=1, seed=3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Steps this small spend their time in synchronising threads: on a 2-core machine shared with other
    work one thread ran them 20 times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder-layout dataset of four generated 80x60 images (their masks are ignored)."""
    root = tmp_path_factory.mktemp("data") / "generated"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    (root / "classes.txt").write_text("thing\nvoid: 255\n")
    y, x = np.mgrid[0:60, 0:80]
    for i in range(4):
        image = np.stack([(x * (2 + i)) % 256, (y * 3 + 40 * i) % 256, ((x + y) * (i + 1)) % 256], -1)
        Image.fromarray(image.astype(np.uint8)).save(root / "train" / "images" / f"img{i}.png")
        Image.fromarray(np.zeros((60, 80), np.uint8)).save(root / "train" / "masks" / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def images(data):
    return load_dataset(data, "train").image_paths


@pytest.fixture(scope="module")
def straight_run(images, tmp_path_factory):
    """CONFIG's five steps without a break: (final checkpoint, state)."""
    out = tmp_path_factory.mktemp("straight")
    path = Pretraining(CONFIG, images, "generated", out).run()
    return path, torch.load(out / STATE_FILE, weights_only=True)


def test_random_crop_is_guided_diffusions_window_of_the_rescaled_image():
    image = Image.fromarray(np.arange(360 * 480 * 3, dtype=np.uint32).reshape(360, 480, 3).astype(np.uint8))
    crops = [random_crop(image, 64, np.random.default_rng(s)) for s in range(20)]
    assert all(c.shape == (64, 64, 3) and c.dtype == np.uint8 for c in crops)
    assert len({c.tobytes() for c in crops}) == 20  # windows, scales and flips differ
    assert np.array_equal(random_crop(image, 64, np.random.default_rng(5)), crops[5])


def test_a_few_steps_lower_the_ddpm_loss_on_a_fixed_batch(images, tmp_path):
    schedule = LinearNoiseSchedule()
    fixed = TrainingBatches(images, 32, 8, seed=123, num_timesteps=1000)(0)  # crops, t, noise not trained on
    run = Pretraining(replace(CONFIG, steps=4, batch_size=2, ema=0.0, save_every=4), images, "generated", tmp_path)
    with torch.no_grad():
        before = ddpm_loss(run.model.eval(), schedule, *fixed).item()
    path = run.run()
    with torch.no_grad():
        after = ddpm_loss(load_unet("tiny", path), schedule, *fixed).item()
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("save_every", [1, 2])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(images, tmp_path, straight_run,
                                                                           save_every):
    config = replace(CONFIG, save_every=save_every)

    def interrupt(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Pretraining(config, images, "generated", tmp_path).run(interrupt)
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written state left behind
    resumed = Pretraining(config, images, "generated", tmp_path)
    assert resumed.step == 3 // save_every * save_every
    path = resumed.run()
    expected_path, expected_state = straight_run
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 5 and state["losses"] == expected_state["losses"]
    for part in ("model", "ema"):
        for key, value in expected_state[part].items():
            assert torch.equal(state[part][key], value), (part, key)
    final, expected = torch.load(path, weights_only=True), torch.load(expected_path, weights_only=True)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)
    assert all(torch.equal(a, b) for a, b in zip(state["optimizer"]["state"][0].values(),
                                                expected_state["optimizer"]["state"][0].values()))


def test_a_run_with_other_settings_does_not_resume_a_state(images, tmp_path):
    Pretraining(replace(CONFIG, steps=1), images, "generated", tmp_path).run()
    with pytest.raises(ValueError, match="lr: saved 0.002, now 0.001"):
        Pretraining(replace(CONFIG, lr=1e-3), images, "generated", tmp_path)
    with pytest.raises(ValueError, match="images: saved 4, now 3"):
        Pretraining(CONFIG, images[:3], "generated", tmp_path)


def test_the_ema_is_the_moving_average_and_the_checkpoint(images, tmp_path):
    config = replace(CONFIG, steps=1, ema=0.75)
    run = Pretraining(config, images, "generated", tmp_path)
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    path = run.run()
    model, ema = run.model.state_dict(), torch.load(path, weights_only=True)
    moved = [k for k in start if not torch.equal(model[k], start[k])]
    assert moved
    for key in start:
        assert torch.allclose(ema[key], 0.75 * start[key] + 0.25 * model[key], atol=1e-7), key


def test_the_checkpoint_loads_as_the_backbones_and_gives_features(images, tmp_path, caplog, straight_run):
    path, state = straight_run
    assert path.name == "tiny-pretrained-generated.pt"
    with caplog.at_level(logging.INFO):
        unet = load_unet("tiny", path)  # the layout check inside passes
    assert "NOT PRETRAINED" not in caplog.text
    with torch.device("meta"):
        layout = {k: v.shape for k, v in GuidedDiffusionUNet(get_backbone("tiny").unet).state_dict().items()}
    assert {k: v.shape for k, v in unet.state_dict().items()} == layout
    assert all(torch.equal(v, state["ema"][k]) for k, v in unet.state_dict().items())
    extractor = DiffusionFeatureExtractor(unet, FeatureConfig(resolution=32, blocks=(5, 17), timesteps=(50,)))
    image = np.asarray(Image.open(images[0]).convert("RGB").resize((32, 32)))
    features = extractor.maps(image)[0].at(np.arange(32 * 32))
    assert features.shape == (1024, extractor.dim) and torch.isfinite(features).all()
    record = json.loads(training_record_path(path).read_text())
    assert (record["dataset"], record["images"], record["steps"], record["resolution"]) == ("generated", 4, 5, 32)
    assert record["final_loss"] == pytest.approx(np.mean(state["losses"]))
    weights = describe_weights(get_backbone("tiny"), path)
    assert weights == Weights(True, "pretrained on generated (4 images, 5 steps at 32 px), from scratch")


def test_fine_tuning_starts_from_the_checkpoint_and_leaves_the_variance_channels(images, tmp_path, tiny_unet):
    init = tmp_path / "start.pt"
    torch.save(tiny_unet.state_dict(), init)
    run = Pretraining(replace(CONFIG, steps=2, init=str(init)), images, "generated", tmp_path / "out")
    assert all(torch.equal(v, tiny_unet.state_dict()[k]) for k, v in run.model.state_dict().items())
    path = run.run()
    start = tiny_unet.out[2].weight
    assert not torch.equal(run.model.out[2].weight[:3], start[:3])  # the epsilon channels learn
    assert torch.equal(run.model.out[2].weight[3:], start[3:])  # the variance channels have no loss
    trained = torch.load(path, weights_only=True)["out.2.weight"]  # the EMA: 0.9 x + 0.1 x, up to rounding
    assert torch.allclose(trained[3:], start[3:], rtol=0, atol=1e-7) and not torch.allclose(trained[:3], start[:3])
    assert describe_weights(get_backbone("tiny"), path).description.endswith("fine-tuned from start.pt")


def test_the_cli_trains_with_a_progress_bar_and_info_describes_the_file(data, tmp_path, capsys):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "model", "pretrain", "--data", str(data), "--backbone", "tiny",
                           "--resolution", "32", "--batch-size", "2", "--steps", "3", "--save-every", "2",
                           "--ema", "0.5", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "pretrain tiny on generated" in done.stderr and "3/3" in done.stderr and "loss=" in done.stderr
    path = out / "tiny-pretrained-generated.pt"
    assert str(path) in done.stdout and "DIFFUSION_CHECKPOINT=" in done.stdout
    assert main(["info", "--backbone", "tiny", "--resolution", "32", "--checkpoint", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pretrained"] and "warning" not in info
    assert info["weights"] == "pretrained on generated (4 images, 3 steps at 32 px), from scratch"
    assert main(["info", "--backbone", "tiny", "--resolution", "32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert not info["pretrained"] and "NOT PRETRAINED" in info["warning"]


def test_ctrl_c_says_which_step_is_kept_and_the_same_command_continues(data, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "model", "pretrain", "--data", str(data), "--backbone", "tiny", "--resolution",
               "32", "--batch-size", "1", "--steps", "100000", "--save-every", "2", "--ema", "0.5", "--out", str(out)]
    # Ctrl-C's default action in the child even where the tests run as a background job (a shell
    # starts those with SIGINT ignored, and the child would inherit that)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (out / STATE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    interrupted = err.strip().splitlines()[-1]
    step = int(interrupted.split("interrupted at step ")[1].split(":")[0])
    kept = torch.load(out / STATE_FILE, weights_only=True)["step"]
    assert interrupted == (f"interrupted at step {step}: the state of step {kept} is in {out / STATE_FILE}; "
                           f"the same command continues from there") and kept in (step // 2 * 2, step // 2 * 2 - 2)
    assert not list(out.glob("*.pt.json")) and not (out / "tiny-pretrained-generated.pt").exists()


def test_a_ctrl_c_while_a_state_is_written_keeps_the_one_before_and_says_so(images, tmp_path, monkeypatch):
    """A CI run interrupted step 4 while its state was being written: the message said step 4 was
    kept (computed from the step count), the file held step 2."""
    import model.pretrain as pretrain

    run = Pretraining(replace(CONFIG, steps=6, save_every=2), images, "generated", tmp_path / "run")
    write = pretrain._atomic_save

    def interrupted_at_step_4(obj, path):
        if isinstance(obj, dict) and obj.get("step") == 4:
            raise KeyboardInterrupt
        write(obj, path)

    monkeypatch.setattr(pretrain, "_atomic_save", interrupted_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert (run.step, run.saved_step, torch.load(run.state_path, weights_only=True)["step"]) == (4, 2, 2)


def test_a_finished_run_rewrites_its_checkpoint_and_a_smaller_steps_is_refused(images, tmp_path):
    out = tmp_path / "run"
    Pretraining(CONFIG, images, "generated", out).run()
    record = training_record_path(out / "tiny-pretrained-generated.pt")
    first = json.loads(record.read_text())
    again = Pretraining(CONFIG, images, "generated", out)  # the same --steps: the checkpoint written again
    again.run()
    assert json.loads(record.read_text())["median_step_seconds"] == first["median_step_seconds"] is not None
    with pytest.raises(ValueError, match=r"already at step 5, past --steps 3: --steps 5 writes its checkpoint"):
        Pretraining(replace(CONFIG, steps=3), images, "generated", out)
