"""The layer graph: ONNX loading, canonical names, constant folding, fusion, FLOPs, the layer DAG."""
