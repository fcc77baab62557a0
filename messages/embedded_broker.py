"""The embedded default's broker: kombu's file-system transport, with whole-file writes."""

import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem, virtual
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    """A file-system channel whose files are only ever seen whole.

    kombu 5.7 creates an exchange table with `open("wb")`, which empties the file before the
    lock is taken, and writes a message file after creating it under its final name. Web,
    worker, beat, Flower and `celery inspect` share the folders, so at start-up another process
    read an empty or overwritten-in-place table ("Expecting value", "Extra data") and two
    processes binding to a new exchange at once kept only one binding: `celery inspect` failed
    and Flower said "Unknown worker"; a worker that took a message file still empty stopped
    ("Unrecoverable error"), and honcho with it. Here a file is written under a temporary name
    and renamed into place (readers see the old file or the new one), and a table's
    read-modify-write holds a lock on a separate file, which no write ever empties.
    """

    def get_table(self, exchange):
        """The (routing key, pattern, queue) bindings of `exchange`."""
        file = self._exchange_file(exchange)  # type: ignore[attr-defined]  # not in kombu's stubs
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [filesystem.exchange_queue_t(*binding) for binding in loads(data)]

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange):
            table = self.get_table(exchange)
            if binding not in table:
                self._write_table(exchange, [binding, *table])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        # The virtual channel's bookkeeping, without kombu's in-place rewrite of the table.
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange):
            table = self.get_table(exchange)
            if binding in table:
                table.remove(binding)
                self._write_table(exchange, table)

    # kombu's own file-system Channel narrows the signature the same way (its stub ignores it).
    def _put(self, queue, payload, **kwargs):  # type: ignore[override]
        """Put `payload` onto `queue`."""
        # kombu's name: consumers take a queue's files in name (time) order.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        path = Path(self.data_folder_out) / name
        try:
            _write_whole(path, dumps(payload).encode())
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc

    @contextmanager
    def _table_lock(self, exchange):
        """Hold the exclusive lock on `exchange`'s table, across processes."""
        file = self._exchange_file(exchange)  # type: ignore[attr-defined]  # not in kombu's stubs
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Unbuffered (a FileIO, what kombu's lock takes): nothing is ever written to it.
            lock_file = open(file.with_name(f"{file.name}.lock"), "ab", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise ChannelError(f"Cannot lock {file}") from exc
        with lock_file:
            filesystem.lock(lock_file, filesystem.LOCK_EX)  # type: ignore[attr-defined]  # not in kombu's stubs
            try:
                yield
            finally:
                filesystem.unlock(lock_file)

    def _write_table(self, exchange, table):
        file = self._exchange_file(exchange)  # type: ignore[attr-defined]  # not in kombu's stubs
        try:
            _write_whole(file, dumps(table).encode())
        except OSError as exc:
            raise ChannelError(f"Cannot write {file}") from exc


class Transport(filesystem.Transport):
    """kombu's file-system transport with `Channel`'s whole-file writes."""

    Channel = Channel
    # kombu keeps declared exchanges and bindings per transport class: ours has its own.
    global_state = virtual.BrokerState()


def _write_whole(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees it partly written."""
    # A dot-name in the same folder: the rename stays on one file system, and neither a
    # consumer (which takes "*.<queue>.msg") nor a table reader ever opens it. No fsync: the
    # embedded broker loses in-flight messages on a crash anyway (docs/operations.md).
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
