"""A restricted unpickler for CIFAR's batches: plain containers, bytes and numpy arrays, never arbitrary code.

A pickle calls whatever global it names, so a doctored data file could run any command under `pickle.load`. The
real batches (Python 2 pickles, protocol 2) and ones rewritten by Python 3 name only the globals allowed here; the
array builders are wrapped so that even they make nothing but plain `numpy.ndarray`s and byte strings.
"""
import pickle

import numpy as np


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global other than the few a data file needs (it could run code: never loaded)."""


def _reconstruct(subtype, shape, dtype):
    """numpy's `_reconstruct` (the protocol-2 array builder), for plain ndarrays only."""
    if subtype is not np.ndarray:
        raise ForbiddenGlobal(f"array subclass {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buffer, dtype, shape, order):
    """numpy's `_frombuffer` (the protocol-5 array builder): a copy of the buffer as an array."""
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _latin1_encode(text, encoding="utf-8"):
    """`_codecs.encode` as Python 3 uses it to pickle bytes at protocol 2 (latin-1 only: no other codec runs)."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# (module, name) -> what it loads as. numpy 1 pickles name numpy.core, numpy 2 numpy._core.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class DataUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only the globals of `_ALLOWED` (numpy arrays, dtypes, latin-1 bytes)."""

    def find_class(self, module, name):
        """The allowed object for `module.name`, else ForbiddenGlobal."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None


def load_data_pickle(handle):
    """Unpickle one data file from the binary `handle` with Python 2 strings as bytes (as CIFAR's batches need)."""
    return DataUnpickler(handle, encoding="bytes").load()
