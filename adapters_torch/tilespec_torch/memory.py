"""Batch memory of the PyTorch loader (spec/adapter_torch.md, "Workers": the
paragraphs on memory).

A batch tensor is filled row by row as its tiles are made (the loader's
``TensorStacker``) and is the memory the caller gets. Fresh memory per batch
costs a page fault per 4 KiB page on first touch, which on a virtual machine
takes as long as decoding the batch (bench/torch_loader.py), so batch memory is
reused, and never while a tensor or view the caller holds still uses it.

In the main process (``num_workers=0``, :func:`batch_tensor`): batches of
2 MiB or more live in private anonymous mappings of a :class:`BufferPool`. A
mapping is lent by a ``torch.frombuffer`` tensor, which holds a buffer export of
it until the last tensor or view of its storage is freed; a mapping only the
pool references is free again.

In DataLoader workers, batches live in shared memory (sending one to the main
process copies nothing), in the worker's **slots**. One int64 tensor in shared
memory, ``flags`` of shape (workers, slots), says for each slot whether it is
free (0) or which batch holds it (a token: the iteration's generation in the
high 32 bits, a count in the low 32, so a batch kept from an earlier iteration
never frees a slot of a later one). Who owns a slot, and when it is released:

* The worker (:class:`WorkerPool`) takes a free slot for a batch and writes the
  batch's token; the batch is sent with ``(worker, slot, token)``. With no free
  slot the batch gets fresh shared memory and no slot. A batch the worker made
  but does not send (its tiles taken back) frees its slot at once
  (:meth:`WorkerPool.release_last`).
* From then on the main process owns the slot (:class:`SlotTable`, one per
  loader iteration, or for the workers' lifetime when they persist). It writes
  0 back when no tensor of the caller's uses the batch's storage any more, and
  only if the slot still holds that batch's token. Either :class:`HeldSlots`
  keeps the slot's storage (so torch maps the slot's next batch into the same
  memory: its shared-memory cache is keyed by the file) and releases the slot,
  each time a batch arrives, once the storage's use count says that only the
  holder uses it; or, with ``pin_memory`` (the caller gets pinned copies) or
  where torch lacks the use count, a finalizer on the batch's storage releases
  the slot when the storage dies.
* The worker never writes a slot that is not free, so a batch the caller holds
  is never overwritten.

Where the main process holds the slots' storages (:class:`HeldSlots`), a worker
sends a slot's batch as a :class:`SlotRef` (worker, slot, token and the tensor's
offset, shape, strides and dtype) once that slot's buffer has reached the main
process as a tensor: the main process builds the batch tensor on the storage it
holds (:meth:`SlotTable.tensor`), so no shared-memory file descriptor travels per
batch (each costs a connection to the worker and its authentication: about 0.65 ms
of the main process's CPU per batch, and as much of the worker's).

The private torch functions used (``torch._C._storage_Use_Count``, a typed
storage's ``_new_shared``) are all here.
"""

from __future__ import annotations

import mmap
import sys
import weakref
from typing import NamedTuple

import torch
from torch.utils.data import get_worker_info

#: Batches of at least this many bytes in the main process come from the pool.
HUGE_BYTES = 2 << 20
_HAVE_MADV_HUGEPAGE = all(hasattr(mmap, n) for n in ("MADV_HUGEPAGE", "MAP_PRIVATE",
                                                      "MAP_ANONYMOUS"))
#: The number of tensors (the holder's included) using a storage; None where torch lacks it.
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _numel(shape) -> int:
    numel = 1
    for d in shape:
        numel *= d
    return numel


def _nbytes(shape, dtype) -> int:
    return _numel(shape) * torch.empty(0, dtype=dtype).element_size()


def _shared_tensor(shape, dtype) -> torch.Tensor:
    """An uninitialized tensor whose storage is shared memory."""
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(_numel(shape), device=proto.device)
    return proto.new(storage).resize_(*shape)


