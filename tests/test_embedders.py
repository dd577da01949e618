"""The embedder registry: checkpoints the test builds itself load and give the module's own output."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer import checkpoint_filter_fn

from foundation.errors import ConfigError
from models.embedders import CheckpointError, create_embedder, list_embedders
from models.embedders.base import Preprocess
from models.vision_transformer import create_vit


def random_images(n: int = 3, size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def reference(model: torch.nn.Module, images: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """The module's own L2-normalised output on the same pixels, normalised by hand."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(preprocess.mean).view(1, 3, 1, 1)) / torch.tensor(preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(model.eval()(x), dim=-1)


def perturbed_vit(name: str) -> torch.nn.Module:
    """A random ViT whose LayerScale and norms are not at their init values (so a bad load shows)."""
    torch.manual_seed(0)
    model = create_vit(name)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.02)
    return model.eval()


def test_preprocessed_crops_are_writable_so_torch_takes_them_without_a_warning():
    jpeg = io.BytesIO()
    Image.fromarray(random_images(1, 300)[0]).save(jpeg, "JPEG")
    crop = Preprocess(resize=64, crop=56).from_jpeg(jpeg.getvalue())
    assert crop.shape == (56, 56, 3) and crop.flags.writeable


@pytest.mark.parametrize("name", ["vits14", "vits14_reg"])
def test_dinov2_checkpoint_loads_and_matches_the_saved_module(tmp_path, name):
    model = perturbed_vit(name)
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    embedder = create_embedder(f"dinov2:{name}", weights=tmp_path / "backbone.pth")
    images = random_images()
    assert torch.allclose(embedder(images), reference(model, images, embedder.preprocess), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "timm_name"), [("vits14", "vit_small_patch14_dinov2"), ("vits14_reg", "vit_small_patch14_reg4_dinov2")]
)
def test_state_dict_is_the_official_dinov2_layout(name, timm_name):
    """timm's converter for official DINOv2 checkpoints accepts ours strictly and gives the same output."""
    model = perturbed_vit(name)
    converted = timm.create_model(timm_name, pretrained=False, num_classes=0).eval()
    converted.load_state_dict(checkpoint_filter_fn(model.state_dict(), converted), strict=True)
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        assert torch.allclose(model(x), converted(x), atol=1e-5)


def test_missing_and_mismatched_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist"):
        create_embedder("dinov2:vits14", weights=tmp_path / "nope.pth")
    torch.save(create_vit("vits14").state_dict(), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"small\.pth.*'register_tokens'") as err:
        create_embedder("dinov2:vits14_reg", weights=tmp_path / "small.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"key 'cls_token' has shape \(1, 1, 384\).*\(1, 1, 768\)"):
        create_embedder("dinov2:vitb14", weights=tmp_path / "small.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        create_embedder("dinov2:vits14", weights=tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="needs weights"):
        create_embedder("dinov2:vits14")


def test_wrapped_training_checkpoints_are_unwrapped(tmp_path):
    model = perturbed_vit("vits14")
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "train.pth")
    embedder = create_embedder("dinov2:vits14", weights=tmp_path / "train.pth")
    images = random_images(2)
    assert torch.allclose(embedder(images), reference(model, images, embedder.preprocess), atol=1e-5)


def test_timm_checkpoint_loads_with_the_models_preprocessing(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    torch.save(model.state_dict(), tmp_path / "tiny_vit.pth")
    embedder = create_embedder("timm:vit_tiny_patch16_224", weights=tmp_path / "tiny_vit.pth")
    assert (embedder.preprocess.crop, embedder.preprocess.resize, embedder.dim) == (224, 249, 192)
    images = random_images()
    assert torch.allclose(embedder(images), reference(model, images, embedder.preprocess), atol=1e-5)
    with pytest.raises(ConfigError, match="no architecture"):
        create_embedder("timm:not_a_model", weights="random")


def test_torchscript_model_loads_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    torch.jit.script(module).save(str(tmp_path / "sscd.pt"))
    embedder = create_embedder(f"torchscript:{tmp_path / 'sscd.pt'}")
    assert embedder.dim == 8 and embedder.preprocess.crop == 288
    images = random_images(2, 288)
    assert torch.allclose(embedder(images), reference(module, images, embedder.preprocess), atol=1e-5)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_embedder(f"torchscript:{tmp_path / 'missing.pt'}")


def test_registry_lists_kinds_and_refuses_unknown_names():
    names = list_embedders()
    assert {"tiny", "dinov2:vitg14_reg", "timm:<architecture>", "torchscript:<path>"} <= set(names)
    with pytest.raises(ConfigError, match=r"unknown embedder 'clip'.*tiny"):
        create_embedder("clip")


def test_tiny_is_deterministic_unit_norm_and_checks_its_input():
    a, b = create_embedder("tiny"), create_embedder("tiny")
    images = random_images(4, 64)
    vectors = a(images)
    assert torch.equal(vectors, b(images))
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        a(images.astype(np.float32))
