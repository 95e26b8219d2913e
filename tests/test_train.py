"""The trainer on real data: the loss falls, a killed run resumes exactly, DDP, NaN handling, CLI."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

import harmonize
from harmonize.cli import main as cli
from harmonize.data import (
    IHarmony4Dataset,
    PairedRandomResizedCrop,
    PairedResize,
    SyntheticCompositeDataset,
)
from harmonize.losses import ForegroundMSELoss, foreground_mse_loss
from harmonize.train import (
    ResumableSampler,
    RunConfig,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    load_checkpoint_state,
    train,
)
from harmonize.train.trainer import lr_lambda
from harmonize.utils.device import cpu_bf16_step_ratio

SIZE = 48


def _train_set(labelme, n=12, seed=0):
    base = IHarmony4Dataset(labelme, split="train", cache=True)
    base.triplets = base.triplets[:n]
    return SyntheticCompositeDataset(base, transform=PairedRandomResizedCrop(SIZE, scale=(0.7, 1.0)), seed=seed)


def _trainer(labelme, out, steps, loss_fn=None, ema=0.9, eval_loader=None, n=12, amp="none"):
    torch.manual_seed(0)
    model = harmonize.create_model("test_gknet")
    ds = _train_set(labelme, n)
    loader = DataLoader(ds, batch_size=4, sampler=ResumableSampler(len(ds), seed=0), drop_last=True)
    cfg = TrainConfig(
        steps=steps, lr=2e-3, schedule="cosine", warmup_steps=2, grad_clip=1.0, ema_decay=ema,
        amp=amp, channels_last=False, ckpt_every=3, log_every=1, progress=False,
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return Trainer(model, loss_fn or ForegroundMSELoss(), opt, loader, cfg, out, eval_loader=eval_loader)


def test_foreground_mse_loss_formula():
    pred, target = torch.zeros(2, 3, 10, 10), torch.zeros(2, 3, 10, 10)
    pred[0, :, :2, :2] = 1.0  # 4 pixels x 3 channels wrong by 1
    mask = torch.zeros(2, 1, 10, 10)
    mask[0, :, :5, :5] = 1  # 25 px < A_min = 100
    mask[1] = 1  # 100 px
    # image 0: 12 / max(100, 25); image 1: 0 / 100
    assert foreground_mse_loss(pred, target, mask).item() == pytest.approx((12 / 100 + 0) / 2)
    assert foreground_mse_loss(pred, target, mask, min_area=10).item() == pytest.approx((12 / 25) / 2)
    with pytest.raises(ValueError, match="mask must be"):
        foreground_mse_loss(pred, target, mask[:, :, :5])


def test_loss_falls_on_real_data(labelme, tmp_path):
    ev = IHarmony4Dataset(labelme, split="test", transform=PairedResize(SIZE))
    ev.triplets = ev.triplets[:16]
    loader = DataLoader(ev, batch_size=8)
    trainer = _trainer(labelme, tmp_path, steps=60, eval_loader=loader, ema=0.0, n=64)

    def eval_loss():
        trainer.model.eval()
        with torch.no_grad():
            return sum(foreground_mse_loss(trainer.model(b["composite"], b["mask"]), b["real"], b["mask"]).item() for b in loader)

    before = eval_loss()
    result = trainer.fit()
    after = eval_loss()
    assert after < 0.85 * before, (before, after)  # the untrained model returns the composite
    assert result["overall"]["count"] == 16 and result["overall"]["fmse"] > 0
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr,images_per_s") and len(rows) == 61
    assert (tmp_path / "eval.jsonl").read_text().count("\n") == 1


def test_cpu_bf16_probe_leaves_the_model_and_the_random_state_as_they_were():
    torch.manual_seed(0)
    model = harmonize.create_model("test_gknet").train()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # whose statistics a step moves
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ratio = cpu_bf16_step_ratio(model, SIZE, channels_last=False)
    assert 0 < ratio < float("inf")
    assert torch.equal(rng, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("ratio", "dtype"), [(0.5, torch.bfloat16), (1.2, None)])
def test_auto_amp_on_the_cpu_follows_the_probe_and_a_resumed_run_keeps_its_choice(labelme, tmp_path, monkeypatch, ratio, dtype):
    import harmonize.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_bf16_step_ratio", lambda *a, **k: ratio)
    first = _trainer(labelme, tmp_path, steps=3, amp="auto")
    assert first.amp_dtype == dtype
    first.fit()
    assert load_checkpoint_state(tmp_path / "last.pt")["amp"] == ("bf16" if dtype else "none")
    monkeypatch.setattr(trainer_module, "cpu_bf16_step_ratio", lambda *a, **k: 1.7 - ratio)  # now the other way
    resumed = _trainer(labelme, tmp_path, steps=6, amp="auto")
    assert resumed.amp_dtype != dtype
    resumed.load_checkpoint(tmp_path / "last.pt")
    assert resumed.amp_dtype == dtype
    resumed.fit()
    assert resumed.step == 6


class _Crash(Exception):
    pass


def test_killed_run_resumes_to_identical_weights(labelme, tmp_path):
    full = _trainer(labelme, tmp_path / "full", steps=10)
    full.fit()

    calls = {"n": 0}

    def crashing_loss(pred, real, mask):
        calls["n"] += 1
        if calls["n"] == 8:  # dies during step 8: the last checkpoint is step 6
            raise _Crash
        return foreground_mse_loss(pred, real, mask)

    part = _trainer(labelme, tmp_path / "part", steps=10, loss_fn=crashing_loss)
    with pytest.raises(_Crash):
        part.fit()
    resumed = _trainer(labelme, tmp_path / "part", steps=10)
    resumed.load_checkpoint(tmp_path / "part" / "last.pt")
    assert resumed.step == 6  # 3 batches per epoch: resumes at the start of epoch 2 ...
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(full.ema.module.state_dict().items(), resumed.ema.module.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_mid_epoch_is_exact(labelme, tmp_path):
    full = _trainer(labelme, tmp_path / "full", steps=7, n=20)  # 5 batches per epoch
    full.fit()
    first = _trainer(labelme, tmp_path / "part", steps=7, n=20)
    calls = {"n": 0}

    def stop_after_4(pred, real, mask):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Crash
        return foreground_mse_loss(pred, real, mask)

    first.loss_fn = stop_after_4  # dies in step 5, mid-epoch, after the checkpoint of step 4
    first.config.ckpt_every = 4
    with pytest.raises(_Crash):
        first.fit()
    resumed = _trainer(labelme, tmp_path / "part", steps=7, n=20)
    resumed.load_checkpoint(tmp_path / "part" / "last.pt")
    assert resumed.step == 4
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_stop_at_keeps_the_full_schedule_and_resumes_to_the_full_run(labelme, tmp_path):
    full = _trainer(labelme, tmp_path / "full", steps=10)
    full.fit()
    part = _trainer(labelme, tmp_path / "part", steps=10)
    part.config.stop_at = 5
    part.fit()
    assert part.step == 5
    # the logged (next) learning rate is where the 10-step cosine puts it, not a 5-step one's end
    lr = float((tmp_path / "part" / "log.csv").read_text().splitlines()[-1].split(",")[2])
    assert lr == pytest.approx(2e-3 * lr_lambda(part.config)(5)) and lr > 2 * 2e-3 * 0.01
    rest = _trainer(labelme, tmp_path / "part", steps=10)
    rest.load_checkpoint(tmp_path / "part" / "last.pt")
    rest.fit()
    for (k, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), k
    bad = _trainer(labelme, tmp_path / "bad", steps=10)
    bad.config.stop_at = 11
    with pytest.raises(ValueError, match="stop_at must be between 0 and steps"):
        bad.fit()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(labelme, tmp_path):
    calls = {"n": 0}

    def nan_at_5(pred, real, mask):
        calls["n"] += 1
        loss = foreground_mse_loss(pred, real, mask)
        return loss * float("nan") if calls["n"] == 5 else loss

    trainer = _trainer(labelme, tmp_path, steps=10, loss_fn=nan_at_5)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5.*last\.pt"):
        trainer.fit()
    state = load_checkpoint_state(tmp_path / "last.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data, out, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    opts = {
        "model": "test_gknet", "data": data, "subsets": ["LabelMe"], "size": 32, "batch_size": 2, "steps": 3,
        "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "grad_clip": 1.0, "ema_decay": 0.0, "amp": "none",
        "workers": 0, "synthetic": 0.7, "crop_scale": 0.8, "eval_split": "none", "eval_limit": 0, "eval_every": 0,
        "ckpt_every": 3, "log_every": 1, "seed": 0, "init": None, "model_args": {},
    }
    train(RunConfig.from_dict({**opts, "progress": False}), out)
    import torch.distributed as dist

    from harmonize._hub import load_state_dict

    sd = load_state_dict(os.path.join(out, "final")) if rank == 0 else None
    dist.barrier()
    if rank != 0:
        sd = load_state_dict(os.path.join(out, "final"))
    queue.put((rank, sum(v.float().sum().item() for v in sd.values())))
    dist.destroy_process_group()


def test_ddp_two_processes_gloo(labelme, tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(labelme), str(tmp_path), queue), nprocs=2, join=True)
    results = dict(queue.get(timeout=10) for _ in range(2))
    assert results[0] == results[1]
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert len(log) == 4  # rank 0 alone writes: header + 3 steps
    state = load_checkpoint_state(tmp_path / "last.pt")
    assert state["step"] == 3


def test_train_cli_with_config_file_and_resume(labelme, tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({
        "model": "test_gknet", "data": str(labelme), "size": 32, "batch_size": 2, "steps": 2,
        "workers": 0, "eval_limit": 4, "amp": "none",
    }))
    out = tmp_path / "run"
    assert cli(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert (out / "final" / "model.safetensors").is_file() and (out / "last.pt").is_file()
    model = harmonize.create_model(f"local-dir:{out / 'final'}", pretrained=True)
    assert model.architecture == "test_gknet"
    # an existing run is not overwritten without --resume
    assert cli(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli(["train", "--config", str(cfg), "--out", str(out), "--steps", "3", "--resume", "--no-progress"]) == 0
    assert load_checkpoint_state(out / "last.pt")["step"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"modle": "x"}))
    assert cli(["train", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "unknown options ['modle'] ('modle': did you mean 'model'?)" in capsys.readouterr().err


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "harmonize", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_with_default_evaluation_finishes_and_resumes(labelme, tmp_path):
    # evaluation on (by default the 100 training photos held out for validation), sharded over
    # the two gloo ranks and gathered
    out = tmp_path / "run"
    base = ["train", "--model", "test_gknet", "--data", str(labelme), "--subsets", "LabelMe", "--size", "32",
            "--batch-size", "2", "--workers", "0", "--out", str(out), "--no-progress"]
    first = _torchrun([*base, "--steps", "3"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("weights:") == 1  # rank 0 speaks for the run
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3] and rows[0]["overall/count"] == 100  # every validation photo, once
    assert load_checkpoint_state(out / "last.pt")["step"] == 3 and (out / "final" / "model.safetensors").is_file()
    again = _torchrun([*base, "--steps", "5", "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 5] and rows[1]["overall/count"] == 100
    assert load_checkpoint_state(out / "last.pt")["step"] == 5


def test_shard_sampler_covers_every_item_once():
    from harmonize.train import ShardSampler

    parts = [list(ShardSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(11))
    assert [len(ShardSampler(11, rank=r, world_size=3)) for r in range(3)] == [4, 4, 3]


def test_run_config_is_the_one_schema(tmp_path):
    import dataclasses

    from harmonize.cli import build_parser
    from harmonize.errors import ConfigError

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest for a in train_parser._actions} - {"help", "config", "out", "resume", "device", "no_progress"}
    assert flags <= fields, flags - fields  # every flag is a field of the run configuration
    assert TrainConfig is RunConfig
    for repo_config in sorted(Path(__file__).resolve().parents[1].glob("configs/*.json")):
        RunConfig.from_file(repo_config)  # every shipped config loads and validates
    with pytest.raises(ConfigError, match="batch_size must be an integer"):
        RunConfig.from_dict({"batch_size": "4"})
    with pytest.raises(ConfigError, match="lr must be positive"):
        RunConfig(lr=0.0)
    with pytest.raises(ConfigError, match="schedule must be one of"):
        RunConfig(schedule="linear")


def test_validation_photos_are_held_out_of_training(labelme):
    from harmonize.data import FamilySynthesizer
    from harmonize.train.build import build_synthesizer, training_photos

    config = RunConfig(model="test_gknet", data=str(labelme), subsets=["LabelMe"])
    assert config.eval_split == "val"  # checkpoints are chosen on training photos, never on a test list
    train_set, val_set = training_photos(config, cache=False)
    train_photos = {t.real for t in train_set.triplets}
    val_photos = {t.real for t in val_set.triplets}
    assert len(val_photos) == 100 and len(train_photos) == 1302 and not train_photos & val_photos
    test_photos = {t.real for t in harmonize.data.IHarmony4Dataset(labelme, ["LabelMe"], split="test").triplets}
    assert not val_photos & test_photos
    assert training_photos(config.replace(eval_split="test"), cache=False)[1] is None
    assert len(training_photos(config.replace(eval_split="test"), cache=False)[0].triplets) == 1402
    assert isinstance(build_synthesizer(config.replace(families=["global_edit", "classic"])), FamilySynthesizer)
    with pytest.raises(harmonize.errors.ConfigError, match="families must be"):
        config.replace(families=["relight", "nope"])
    assert build_synthesizer(config.replace(families=["global_edit"], mild=0.25)).mild == 0.25
    with pytest.raises(harmonize.errors.ConfigError, match="mild needs families"):
        config.replace(families=None, mild=0.25)
    with pytest.raises(harmonize.errors.ConfigError, match="mild must be in"):
        config.replace(families=["global_edit"], mild=2.0)
    assert build_synthesizer(config.replace(families=["global_edit"], identity=0.1)).identity == 0.1
    with pytest.raises(harmonize.errors.ConfigError, match="identity needs families"):
        config.replace(families=None, identity=0.1)
    with pytest.raises(harmonize.errors.ConfigError, match="identity must be in"):
        config.replace(families=["global_edit"], identity=1.5)

