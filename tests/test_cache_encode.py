"""open_clip model loading: QuickGELU for OpenAI weights, offline tags failing fast, config files, bad options."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

import lathadapter.cache.encode as encode
from lathadapter.cache.encode import ModelError, encode_images, go_offline_without_network, load_model


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty Hugging Face cache, whatever the machine has; everything restored afterwards."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(encode, "_hub_reachable", lambda timeout=2.0: False)


def test_named_tag_without_network_fails_fast_and_says_how_to_pass_a_file(offline_hub) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelError) as error:
        load_model("ViT-B-32", "openai", device="cpu")
    assert time.perf_counter() - started < 5.0
    assert "--pretrained /path/to/checkpoint.{pt,bin,safetensors}" in str(error.value)
    assert "no network" in str(error.value)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_a_failed_load_is_reported_in_our_line_alone_and_a_good_ones_log_passes(offline_hub, tiny_clip,
                                                                                 caplog: pytest.LogCaptureFixture
                                                                                 ) -> None:
    """open_clip logs "Failed to download weights ..." at ERROR before it raises; the build reports the failure in
    its own line, so that record is dropped (docs/usage.md promises one `error:` line). A load that succeeds passes
    open_clip's records on (here its warning that `none` leaves the weights random)."""
    with caplog.at_level(logging.WARNING), pytest.raises(ModelError, match="no network"):
        load_model("ViT-B-32", "openai", device="cpu")
    assert not caplog.records, [record.getMessage() for record in caplog.records]
    with caplog.at_level(logging.WARNING):
        load_model(str(tiny_clip.config), "none", device="cpu")
    assert any("No pretrained weights loaded" in record.getMessage() for record in caplog.records)


def test_offline_mode_is_left_alone_when_the_user_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(encode, "_hub_reachable", lambda timeout=2.0: False)
    assert go_offline_without_network() is False and os.environ["HF_HUB_OFFLINE"] == "0"


@pytest.mark.parametrize(("model", "tag", "choice", "forced", "quick"), [
    ("ViT-B-16", "openai", None, True, True),
    ("ViT-B-16-quickgelu", "openai", None, False, True),
    ("ViT-B-16", "laion2b_s34b_b88k", None, False, False),
    ("ViT-B-16", "openai", False, False, False),
])
def test_quick_gelu_follows_the_weights(offline_hub, monkeypatch: pytest.MonkeyPatch, tiny_clip, model: str, tag: str,
                                        choice: bool | None, forced: bool, quick: bool) -> None:
    calls: list[dict[str, object]] = []

    def fake(name: str, **kwargs: object) -> tuple[object, object, object]:
        calls.append({"name": name, **kwargs})
        return tiny_clip.model, None, tiny_clip.preprocess

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake)
    clip = load_model(model, tag, device="cpu", quick_gelu=choice)
    assert calls[0]["force_quick_gelu"] is forced and calls[0]["pretrained"] == tag
    assert clip.fields["quick_gelu"] is quick and clip.fields["pretrained"] == tag
    assert any("QuickGELU" in note for note in clip.notes) is forced


