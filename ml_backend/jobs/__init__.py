"""The work behind the requests: job runners (a thread of the server, or RQ workers through Redis),
the active-learning loop each job runs a step of, and the progress every process reports."""
