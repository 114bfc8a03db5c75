"""Corral: a self-hosted serverless function platform speaking AWS Lambda's APIs."""

__version__ = "0.1.0"
