"""Declared datasets: a YAML schema (`datasets/<name>.yaml`) names the tables, their columns and
types, when each row or value became known, how the tables join into one example per row of a
unit table at a moment t0, the features, the tasks (binary, regression, multiclass) and history
aggregated over earlier examples as of t0. `schema` validates it, `tables` reads the declared
files, `examples` builds the point-in-time example table, `encode` turns its categorical and
text columns into model inputs."""
