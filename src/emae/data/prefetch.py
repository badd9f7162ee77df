"""``data.device_prefetch``: the next batch made ready on the device while the current step runs.

A thread takes the loader's batches in order and runs :func:`~emae.data.loader.batch_to_device` on each (the host
to device copy and normalisation; with ``data.decode=device`` the nvJPEG decode and the batched crop too), on a
side CUDA stream, one batch ahead. The training loop's own ``batch_to_device`` call then only makes its stream wait
for that work (:class:`Prepared`). The batches, their order and the skipped files are exactly the loader's, so
runs and resumes are unchanged. Without CUDA the thread does the same work on the host.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch

_END = object()


@dataclass
class Prepared:
    """A batch already on the device: its images, the paths that failed to decode there, and the CUDA event that
    marks the end of the side stream's work on it (None on the host)."""

    imgs: torch.Tensor
    failed: list[str]
    ready: object = None

    def __len__(self) -> int:
        return self.imgs.shape[0]

    def take(self) -> tuple[torch.Tensor, list[str]]:
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.imgs.device)
            stream.wait_event(self.ready)
            self.imgs.record_stream(stream)  # the caching allocator must not reuse the memory before the step
        return self.imgs, self.failed


class DevicePrefetcher:
    """Wraps a pre-training loader (``.sampler`` passes through); iterating it yields ``(Prepared, labels,
    skipped)`` one batch ahead of the consumer."""

    def __init__(self, loader, prepare, device: torch.device, depth: int = 1) -> None:
        self.loader, self.prepare, self.device, self.depth = loader, prepare, device, depth
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.close()  # a previous epoch's thread (the loop may break out early) lets go of the loader first
        out: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(out, stop), name="emae-device-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def _fill(self, out: queue.Queue, stop: threading.Event) -> None:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            for imgs, labels, bad in self.loader:
                if stop.is_set():
                    return
                if stream is not None:
                    with torch.cuda.stream(stream):
                        ready_imgs, failed = self.prepare(imgs)
                        event = torch.cuda.Event()
                        event.record(stream)
                    item = (Prepared(ready_imgs, failed, event), labels, bad)
                else:
                    item = (Prepared(*self.prepare(imgs)), labels, bad)
                if not _put(out, item, stop):
                    return
            _put(out, _END, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            _put(out, e, stop)

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread (it finishes the batch it is preparing) before anyone else iterates the loader."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
