# The C engine is compiled by cffi in API mode at install time (see userspace/build_engine.py).
# A regular (non-editable) build also copies the package data the library reads through
# mos.resources.data_dir: the BPF program's sources and headers, and the VM tooling.
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# data directory -> file patterns (globs, so files other engineers add to bpf/ ship too)
PACKAGE_DATA = {"bpf": ("*.c", "*.h"), "vm": ("*.py", "mos-vm")}


class BuildPyWithData(build_py):
    """build_py, plus the top-level data directories copied into mos/_data/ of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's directories in place
        for name, patterns in PACKAGE_DATA.items():
            dst = Path(self.build_lib) / "mos" / "_data" / name
            self.mkpath(str(dst))
            for pattern in patterns:
                for src in sorted((HERE / name).glob(pattern)):
                    if src.is_file():
                        self.copy_file(str(src), str(dst / src.name), preserve_mode=True)


setup(cffi_modules=["userspace/build_engine.py:ffibuilder"], cmdclass={"build_py": BuildPyWithData})
