"""The native transport (native/, Rust, a PyO3 extension) for `mimo.serving._transport`.

Everything else about the package is in pyproject.toml. This file only decides whether there is an
extension to build: with cargo on PATH, setuptools-rust compiles native/ into one abi3 extension
(CPython >= 3.11: its stable ABI has the buffer protocol, which hands large requests to numpy
without a copy) and the wheel is tagged for its platform (cp311-abi3-<platform>); without cargo,
on CPython 3.10, or with MIMO_PURE=1, nothing is compiled, the wheel is pure (py3-none-any), and
`mimo serve` runs on grpc.aio and says so once at start-up.
"""

import os
import shutil
import sys

from setuptools import setup


def rust_extensions() -> list:
    if os.environ.get("MIMO_PURE") == "1":
        return []
    if sys.version_info < (3, 11):
        print("mimo: the native transport needs CPython 3.11 or later: installing without it (grpc.aio serves)",
              file=sys.stderr)
        return []
    if shutil.which("cargo") is None:
        print("mimo: cargo is not on PATH: installing without the native transport (grpc.aio serves)",
              file=sys.stderr)
        return []
    from setuptools_rust import Binding, RustExtension

    # Not optional: with cargo on PATH a failed build fails the install (MIMO_PURE=1 opts out), rather
    # than a wheel tagged for a platform without its extension.
    return [RustExtension("mimo.serving._transport", path="native/Cargo.toml", binding=Binding.PyO3,
                          py_limited_api="auto", cargo_manifest_args=["--locked"], optional=False,
                          debug=False)]  # release for editable installs too: they are what make bench measures


extensions = rust_extensions()
setup(rust_extensions=extensions, options={"bdist_wheel": {"py_limited_api": "cp311"}} if extensions else {})
