"""What defines a model, shared by serving and training.

Image pipeline, networks, ONNX export, runtime and the model repository.
"""
