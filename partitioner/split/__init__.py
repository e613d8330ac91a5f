"""Splitting: cut an ONNX model into per-device stages and write the manifest agents read."""
