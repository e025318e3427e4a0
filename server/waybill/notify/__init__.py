"""Notifications: who hears what and when, the durable outbox, Web Push and email."""
