"""All that runs inside a Ray task, actor or Ray Train worker, and the Ray adapters."""
