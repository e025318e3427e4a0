"""Live updates: the broker that wakes every worker, and each worker's WebSocket hub (its
transport, registry of sockets and dispatcher)."""
