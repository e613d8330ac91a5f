"""Planning: ONNX -> layer DAG -> cost graph -> ILP placement plan, baselines and ONNX splitting."""
