"""disttrain: TensorFlow training on a parameter-server cluster."""

__version__ = "0.1.0"
