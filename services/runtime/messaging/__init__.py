"""Messaging shared by the services: sealed event envelopes, the outbox, inbox, relay and event
sink, the work queue, and dead letters."""
