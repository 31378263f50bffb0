"""Kubeflow Pipelines definitions built from the components in `components/`."""
