"""Locust load tests of device authentication: one identity per user, real handshake timings."""
