"""Search strategies: each proposes candidates and is told their proxy results (ask / tell)."""
