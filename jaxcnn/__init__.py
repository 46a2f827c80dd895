"""jaxcnn: the convolutional networks of Dive into Deep Learning (chapters 7 and 8) in JAX.

Submodules (imported on demand, so `import jaxcnn` stays fast):
  ops      functional primitives: the book's references and jax.lax conv/pool (NHWC / HWIO)
  layers   from-scratch NNX layers built on ops
  models   Flax NNX models and the registry `models.create(name, ...)`
  summary  `layer_summary(model, input_shape)`
  data     Fashion-MNIST through tensorflow-datasets (no TensorFlow)
  train    the jitted Optax train step and the fit loop
"""

__version__ = "0.1.0"
