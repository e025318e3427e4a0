"""Live updates: the broker that fans changes out, and the WebSocket hub."""
