"""The cost stage: USD per GenAI call from a pricing table, and the tools that build and check the tables."""
