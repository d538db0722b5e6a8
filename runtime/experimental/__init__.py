"""Experimental pieces: built and tested, but no runtime code path uses them.

``device_criterion``: TeaCache's decision on a CUDA device (cpp_ext's kernel), for a future
step executor that keeps the decision on the GPU.  The transformer (:mod:`..transformer`)
decides on the host today; importing this package changes nothing about what it runs.
"""
