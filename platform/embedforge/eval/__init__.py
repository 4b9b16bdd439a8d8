"""Evaluation: mteb adapter for the platform's encoders, local tasks, report and regression gate.

Scores always come from mteb's own ``TaskResult.main_score``: local tasks are real mteb task
classes fed from files, so a number here means what it means on the MTEB leaderboard.
"""
