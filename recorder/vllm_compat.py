"""Fixes of vLLM bugs the recorder runs into, applied only to the vLLM versions that have them.

Each function checks for the upstream fix first and does nothing where it is
present, so a newer vLLM runs unchanged. This module imports vllm.
"""

from __future__ import annotations

import logging
import weakref

log = logging.getLogger("parity")


def _close_message_queue(context, sockets) -> None:
    for socket in sockets:
        socket.close(linger=0)
    context.term()


def _close_on_collect(queue) -> None:
    sockets = [getattr(queue, "local_socket", None), getattr(queue, "remote_socket", None)]
    spin = getattr(queue, "_spin_condition", None)
    if spin is not None:
        sockets += [getattr(spin, n, None) for n in ("local_notify_socket", "read_cancel_socket", "write_cancel_socket")]
    sockets = [s for s in sockets if s is not None]
    if sockets:
        finalizer = weakref.finalize(queue, _close_message_queue, sockets[0].context, sockets)
        finalizer.atexit = False


def close_message_queues_on_collect() -> bool:
    """Backports vLLM 0.32's zmq finalizer of ``MessageQueue`` to older vLLM (0.30, which NPU hosts run).

    vLLM 0.30 leaves a multiprocess executor's message-queue sockets and their
    zmq context to the garbage collector. When both are collected in one cycle
    pyzmq's ``Context.__del__`` blocks forever in ``term()``, and the next
    engine started in the same process hangs in its start-up ``gc.collect``
    (any recording after a ``--tp``/``--pp`` > 1 one). vLLM 0.32 registers a
    finalizer that closes the sockets first
    (``shm_broadcast.MessageQueue._close_zmq_on_collect``); this registers the
    same one where it is missing. Returns whether it patched anything.
    """
    from vllm.distributed.device_communicators import shm_broadcast

    queue_cls = shm_broadcast.MessageQueue
    if hasattr(queue_cls, "_close_zmq_on_collect") or getattr(queue_cls, "_parity_closes_on_collect", False):
        return False
    init, from_handle = queue_cls.__init__, queue_cls.create_from_handle

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _close_on_collect(self)

    def create_from_handle(*args, **kwargs):
        queue = from_handle(*args, **kwargs)
        _close_on_collect(queue)
        return queue

    queue_cls.__init__ = __init__
    queue_cls.create_from_handle = staticmethod(create_from_handle)
    queue_cls._parity_closes_on_collect = True
    log.debug("backported vLLM 0.32's MessageQueue zmq finalizer")
    return True
