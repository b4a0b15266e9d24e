"""One data format for every command that takes data (``--inputs``, ``--calib``, ``--data``).

Accepted sources (see :func:`open_dataset`):

* ``FILE.npz``: arrays keyed by graph input name (first axis = samples) and an
  optional ``labels`` array. A single-input model may use any single key. One
  file may hold several splits as ``SPLIT/NAME`` keys (``calib/input``,
  ``eval/input``, ``eval/labels``); choose one with ``FILE.npz:SPLIT``.
* ``FILE.npy``: one array, for a single-input model.
* a folder of ``.npy``/``.npz`` files, each as above, read one file at a time
  in name order (so statistics can stream over data larger than memory).
* a folder of images (``.png``/``.jpg``/...), preprocessed by
  :class:`ImageOptions` (size, mean, std, layout, channel order); labels come
  from sub-folder names when the images are in per-class sub-folders.

``np.load`` is always called with ``allow_pickle=False``.
"""

from onnxopt.data.dataset import (
    Dataset,
    ImageOptions,
    InputSpec,
    input_specs,
    open_dataset,
    random_dataset,
)

__all__ = ["Dataset", "ImageOptions", "InputSpec", "input_specs", "open_dataset", "random_dataset"]
