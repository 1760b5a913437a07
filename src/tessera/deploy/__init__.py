"""Deployment helpers: configuration of the engines Tessera runs behind."""
