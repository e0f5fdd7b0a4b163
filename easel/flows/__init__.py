"""easel's Prefect flows. Importing any of them sends easel's warnings to the Prefect
run's logs when inside one (`easel.progress.send_easel_logs_to_prefect`)."""

from easel.progress import send_easel_logs_to_prefect

send_easel_logs_to_prefect()  # the flows' runs show easel's warnings in their Prefect logs
