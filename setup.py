"""
The optional compiled accelerator; everything else is in setup.cfg.

gateway.codec._speedups speeds translation up and is optional: where it
cannot be built (no compiler, no Python headers), setuptools warns and the
package installs without it, running the pure-Python codecs instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.codec._speedups",
            sources=["gateway/codec/_speedups.c"],
            optional=True,
        )
    ]
)
