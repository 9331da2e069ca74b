"""``bench speed``: the throughput harness (``harness``), how it times (``timing``) and the
peer frameworks timed the same way (``peers``)."""
