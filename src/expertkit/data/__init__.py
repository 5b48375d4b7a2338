"""SFT data: load, map, preprocess, render with exact loss masks, pack, validate, cache.

The entry points are :func:`expertkit.data.prepare.data_job` and
:func:`expertkit.data.prepare.prepare_data`; see :mod:`expertkit.data.packing` for the packed
layout and :mod:`expertkit.data.templates` for how masks are derived.
"""
