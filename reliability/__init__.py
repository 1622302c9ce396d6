"""The reliability suite: the service and the pipeline under load, faults and bad input (`make reliability`)."""
