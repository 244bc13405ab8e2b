"""Where mixed bfloat16 loses gradient: a float32-trained model's per-layer gradients on a
fixed batch of training images, computed again with the same weights in mixed bfloat16,
first with everything in bfloat16, then with activations and BatchNormalization in float32
(`train.speed.float32_nonlinearities`).

    python bench/bf16_gradients.py --model models:/<model id> --source cifar10-jpeg.tar.gz

`--model` is a model the training stage logged to MLflow (its `models:/<id>`, with
MLFLOW_TRACKING_URI set to the store) or a `.keras` export from `models/`; `--source` is any
source `fetch` reads. Prints, per sigmoid layer, the share of outputs that are exactly 1.0
(whose derivative y(1 - y) is then exactly 0) in each precision, and, per weighted layer, the
norm of each bfloat16 gradient relative to float32's and their cosine similarity; and the
test accuracy of the same weights in each precision (what inference in bfloat16 costs).
Figures only: it measures one trained state, not training in bfloat16.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.cifar10.decode import read_source
from pipeline.config.train_params import SpeedParams, VariantSettings
from pipeline.evidence.probes import fixed_batch
from pipeline.training.model import build_model

PRECISIONS = {
    "float32": SpeedParams(),
    "bf16, all": SpeedParams(precision="mixed_bfloat16", float32_nonlinearities=False),
    "bf16, fp32 act+BN": SpeedParams(precision="mixed_bfloat16"),
}


def load_export(uri: str) -> keras.Model:
    """The logged export (raw images in): from MLflow, or a .keras file."""
    if Path(uri).is_file():
        return keras.models.load_model(uri, compile=False)
    import mlflow

    return mlflow.tensorflow.load_model(uri)


def twin(core: keras.Model, speed: SpeedParams) -> keras.Model:
    """The core's architecture in another precision, with the core's weights."""
    settings = VariantSettings(batch_norm=any("_bn" in layer.name for layer in core.layers))
    model = build_model(settings, speed=speed)
    model.set_weights(core.get_weights())
    return model


def sigmoid_outputs(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [layer.name for layer in model.layers if layer.name.endswith("_act")]
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    return dict(zip(names, (np.asarray(out, np.float32) for out in probe(x)), strict=True))


def gradients(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    kernels = [layer for layer in model.layers if hasattr(layer, "kernel")]
    grads = tape.gradient(loss, [layer.kernel for layer in kernels])
    return {layer.name: np.asarray(g, np.float64) for layer, g in zip(kernels, grads, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    data = read_source(args.source)
    raw, y = fixed_batch(data.x_train, data.y_train, args.images, seed=0)
    export = load_export(args.model)
    core = next(layer for layer in export.layers if isinstance(layer, keras.Model))
    x = raw.astype(np.float32)
    for layer in export.layers[1:-1]:  # the export's own input normalization
        x = layer(x)
    x = np.asarray(x, np.float32)
    twins = {name: twin(core, speed) for name, speed in PRECISIONS.items()}
    outputs = {name: sigmoid_outputs(model, x) for name, model in twins.items()}
    x_test = data.x_test.astype(np.float32)
    for layer in export.layers[1:-1]:
        x_test = layer(x_test)
    accuracy = {
        name: float(
            np.mean(np.argmax(model.predict(x_test, batch_size=500, verbose=0), 1) == data.y_test)
        )
        for name, model in twins.items()
    }
    grads = {name: gradients(model, x, y) for name, model in twins.items()}
    print(f"{args.images} training images; model {args.model}")
    names = list(PRECISIONS)
    print(f"{'':12}" + "".join(f"{name:>20}" for name in names))
    print(f"{'test acc':12}" + "".join(f"{accuracy[name]:20.4f}" for name in names))
    print("share of sigmoid outputs exactly 1.0, per precision")
    print(f"{'layer':12}" + "".join(f"{name:>20}" for name in names))
    for layer in outputs["float32"]:
        shares = [np.mean(outputs[name][layer] == 1.0) for name in names]
        print(f"{layer:12}" + "".join(f"{100 * share:19.2f}%" for share in shares))
    print("gradient of each kernel: norm in float32; bfloat16's norm / float32's, and cosine")
    print(f"{'layer':12}{'float32':>20}" + "".join(f"{name:>20}" for name in names[1:]))
    for layer, reference in grads["float32"].items():
        row = f"{layer:12}{np.linalg.norm(reference):20.3e}"
        for name in names[1:]:
            other = grads[name][layer]
            ratio = np.linalg.norm(other) / np.linalg.norm(reference)
            cosine = np.sum(other * reference) / (np.linalg.norm(other) * np.linalg.norm(reference))
            row += f"{ratio:13.4f}, {cosine:5.3f}"
        print(row)


if __name__ == "__main__":
    main()
