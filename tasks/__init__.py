"""The work of the pipeline: plain functions, plus thin Prefect task wrappers in `prefect_tasks`."""
