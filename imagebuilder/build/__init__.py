"""The build pipeline: a build request -> composed description -> KIWI (or a cached prepared
root) -> published artifacts with SBOM and records, in a staging directory swapped into --out.
"""
