"""MLflow "models from code" entry point of the router pyfunc: MLflow copies this file into each logged model and
runs it when the model is logged and loaded. Nothing in mixllm imports it.

Why from code: a pickled ``python_model`` ties every version to the class's byte-level pickle and MLflow warns that
unpickling runs arbitrary code; this script rebuilds the adapter from the installed ``mixllm`` instead, and the
adapter loads the router directory (the model's only artifact) with the same loader as the service.
"""

from mlflow.models import set_model

from mixllm.registry import RouterPyfunc

set_model(RouterPyfunc())
