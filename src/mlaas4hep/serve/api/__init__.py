"""The HTTP APIs of the server: TFaaS (``tfaas``)."""
