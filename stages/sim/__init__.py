"""The lake simulator (the shop) and the sample datasets."""
