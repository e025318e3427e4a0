"""The domain core: statuses, the state machine and timelines. Plain Python, no I/O."""
