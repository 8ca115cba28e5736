"""mimo: serve multi-input / multi-output Keras models over gRPC.

Subpackages: mimo.export (build and convert models), mimo.serving (the server),
mimo.protos (wire contract and codec), mimo.client (the Python client).
"""

__version__ = "0.1.0"
