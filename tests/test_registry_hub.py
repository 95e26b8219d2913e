"""Registry, pretrained tags, save_pretrained / push_to_hub and loading through the Hub cache."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import harmonize
from harmonize import PretrainedCfg, create_model, list_models, list_pretrained, save_pretrained
from harmonize._registry import split_model_name_tag


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def _trained_like(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_list_models_and_filters():
    names = list_models()
    assert {"gknet", "gknet_large", "test_gknet"} <= set(names)
    assert "gknet_small" not in names  # a deprecated alias: it resolves, it is not listed
    assert names == sorted(names)
    assert list_models("gknet*") == [n for n in names if n.startswith("gknet")]
    assert all("." in n for n in list_pretrained())
    assert {split_model_name_tag(n)[0] for n in list_pretrained()} <= set(names)  # weights belong to listed architectures


def test_list_command_names_a_filter_that_matches_nothing(capsys):
    from harmonize.cli import main

    assert main(["list", "gknet*"]) == 0
    assert capsys.readouterr().out.split() == list_models("gknet*")
    assert main(["list", "--pretrained", "hdnet*"]) == 0
    assert capsys.readouterr().out.split() == list_pretrained("hdnet*")
    assert main(["list", "nosuch*"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no registered model matches 'nosuch*'" in err
    assert main(["list", "--pretrained", "composite*"]) == 2
    assert "no pretrained tag matches 'composite*'" in capsys.readouterr().err


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown pretrained tag 'test_gknet.nope'"):
        create_model("test_gknet.nope")
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("test_gknet", pretrained=True)


def test_kwargs_reach_the_model_and_are_recorded():
    m = create_model("test_gknet", use_scf=False, kernel_size=5)
    assert m.kernel_size == 5 and not m.use_scf
    assert m.model_args == {"use_scf": False, "kernel_size": 5}
    assert m.architecture == "test_gknet"


def test_save_pretrained_layout_and_local_dir_roundtrip(tmp_path):
    model = _trained_like(create_model("test_gknet", kernel_size=5)).eval()
    out = save_pretrained(model, tmp_path / "hub")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_gknet"
    assert config["model_args"] == {"kernel_size": 5}
    assert config["pretrained_cfg"]["paper"].startswith("Learning Global-aware Kernel")
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: harmonize" in card and "test_gknet" in card
    loaded = create_model(f"local-dir:{out}", pretrained=True).eval()
    assert loaded.kernel_size == 5
    assert _same_weights(model, loaded)
    image, mask = torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(image, mask), loaded(image, mask))


def test_half_weights_are_stored_fp16_and_load_into_fp32(tmp_path):
    model = _trained_like(create_model("test_gknet"))
    out = save_pretrained(model, tmp_path / "h", half=True)
    sd = load_file(str(out / "model.safetensors"))
    params = dict(model.named_parameters())
    assert all(sd[k].dtype == torch.float16 for k in params)
    assert sd["stem.1.running_var"].dtype == torch.float32  # buffers may exceed float16's range
    loaded = create_model(f"local-dir:{out}", pretrained=True)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=k)


def test_pretrained_cfg_overlay_file(tmp_path):
    model = _trained_like(create_model("test_gknet"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_model("test_gknet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert _same_weights(model, loaded)
    # checkpoint_path loads strictly too
    assert _same_weights(model, create_model("test_gknet", checkpoint_path=str(tmp_path / "w.safetensors")))


def test_strict_loading_names_the_keys(tmp_path):
    sd = create_model("test_gknet").state_dict()
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["stem.0.weight"] = torch.zeros(1, 2, 3, 3)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError) as e:
        create_model("test_gknet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "bad.safetensors")))
    msg = str(e.value)
    assert "missing keys: head.bias" in msg and "unexpected keys: extra.weight" in msg and "stem.0.weight" in msg


def test_pickle_is_refused_by_default(tmp_path):
    torch.save(create_model("test_gknet").state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        create_model("test_gknet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))
    sd = harmonize.load_state_dict(tmp_path / "w.pth", allow_pickle=True)
    assert "head.weight" in sd


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        harmonize.load_state_dict(tmp_path / "w.safetensors")


def test_save_pretrained_needs_a_registry_model(tmp_path):
    with pytest.raises(ValueError, match="create_model"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)


def _populate_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> None:
    """Lay out a Hugging Face Hub cache entry by hand, as a download would leave it."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for f in folder.iterdir():
        shutil.copy(f, snap / f.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hf_hub_loading_offline_through_the_cache(tmp_path):
    model = _trained_like(create_model("test_gknet", use_scf=False))
    folder = save_pretrained(model, tmp_path / "export", repo_id="harmonize-test/test-gknet")
    cache = tmp_path / "hub-cache"
    _populate_hub_cache(cache, "harmonize-test/test-gknet", folder)
    ref = tmp_path / "ref.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ref))
    code = (
        "import torch, harmonize, sys\n"
        "from safetensors.torch import load_file\n"
        "m = harmonize.create_model('hf-hub:harmonize-test/test-gknet', pretrained=True)\n"
        "assert m.use_scf is False\n"
        "ref = load_file(sys.argv[1])\n"
        "assert all(torch.equal(ref[k], v) for k, v in m.state_dict().items())\n"
        "cfg = harmonize.PretrainedCfg(hf_hub_id='harmonize-test/test-gknet')\n"
        "m2 = harmonize.create_model('test_gknet', use_scf=False, pretrained=True, pretrained_cfg_overlay=cfg.to_dict())\n"
        "assert all(torch.equal(ref[k], v) for k, v in m2.state_dict().items())\n"
        "try:\n"
        "    harmonize.create_model('hf-hub:harmonize-test/absent', pretrained=True)\n"
        "except FileNotFoundError as e:\n"
        "    print('absent:', type(e).__name__, e)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    r = subprocess.run([sys.executable, "-c", code, str(ref)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    assert "absent: WeightsUnavailableError hf-hub:harmonize-test/absent: config.json is not in the local Hub cache" in r.stdout
    assert "HF_HUB_OFFLINE is set" in r.stdout


@pytest.mark.parametrize(
    "error, words",
    [
        ("repo", "no such repository on the Hub"),
        ("revision", "has no revision 'v9'"),
        ("entry", "the repository has no config.json"),
        ("local", "could not be reached"),
    ],
)
def test_hub_failures_are_one_clear_error(monkeypatch, error: str, words: str):
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    from harmonize.errors import WeightsUnavailableError

    def download(repo_id, filename, **kw):
        response = httpx2.Response(404, request=httpx2.Request("HEAD", f"https://huggingface.co/{repo_id}"))
        raise {
            "repo": lambda: hub_errors.RepositoryNotFoundError("404", response=response),
            "revision": lambda: hub_errors.RevisionNotFoundError("404", response=response),
            "entry": lambda: hub_errors.RemoteEntryNotFoundError("404", response=response),
            "local": lambda: hub_errors.LocalEntryNotFoundError("offline"),
        }[error]()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(WeightsUnavailableError, match=words) as info:
        harmonize.create_model("hf-hub:someone/repo@v9", pretrained=True)
    assert str(info.value).startswith("hf-hub:someone/repo@v9: ") and isinstance(info.value, FileNotFoundError)


def test_command_offline_without_cache_is_one_line(tmp_path):
    samples = Path(harmonize.__file__).parent / "assets" / "samples"
    comp, mask = samples / "composite_images" / "l100044_1_1.jpg", samples / "masks" / "l100044_1.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HOME": str(tmp_path / "hf-home")}
    out = tmp_path / "o.png"
    r = subprocess.run([sys.executable, "-m", "harmonize", "run", str(comp), str(mask), "-o", str(out),
                        "--model", "hf-hub:harmonize-test/absent"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("harmonize run: hf-hub:harmonize-test/absent: config.json is not in the local Hub cache")
    assert not out.exists()


def test_push_to_hub_uploads_the_save_pretrained_layout(tmp_path, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create"] = (repo_id, kw)

    def upload_folder(self, repo_id, folder_path, **kw):
        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        calls["config"] = json.loads((Path(folder_path) / "config.json").read_text())
        calls["card"] = (Path(folder_path) / "README.md").read_text()
        return "https://huggingface.co/harmonize-test/x/commit/abc"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = harmonize.push_to_hub(create_model("test_gknet"), "harmonize-test/x", private=True, token="hf_fake")
    assert url.endswith("/commit/abc")
    assert calls["create"][0] == "harmonize-test/x" and calls["create"][1]["private"] is True
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert calls["config"]["architecture"] == "test_gknet"
    assert "hf-hub:harmonize-test/x" in calls["card"]


def test_pretrained_cfg_dict_roundtrip():
    cfg = PretrainedCfg(architecture="a", tag="t", hf_hub_id="o/r", metrics={"fMSE": 1.0}, input_size=(3, 128, 128))
    assert PretrainedCfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown pretrained_cfg_overlay keys"):
        cfg.overlay(nope=1)


def test_registry_hands_out_copies():
    cfg = harmonize.get_pretrained_cfg("gknet")
    cfg.metrics["x"] = 1
    cfg.file = "elsewhere"
    assert "x" not in harmonize.get_pretrained_cfg("gknet").metrics
    model = create_model("gknet")
    model.pretrained_cfg.metrics["y"] = 2
    assert "y" not in harmonize.get_pretrained_cfg("gknet").metrics and "y" not in create_model("gknet").pretrained_cfg.metrics


def test_local_dir_never_leaves_the_disk(tmp_path, monkeypatch):
    import harmonize._hub as hub

    def offline(*args, **kwargs):
        raise AssertionError("local-dir: must not reach the Hub")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        create_model("local-dir:org/typo", pretrained=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        create_model(f"local-dir:{tmp_path / 'file'}", pretrained=True)
