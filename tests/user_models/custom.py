"""Custom layers of a user's own, registered the way Keras asks (imported by `mimo export --import`)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mimo_test")
class Scale(keras.layers.Layer):
    """A learned per-feature scale: the kind of small custom layer users write."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_uniform", name="scale")

    def call(self, x):
        return x * self.scale


@keras.saving.register_keras_serializable(package="mimo_test")
class LogGamma(keras.layers.Layer):
    """log(Gamma(|x| + 1)): TensorFlow's Lgamma op has no ONNX equivalent in tf2onnx."""

    def call(self, x):
        return tf.math.lgamma(tf.abs(x) + 1.0)
