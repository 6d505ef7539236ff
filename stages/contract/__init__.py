"""The contract between training and serving: model card, feature schema, ONNX predictor,
prediction log. It imports nothing else of the project (serve/ ships it alone)."""
