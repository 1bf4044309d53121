"""fxprune's compiler passes: trace, find channel groups, score, select, rewrite, verify.

Each module holds one pass; the user-facing API in :mod:`fxprune` chains them.
"""
