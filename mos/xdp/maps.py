"""BPF objects through libbpf (which the cffi module links): pinned objects, map elements, object info,
test runs. No system call numbers and no attribute layouts here: libbpf knows them.

Keys and values cross as bytes, ints (little-endian, sized by the map) or cffi structs of the right
size (:mod:`mos.xdp.abi`), which go to the kernel without a copy.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .._engine import ffi, lib

Key = Union[bytes, int, Any]
"""bytes, an int (native byte order) or a cffi struct (pointer) of the map's key (or value) size."""


def _check(ret: int) -> int:
    """libbpf's result, or OSError with the errno of the failed call."""
    if ret < 0:
        err = ffi.errno or -ret
        raise OSError(err, os.strerror(err))
    return ret


def obj_get(path: Union[str, Path]) -> int:
    """Opens a pinned BPF object (map or program); returns a new fd."""
    return _check(lib.bpf_obj_get(os.fsencode(str(path))))


def obj_pin(fd: int, path: Union[str, Path]) -> None:
    """Pins a BPF object under bpffs."""
    _check(lib.bpf_obj_pin(fd, os.fsencode(str(path))))


def _info(fd: int, ctype: str) -> Any:
    info = ffi.new(f"{ctype} *")
    size = ffi.new("uint32_t *", ffi.sizeof(ctype))
    _check(lib.bpf_obj_get_info_by_fd(fd, info, size))
    return info


def prog_info(fd: int) -> Dict[str, Any]:
    """``struct bpf_prog_info`` of a program fd: id, type, name, and with run-time statistics on
    (sysctl kernel.bpf_stats_enabled) run_time_ns and run_cnt."""
    info = _info(fd, "struct bpf_prog_info")
    return {"type": info.type, "id": info.id, "name": ffi.string(info.name).decode(),
            "run_time_ns": info.run_time_ns, "run_cnt": info.run_cnt}


def prog_fd_by_id(prog_id: int) -> int:
    """Opens a loaded program by id."""
    return _check(lib.bpf_prog_get_fd_by_id(prog_id))


def prog_name_by_id(prog_id: int) -> Optional[str]:
    """The name of a loaded program, or None when it cannot be opened."""
    try:
        fd = prog_fd_by_id(prog_id)
    except OSError:
        return None
    try:
        return str(prog_info(fd)["name"])
    finally:
        os.close(fd)


def prog_test_run(fd: int, frame: bytes, repeat: int = 1, *, live_frames: bool = False,
                  batch_size: int = 0) -> Tuple[int, bytes]:
    """Runs an XDP program on ``frame`` ``repeat`` times (BPF_PROG_TEST_RUN); returns (XDP action, output
    frame).

    Redirects are not carried out, unless ``live_frames`` (BPF_F_TEST_XDP_LIVE_FRAMES, what xdp-trafficgen
    uses): then each run is a real frame that the program's redirect sends, ``batch_size`` at a time.
    """
    out = ffi.new("char[]", len(frame) + 512)
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    opts.data_in = ffi.from_buffer(frame)
    opts.data_size_in = len(frame)
    opts.data_out = out
    opts.data_size_out = len(out)
    opts.repeat = repeat
    if live_frames:
        opts.flags = lib.BPF_F_TEST_XDP_LIVE_FRAMES
        opts.batch_size = batch_size
        opts.data_out = ffi.NULL  # the kernel refuses an output buffer with live frames
        opts.data_size_out = 0
    _check(lib.bpf_prog_test_run_opts(fd, opts))
    if live_frames:
        return int(opts.retval), b""
    return int(opts.retval), ffi.buffer(out, opts.data_size_out)[:]


_PERCPU_TYPES = (lib.BPF_MAP_TYPE_PERCPU_ARRAY, lib.BPF_MAP_TYPE_PERCPU_HASH, lib.BPF_MAP_TYPE_LRU_PERCPU_HASH)


