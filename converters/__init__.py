"""converters: lowering GQ codebooks to TFLite custom ops, and the C kernels that run them.

Not built yet (export issue). The packed index layout it will start from is the
bit stream of ``gq_tf.reference.pack_indices``.
"""
