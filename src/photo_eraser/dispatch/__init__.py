"""Dispatch: how a stored task reaches a worker. Embedded: a wake-up of the in-process workers,
which take the next task from the database. Distributed: a Celery message on RabbitMQ."""

from photo_eraser.dispatch.base import Dispatcher
from photo_eraser.dispatch.inprocess import InProcessDispatcher

__all__ = ["Dispatcher", "InProcessDispatcher"]
