"""Building backbones, finding their pretrained weights, freezing and grouping parameters."""
