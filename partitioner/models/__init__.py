"""Example models: the bundled zoo and real transformers architectures built from configs."""
