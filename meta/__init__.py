"""The meta-agent: plain-English commands turned into calls to the agents."""
