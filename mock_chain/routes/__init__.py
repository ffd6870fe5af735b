"""The mock chain's HTTP routes: what CometBFT serves (`cometbft`) and what only tests use (`controls`)."""
