"""Components of a declared dataset's steps (as `shopguide dataset train|features|gate|promote`),
for `pipelines/dataset_pipeline.py`."""
