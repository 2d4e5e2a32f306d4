"""PyTorch adapter for tilespec.

The loader, indexed dataset and op hooks arrive with the plugin-system issue;
for now the distribution only registers its entry point so that discovery can
be tested end to end.
"""
ADAPTER_NAME = "torch"
