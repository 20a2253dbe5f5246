"""Platform code: data, training loop, sweeps, evaluation, leaderboard and CLI plumbing."""
