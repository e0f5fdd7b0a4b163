"""Prefect support shared by the tasks and the flows, defining no task or flow itself:
exclusive holds (`locks`), what a flow knows of its own run (`run_context`), a sweep's
shard runs (`shards`), and the crash-recovery automations (`recovery`)."""
