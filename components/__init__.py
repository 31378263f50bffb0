"""Kubeflow Pipelines components: one module per shopguide step.

Each component is a lightweight Python function run in the shopguide image; its body imports
`shopguide` and calls the same step function as the `shopguide` CLI and `dvc repro`, so the three
ways of running the pipeline cannot drift apart. Like the CLI, a body sets up logging before it
imports the step's module, so the libraries' import-time INFO chatter is filtered as well.
Settings arrive as `params_json` (the whole `Params`); path settings come from the component's
parameters and artifacts instead, so a task never writes relative to its working directory.
"""
