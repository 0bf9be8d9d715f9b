"""The transforms work on uint8 tensors from the first step, and that changes nothing that matters."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from image_classifier.data.presets import DataConfig, eval_transform, resize_shorter, to_pixels, train_transform

CONFIG = DataConfig(input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear", crop_pct=0.875)


def photo(width: int = 500, height: int = 375) -> Image.Image:
    """Smooth gradients plus noise: resize differences show up on both."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 40, (height, width, 3))
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_tensor_resize_matches_pillow_within_one_level():
    image = photo()
    by_pillow = np.asarray(resize_shorter(CONFIG, CONFIG.resize_size)(image)).astype(int)
    by_torch = resize_shorter(CONFIG, CONFIG.resize_size)(to_pixels(image)).permute(1, 2, 0).numpy().astype(int)
    assert by_pillow.shape == by_torch.shape == (256, 341, 3)
    difference = np.abs(by_pillow - by_torch)
    assert difference.max() <= 1
    assert difference.mean() < 0.05


def test_eval_transform_takes_pillow_images_arrays_and_tensors_alike():
    image = photo()
    from_pillow = eval_transform(CONFIG)(image)
    assert from_pillow.shape == (3, 224, 224) and from_pillow.dtype == torch.float32
    assert torch.equal(from_pillow, eval_transform(CONFIG)(to_pixels(image)))
    assert torch.equal(from_pillow, eval_transform(CONFIG)(np.asarray(image)))


def test_eval_transform_is_the_normalised_pillow_pipeline_to_within_one_level():
    image = photo(640, 480)
    reference = v2.Compose(
        [
            resize_shorter(CONFIG, CONFIG.resize_size),  # on the Pillow image: Pillow's resize
            v2.CenterCrop(224),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CONFIG.mean, CONFIG.std),
        ]
    )(image)
    one_level = 1 / 255 / min(CONFIG.std)
    assert (eval_transform(CONFIG)(image) - reference).abs().max() <= one_level + 1e-6


@pytest.mark.parametrize("augment", ["light", "standard"])
def test_augmentation_is_a_function_of_the_seed(augment):
    image = photo()
    transform = train_transform(CONFIG, augment)
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    assert torch.equal(first, transform(image))
    torch.manual_seed(4)
    assert not torch.equal(first, transform(image))
    assert first.shape == (3, 224, 224)