class BpfMap:
    """A BPF map reached through its fd."""

    def __init__(self, fd: int, name: str = "") -> None:
        info = _info(fd, "struct bpf_map_info")
        self.fd = fd
        self.type, self.id = int(info.type), int(info.id)
        self.key_size, self.value_size = int(info.key_size), int(info.value_size)
        self.max_entries, self.flags = int(info.max_entries), int(info.map_flags)
        self.name = name or ffi.string(info.name).decode()
        self.percpu = self.type in _PERCPU_TYPES
        self.ncpus = _check(lib.libbpf_num_possible_cpus()) if self.percpu else 1
        # bytes per CPU in a value: the kernel hands each CPU's value of a per-CPU map in an 8-byte slot
        self.slot = (self.value_size + 7) // 8 * 8 if self.percpu else self.value_size

    @classmethod
    def open(cls, path: Union[str, Path]) -> BpfMap:
        """Opens a pinned map."""
        return cls(obj_get(path))

    def close(self) -> None:
        """Closes the fd (the map lives on while pinned or used by a program)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _buf(self, data: Key, size: int, what: str) -> Any:
        """``data`` as a pointer the kernel reads ``size`` bytes from."""
        if isinstance(data, int):
            return ffi.new("char[]", data.to_bytes(size, sys.byteorder))
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) != size:
                raise ValueError(f"{self.name}: {what} of {len(data)} bytes, map wants {size}")
            return ffi.from_buffer(data)
        ctype = ffi.typeof(data)
        n = ffi.sizeof(ctype.item) if ctype.kind == "pointer" else ffi.sizeof(data)
        if n != size:
            raise ValueError(f"{self.name}: {what} {ctype.cname} of {n} bytes, map wants {size}")
        return data

    def lookup_into(self, key: Key, value: Any) -> bool:
        """Reads the value into ``value`` (a cffi buffer of the map's value size, per CPU for a per-CPU map:
        see :meth:`value_buffer`); False when the key is absent."""
        ret = lib.bpf_map_lookup_elem(self.fd, self._buf(key, self.key_size, "key"), value)
        if ret < 0 and ffi.errno == errno.ENOENT:
            return False
        _check(ret)
        return True

    def value_buffer(self) -> Any:
        """A zeroed buffer for one value (all CPUs' values for a per-CPU map)."""
        return ffi.new("char[]", self.slot * self.ncpus)

    def lookup(self, key: Key) -> Optional[bytes]:
        """The value (per-CPU maps: all CPUs' values, each padded to 8 bytes), or None."""
        v = self.value_buffer()
        return ffi.buffer(v)[:] if self.lookup_into(key, v) else None

    def lookup_percpu(self, key: Key) -> List[bytes]:
        """A per-CPU map's value, one bytes object per possible CPU."""
        raw = self.lookup(key) or b""
        return [raw[i * self.slot:i * self.slot + self.value_size] for i in range(len(raw) // self.slot)]

    def update(self, key: Key, value: Key, flags: int = 0) -> None:
        """Inserts or replaces an entry (per-CPU maps: the same value on every CPU)."""
        if self.percpu:
            if not isinstance(value, int):
                value = ffi.buffer(self._buf(value, self.value_size, "value"), self.value_size)[:]
            else:
                value = value.to_bytes(self.value_size, sys.byteorder)
            v = ffi.from_buffer(value.ljust(self.slot, b"\0") * self.ncpus)
        else:
            v = self._buf(value, self.value_size, "value")
        _check(lib.bpf_map_update_elem(self.fd, self._buf(key, self.key_size, "key"), v, flags))

    def delete(self, key: Key) -> bool:
        """Removes an entry; False when it was absent."""
        ret = lib.bpf_map_delete_elem(self.fd, self._buf(key, self.key_size, "key"))
        if ret < 0 and ffi.errno in (errno.ENOENT, errno.EINVAL):
            return False
        _check(ret)
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterates over the keys (BPF_MAP_GET_NEXT_KEY)."""
        prev = ffi.NULL
        while True:
            nxt = ffi.new("char[]", self.key_size)
            ret = lib.bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0 and ffi.errno == errno.ENOENT:
                return
            _check(ret)
            yield ffi.buffer(nxt)[:]
            prev = nxt

    def array_values(self) -> bytes:
        """Every value of a (not per-CPU) array map, in key order, in as few calls as the kernel allows
        (BPF_MAP_LOOKUP_BATCH) rather than one per entry."""
        if self.percpu:
            raise ValueError(f"{self.name}: array_values() reads plain arrays, not per-CPU maps")
        keys = ffi.new("char[]", self.key_size * self.max_entries)
        values = ffi.new("char[]", self.value_size * self.max_entries)
        token, after = ffi.new("char[]", self.key_size), ffi.NULL
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        done = 0
        count = ffi.new("uint32_t *")
        while done < self.max_entries:
            count[0] = self.max_entries - done
            ret = lib.bpf_map_lookup_batch(self.fd, after, token, keys + done * self.key_size,
                                           values + done * self.value_size, count, opts)
            done += count[0]
            if ret < 0 and ffi.errno == errno.ENOENT:  # the end of the map
                break
            _check(ret)
            after = token
        return ffi.buffer(values, done * self.value_size)[:]

    def items(self) -> Iterator[Tuple[bytes, bytes]]:
        """Iterates over (key, value) pairs; entries deleted meanwhile are skipped."""
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v
