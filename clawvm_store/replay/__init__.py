"""The evaluation: seeded workloads, baseline policies, the oracle, importers and the harness.

``clawvm eval`` replays the paper's experiment on this engine; ``clawvm import`` turns real agent
transcripts into traces and ``clawvm replay`` runs them at realistic budgets.
"""
