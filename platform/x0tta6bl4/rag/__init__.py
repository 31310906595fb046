"""Retrieval-augmented remediation: runbook corpus, labelled incidents, index and retriever."""
