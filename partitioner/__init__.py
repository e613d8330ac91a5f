"""Planning, one subpackage per stage: graph (ONNX -> layer DAG), costs (cost graph), solve (ILP
placement and baselines), plan (the plan file), split (ONNX splitting), models (example models)."""