def test_openai_checkpoint_file_gets_quick_gelu(tiny_clip, tmp_path: Path) -> None:
    checkpoint = tmp_path / "openai-tiny.pt"
    shutil.copy(tiny_clip.checkpoint, checkpoint)
    clip = load_model(str(tiny_clip.config), str(checkpoint), device="cpu")
    plain = load_model(str(tiny_clip.config), str(tiny_clip.checkpoint), device="cpu")
    assert clip.fields["quick_gelu"] is True and plain.fields["quick_gelu"] is False
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not isinstance(plain.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert clip.fields["checkpoint_sha256"] == plain.fields["checkpoint_sha256"]


def test_a_folder_named_openai_does_not_decide_quick_gelu(tiny_clip, tmp_path: Path) -> None:
    """Only the checkpoint file decides (the `openai` tag's case is in test_quick_gelu_follows_the_weights)."""
    checkpoint = tmp_path / "openai" / "weights.pt"
    checkpoint.parent.mkdir()
    shutil.copy(tiny_clip.checkpoint, checkpoint)
    clip = load_model(str(tiny_clip.config), str(checkpoint), device="cpu")
    assert clip.fields["quick_gelu"] is False and not clip.notes
    assert not isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


# open_clip's pretrained.py: the hf_hub repository of ViT-B-16's `openai` and `metaclip_400m` tags, both marked
# quick_gelu=True, and of `laion2b_s34b_b88k` (GELU).
@pytest.mark.parametrize(("repository", "quick"), [("timm/vit_base_patch16_clip_224.openai", True),
                                                   ("timm/vit_base_patch16_clip_224.metaclip_400m", True),
                                                   ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", False)])
@pytest.mark.parametrize("under", ["snapshots/0123abcd", "blobs"])
def test_a_checkpoint_in_the_hugging_face_cache_gets_its_repositorys_activation(tiny_clip, tmp_path: Path,
                                                                                 repository: str, quick: bool,
                                                                                 under: str) -> None:
    """open_clip's hub copy of OpenAI's ViT-B-16 lies in `models--timm--vit_base_patch16_clip_224.openai/snapshots/
    <revision>/open_clip_pytorch_model.bin`: passed as --pretrained it was built with GELU, silently."""
    folder = tmp_path / "hub" / f"models--{repository.replace('/', '--')}" / under
    folder.mkdir(parents=True)
    checkpoint = folder / "open_clip_pytorch_model.bin"
    shutil.copy(tiny_clip.checkpoint, checkpoint)
    clip = load_model(str(tiny_clip.config), str(checkpoint), device="cpu")
    assert clip.fields["quick_gelu"] is quick
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU) is quick
    assert clip.notes == ([f"{checkpoint} is open_clip's {repository} from the Hugging Face cache, trained with "
                           f"QuickGELU: building {tiny_clip.name} with QuickGELU (as {tiny_clip.name}-quickgelu); "
                           "pass --no-quick-gelu to keep GELU"] if quick else [])


def test_model_config_json_is_registered_and_recorded(tiny_clip) -> None:
    clip = load_model(str(tiny_clip.config), "none", device="cpu", seed=3)
    again = load_model(str(tiny_clip.config), "none", device="cpu", seed=3)
    assert clip.fields["model"] == tiny_clip.name and clip.fields["pretrained"] == "none"
    assert clip.fields["model_config"]["embed_dim"] == clip.embed_dim == 32
    assert clip.image_size == (32, 32)
    assert all(torch.equal(a, b) for a, b in zip(clip.model.parameters(), again.model.parameters(), strict=True))


def test_bf16_features_stay_close_to_fp32(tiny_clip) -> None:
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exact = encode_images(load_model(str(tiny_clip.config), str(tiny_clip.checkpoint), device="cpu"), pixels)
    low = encode_images(load_model(str(tiny_clip.config), str(tiny_clip.checkpoint), device="cpu",
                                   precision="bf16"), pixels)
    assert low.dtype == torch.float32 and torch.allclose(low.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert (exact * low).sum(dim=-1).min() > 0.98


def test_bad_model_options_are_named(tiny_clip, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="'ViT-B-61' is not an open_clip model name. Close names: .*ViT-B-16"):
        load_model("ViT-B-61", "none", device="cpu")
    broken = tmp_path / "broken.json"
    broken.write_text('{"embed_dim": 32}')
    with pytest.raises(ModelError, match="missing vision_cfg, text_cfg"):
        load_model(str(broken), "none", device="cpu")
    broken.write_text('{"embed_dim": 32,\n "vision_cfg": }')
    with pytest.raises(ModelError, match=f"^--model {broken}: invalid JSON at line 2, column 16: Expecting value$"):
        load_model(str(broken), "none", device="cpu")
    latin = '{"embed_dim": 32, "name": "modèle"}'
    broken.write_bytes(latin.encode("latin-1"))  # one byte a character
    with pytest.raises(ModelError, match=f"^--model {broken}: line 1: byte 0xe8 at offset {latin.index('è')} is not "
                                         "UTF-8"):
        load_model(str(broken), "none", device="cpu")
    bom = tmp_path / "bom.json"  # a UTF-8 byte-order mark: open_clip's own reading of the file failed on it
    bom.write_text("\ufeff" + tiny_clip.config.read_text(), encoding="utf-8")
    with pytest.raises(ModelError, match=f"^--model {bom} starts with a UTF-8 byte-order mark, which open_clip cannot "
                                         "read; save it as UTF-8 without one$"):
        load_model(str(bom), "none", device="cpu")
    with pytest.raises(ModelError, match="model-config file does not exist"):
        load_model(str(tmp_path / "nothing.json"), "none", device="cpu")
    with pytest.raises(ModelError, match="--precision 'fp64' is not valid; valid: fp32, fp16, bf16, amp"):
        load_model(str(tiny_clip.config), "none", precision="fp64", device="cpu")
    with pytest.raises(ModelError, match="checkpoint file does not exist"):
        load_model(str(tiny_clip.config), str(tmp_path / "weights.pt"), device="cpu")
    with pytest.raises(ModelError, match="'openaii' is not a pretrained tag of ViT-B-32; its tags: .*openai"):
        load_model("ViT-B-32", "openaii", device="cpu")
    with pytest.raises(ModelError, match="'gpu0' is not a torch device"):
        load_model(str(tiny_clip.config), "none", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available on this machine; use --device cpu"):
            load_model(str(tiny_clip.config), "none", device="cuda")


def test_a_failure_to_build_the_model_is_not_blamed_on_a_checkpoint(tiny_clip, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    """Running out of device memory while the model is built is said as such, whatever --pretrained is; with
    --pretrained none (a random init) there is no checkpoint to blame. Both said 'cannot load it as the weights of
    --model ...; pass the --model the checkpoint was trained as'."""
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", out_of_memory)
    for pretrained in (str(tiny_clip.checkpoint), "none"):
        with pytest.raises(ModelError) as raised:
            load_model(str(tiny_clip.config), pretrained, device="cpu")
        assert str(raised.value) == (f"--device cpu: out of memory building {tiny_clip.name} (OutOfMemoryError: "
                                     "CUDA out of memory. Tried to allocate 1.50 GiB); free the device's memory or "
                                     "pass --device cpu")

    def bad_config(*args: object, **kwargs: object) -> None:
        raise ValueError("vision_cfg: layers must be positive")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", bad_config)
    with pytest.raises(ModelError) as raised:
        load_model(str(tiny_clip.config), "none", device="cpu")
    assert str(raised.value) == (f"cannot build --model {tiny_clip.name} with --pretrained none (ValueError: "
                                 "vision_cfg: layers must be positive)")
    with pytest.raises(ModelError, match="cannot load it as the weights of --model"):  # a checkpoint: its fault
        load_model(str(tiny_clip.config), str(tiny_clip.checkpoint), device="cpu")
