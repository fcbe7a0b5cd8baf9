"""modelserve: MLServer runtimes (sklearn, mlflow, huggingface, kubeai engines) for the Open Inference protocol.

Kept import-light on purpose: runtimes are imported by their own module path
(``modelserve.sklearn.SKLearnRuntime``) so that no heavy library loads here.
"""

__version__ = "0.1.0"
