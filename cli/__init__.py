"""The ``resnet-edge`` command line (installed as ``resnet_edge.cli``): one thin command per library entry point."""
