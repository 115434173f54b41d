"""Reading pickled dataset files (CIFAR's batches) without letting them run code.

A pickle names Python callables and calls them while it loads: a crafted `data_batch_1`
can call `os.system`. CIFAR's files hold only dicts, lists, strings, bytes, ints and
numpy arrays, so `load_plain_pickle` resolves only the few names that rebuild a numpy
array (each wrapped so that it can only rebuild one, from bytes the file itself holds)
and refuses every other name before anything is called.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from arena.registry import ConfigError

_core = getattr(np, "_core", None) or np.core  # numpy 2 keeps the array code in numpy._core


class _Refused(pickle.UnpicklingError):
    """The file names a Python object outside the allowed set."""


class _NdarrayType:
    """Stands in for numpy.ndarray in the file: it may only be the first argument of
    _reconstruct. Calling the class itself (ndarray(shape)) could allocate any size from
    a few bytes of file; this stand-in is not callable."""


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, typecode):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') and then sets its state
    # (shape, dtype, raw bytes): the empty array is all this call ever makes.
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise _Refused(f"an array rebuilt from {subtype!r} with shape {shape!r} (numpy writes ndarray, (0,))")
    return _core.multiarray._reconstruct(np.ndarray, (0,), typecode)


def _frombuffer(buffer, dtype, shape, order):
    # numpy's protocol-5 form: the array's bytes are in the file; the shape must match them.
    if not isinstance(buffer, (bytes, bytearray, memoryview)):
        raise _Refused(f"an array read from a {type(buffer).__name__}, not bytes")
    return _core.numeric._frombuffer(buffer, dtype, shape, order)


def _scalar(dtype, data=None):
    # a numpy scalar (np.int64(3)) from its dtype and its bytes
    return _core.multiarray.scalar(dtype, data) if data is not None else _core.multiarray.scalar(dtype)


def _latin1(text, encoding):
    # Python 3 writes bytes into protocol 0-2 pickles as _codecs.encode(text, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r} (only latin1 rebuilds bytes)")
    return text.encode("latin1")


_ALLOWED = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}
for _module in ("numpy.core", "numpy._core"):  # files written by numpy 1 and numpy 2
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_module}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _frombuffer


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"the Python object {module}.{name}") from None


def load_plain_pickle(path: Path, what: str):
    """Unpickle `path` allowing only plain data and numpy arrays; anything else, a truncated
    or damaged file included, is a ConfigError naming the file. `what` names the file's kind
    in messages ("a CIFAR-10 batch"). Python 2 strings are read as latin1, as CIFAR's were written."""
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise ConfigError(f"data.root: {path} refers to {e}, which {what} never holds; refused to load it "
                          f"(unpickling it could run code). Replace the file with the original download") from None
    except (OSError, EOFError, MemoryError) as e:
        raise ConfigError(f"data.root: {path} could not be read as {what} ({type(e).__name__}: {e or 'ends early'}); "
                          f"the file may be truncated: replace it with the original download") from None
    except Exception as e:  # UnpicklingError, ValueError, TypeError, ... from a damaged file
        raise ConfigError(f"data.root: {path} is not {what} ({type(e).__name__}: {e}); the file may be "
                          f"damaged: replace it with the original download") from None
