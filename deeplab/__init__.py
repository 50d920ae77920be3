"""DeepLabV3+ on Cityscapes: the science core (config, data, model, engine, metric)."""

__version__ = "0.1.0"
