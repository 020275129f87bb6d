"""Messaging shared by the services: event envelopes, their protection, and (next) the outbox,
inbox, relay and transports."""
