"""The CPU kernel (C++ in ``csrc/``, loaded with ctypes, built at first use into a cache) and the ops that
use it -- PAMR and bilinear resizing -- with their torch reference paths; ``native.for_device`` is the
one place that chooses native or torch."""
