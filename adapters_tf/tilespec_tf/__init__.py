"""TensorFlow adapter for tilespec.

The tf.data loader and op hooks arrive with the TensorFlow adapter issue; for
now the distribution only registers its entry point.
"""
ADAPTER_NAME = "tensorflow"
