"""The data path every stage shares: the stage contract, decode, encode, the runner, GenAI and GenOps vocabularies."""