class BufferPool:
    """Batch memory for the main process, recycled once no tensor uses it (module
    docstring). Batches under :data:`HUGE_BYTES` (or where ``mmap`` cannot advise
    huge pages) are plain ``torch.empty``; larger ones live in private anonymous
    mappings advised to use transparent huge pages, at most ``keep`` kept per size.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._free: dict = {}

    def tensor(self, shape, dtype) -> torch.Tensor:
        """An uninitialized tensor of ``shape`` and ``dtype``."""
        nbytes = _nbytes(shape, dtype)
        if nbytes < HUGE_BYTES or not _HAVE_MADV_HUGEPAGE:
            return torch.empty(shape, dtype=dtype)
        maps = self._free.setdefault(nbytes, [])
        for mm in maps:
            if sys.getrefcount(mm) == 3:   # the list, the loop variable, the argument
                break
        else:
            mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
            if len(maps) < self.keep:
                maps.append(mm)
        return torch.frombuffer(mm, dtype=dtype).view(shape)


_POOL = BufferPool()


def batch_tensor(shape, dtype) -> torch.Tensor:
    """An uninitialized batch tensor: in a DataLoader worker its storage is fresh shared
    memory (sending the batch copies nothing, as with torch's default collate); in the
    main process it comes from the process's :class:`BufferPool`."""
    if get_worker_info() is None:
        return _POOL.tensor(shape, dtype)
    return _shared_tensor(shape, dtype)


class SlotRef(NamedTuple):
    """A batch tensor in a worker's slot, sent by reference (module docstring): the
    main process rebuilds it on the slot's storage it holds."""

    worker: int
    slot: int
    token: int
    offset: int
    shape: tuple
    stride: tuple
    dtype: torch.dtype


class WorkerPool:
    """The slots of DataLoader worker ``worker`` (module docstring): shared-memory batch
    buffers, each reused once the main process has released it.

    ``flags``: the (workers, slots) int64 tensor in shared memory; ``generation``: the
    iteration's, carried by the tokens. :meth:`tensor` hands out a free slot (or fresh
    shared memory when none is free) and records it in ``last`` as
    ``(worker, slot, token)``, None when no slot was handed out.
    """

    def __init__(self, flags: torch.Tensor, worker: int, generation: int,
                 by_reference: bool = False):
        self.flags = flags[worker].numpy()    # shared memory, read and written in place
        self.worker = worker
        self.slots = [None] * len(self.flags)
        self.by_reference = by_reference      # the main process holds the slots' storages
        self.sent = [None] * len(self.flags)  # per slot: the buffer last sent as a tensor
        self.base = (int(generation) & 0x7FFFFFFF) << 32
        self.count = 0
        self.last = None

    def start_batch(self) -> None:
        """Forget the slot of the previous batch (it is the main process's now)."""
        self.last = None

    def tensor(self, shape, dtype) -> torch.Tensor:
        """An uninitialized tensor of ``shape`` and ``dtype`` in a free slot, taken for
        a new token; a fresh :func:`batch_tensor` (``last`` None) when every slot is
        held."""
        nbytes = _nbytes(shape, dtype)
        self.last = None
        for i in range(len(self.slots)):
            if int(self.flags[i]) == 0:
                buf = self.slots[i]
                if buf is None or buf.numel() < nbytes:
                    buf = self.slots[i] = batch_tensor((nbytes,), torch.uint8)
                self.count += 1
                token = self.base | (self.count & 0xFFFFFFFF)
                self.flags[i] = token
                self.last = (self.worker, i, token)
                return buf[:nbytes].view(dtype).view(shape)
        return batch_tensor(shape, dtype)

    def release_last(self) -> None:
        """Free the slot of the last batch tensor handed out (a batch not sent)."""
        if self.last is not None:
            _, slot, token = self.last
            if int(self.flags[slot]) == token:
                self.flags[slot] = 0
            self.last = None

    def outgoing(self, images: torch.Tensor):
        """What to send for the batch ``images`` of the last slot handed out: a
        :class:`SlotRef` when the main process holds that slot's buffer (it was sent as
        a tensor before and the pool sends by reference), else ``images`` itself."""
        if self.last is None:
            return images
        _, slot, token = self.last
        buf = self.slots[slot]
        if not self.by_reference or images.untyped_storage().data_ptr() != \
                buf.untyped_storage().data_ptr():
            return images
        if self.sent[slot] is not buf:
            self.sent[slot] = buf
            return images
        return SlotRef(self.worker, slot, token, images.storage_offset(), tuple(images.shape),
                       images.stride(), images.dtype)


def _release(flags, worker: int, slot: int, token: int) -> None:
    if int(flags[worker, slot]) == token:
        flags[worker, slot] = 0


class HeldSlots:
    """The main process's hold on the storages of the workers' slots (module docstring).

    Torch maps a shared-memory batch into the main process when it arrives and unmaps
    it when the batch's storage dies, so without a hold a slot's next batch is mapped
    afresh and the caller's first read of it page-faults (770 faults, 3.3 ms more per
    50 MB batch: bench/torch_loader.py). :meth:`received` keeps the storage of the
    slot's latest batch; :meth:`release_unused` releases each slot whose storage no
    tensor but this holder uses. Needs the storage use count (``_use_count``).
    """

    def __init__(self, flags: torch.Tensor):
        self.flags = flags.numpy()   # shared memory, written in place
        self.held: dict = {}    # (worker, slot) -> [storage, token or 0 once released]

    def received(self, tensor: torch.Tensor, worker: int, slot: int, token: int) -> None:
        self.held[(worker, slot)] = [tensor.untyped_storage(), token]

    def release_unused(self) -> None:
        for (w, i), entry in self.held.items():
            storage, token = entry
            if token and _use_count(storage._cdata) <= 1:
                _release(self.flags, w, i, token)
                entry[1] = 0


class SlotTable:
    """The slots of a loader's ``num_workers`` workers, seen from the main process
    (module docstring): ``prefetch_factor + 3`` per worker (batches in flight per
    worker: prefetched, being pinned, held by the caller), ``flags`` in shared memory
    for the workers' :class:`WorkerPool`. Released through :class:`HeldSlots` unless
    ``pin_memory`` is set or torch lacks the use count; then by finalizers.
    """

    def __init__(self, num_workers: int, prefetch_factor, pin_memory: bool):
        slots = (prefetch_factor or 2) + 3
        self.flags = torch.zeros((num_workers, slots), dtype=torch.int64).share_memory_()
        self.held = (HeldSlots(self.flags) if _use_count is not None and not pin_memory
                     else None)

    @property
    def by_reference(self) -> bool:
        """Whether workers may send batches as :class:`SlotRef` (the slots' storages are
        held here)."""
        return self.held is not None

    def tensor(self, ref: SlotRef) -> torch.Tensor:
        """The batch tensor a :class:`SlotRef` stands for, on the slot's held storage."""
        storage = self.held.held[(ref.worker, ref.slot)][0]
        return torch.empty(0, dtype=ref.dtype).set_(storage, ref.offset, ref.shape, ref.stride)

    def received(self, images, slot) -> None:
        """A batch arrived from a worker: release the slots no tensor uses any more,
        then take ownership of this batch's slot (``(worker, slot, token)`` or None)
        through its ``images`` tensor (None: an empty batch)."""
        if self.held is not None:
            self.held.release_unused()
        if slot is None or images is None:
            return
        if self.held is not None:
            self.held.received(images, *slot)
        else:
            weakref.finalize(images.untyped_storage(), _release, self.flags, *slot)


__all__ = ["BufferPool", "WorkerPool", "HeldSlots", "SlotTable", "SlotRef", "batch_tensor",
           "HUGE_BYTES"]
