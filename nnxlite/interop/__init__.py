"""Interoperability with other frameworks' weights.

* :mod:`nnxlite.interop.torch` -- PyTorch ``state_dict``\\ s (and
  ``.safetensors`` files written from them) into nnxlite modules and back.

Importing this package imports nothing heavy; ``nnxlite.interop.torch``
imports PyTorch only when it is handed torch tensors or asked for them.
"""
