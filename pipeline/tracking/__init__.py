"""MLflow: the store, run names and tags, and the Keras callbacks that log epochs as they happen."""
