"""The commands and links `./tasks.sh ui` and `./tasks.sh dashboard` start and print.

    python -m tools.ui mlflow [--port 5000]      # prints the URL, then the command line
    python -m tools.ui dashboard [--port 8080]

MLflow 3 opens a fresh browser in its GenAI view and decides that in the browser (local
storage), so no server setting changes it; the URL parameter `workflowType=machine_learning`
opens the Model-training view, on this project's experiment.
"""

from __future__ import annotations

import argparse
import shlex

from mlflow import MlflowClient

from pipeline.config.layout import Stores
from pipeline.config.params import load_params
from pipeline.tuning.storage import JOURNAL_PREFIX, describe_storage, storage_url

HOST = "127.0.0.1"


def mlflow_ui(port: int) -> tuple[str, list[str] | None]:
    """The runs view's URL, and the `mlflow ui` command (None when a server is configured)."""
    params = load_params()
    stores = Stores.from_environment()
    remote = stores.tracking_uri.startswith(("http://", "https://"))
    base = stores.tracking_uri.rstrip("/") if remote else f"http://{HOST}:{port}"
    experiment = None
    if remote or (stores.root / "mlflow.db").is_file():
        experiment = MlflowClient(stores.tracking_uri).get_experiment_by_name(
            params.mlflow.experiment
        )
    page = f"#/experiments/{experiment.experiment_id}/runs" if experiment else "#/experiments"
    url = f"{base}/{page}?workflowType=machine_learning"
    if remote:
        return url, None
    command = ["mlflow", "ui", "--backend-store-uri", stores.tracking_uri]
    command += ["--host", HOST, "--port", str(port)]
    return url, command


def dashboard(port: int) -> tuple[str, list[str]]:
    """optuna-dashboard's URL and command on the studies' storage (tune.storage)."""
    params = load_params()
    url = storage_url(params.tune.storage, Stores.from_environment().root)
    storage = url.removeprefix(JOURNAL_PREFIX)
    command = ["optuna-dashboard", storage, "--host", HOST, "--port", str(port)]
    print(f"# studies in {describe_storage(url)}")
    return f"http://{HOST}:{port}/", command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("mlflow", "dashboard"))
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.which == "mlflow":
        url, command = mlflow_ui(args.port or 5000)
    else:
        url, command = dashboard(args.port or 8080)
    print(url)
    print(shlex.join(command) if command else "")  # empty: a server is configured already


if __name__ == "__main__":
    main()
