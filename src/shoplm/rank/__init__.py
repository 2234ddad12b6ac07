"""Ranking: features, learning to rank, diversity and explanations."""
