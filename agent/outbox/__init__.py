"""Batches waiting for the broker: the port, the memory outbox and the durable disk queue."""
