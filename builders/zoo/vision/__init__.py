"""The ``vision`` family: EfficientNet-Lite0 with ImageNet weights, scored on natural images."""
